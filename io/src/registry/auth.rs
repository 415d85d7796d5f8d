//! Registry token authentication: Docker's token flow, signed as Ollama signs it.
//!
//! A request to the registry that gets `401` with `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`
//! asks the realm for a token (`GET <realm>?nonce=…&scope=…&service=…&ts=…`), takes `token` (or
//! `access_token`) from the JSON answer and is sent once more with `Authorization: Bearer <token>`. The token
//! is kept per registry and scope (`repository:<namespace>/<model>:pull`, or `:pull,push` for a push) for
//! its `expires_in` (Docker's default: 60 s) and sent with every later request to that registry, so one pull
//! asks for one token. Requests to other origins (a CDN a blob redirects to) never carry it; reqwest drops
//! `Authorization` on cross-origin redirects.
//!
//! As Ollama's `getAuthorizationToken` does, the token request asks for the challenge's own scope, is refused
//! when the realm is not on the registry's host, and carries `Authorization: <public key>:<signature>`: the
//! user's ed25519 key ([`super::key`]) signing `GET,<token URL>,<base64 of the hex SHA-256 of an empty
//! body>`. The query is built as Go's `url.Values.Encode` builds it (keys sorted, `QueryEscape`d), and the
//! signature covers exactly the URL sent.
//!
//! Tokens and keys never appear in errors: cached tokens are sensitive header values.

use super::error::retryable_status;
use super::key::Identity;
use super::{Registry, RegistryError, SigningKey, error_body};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Most tokens kept at once (one per registry and scope).
const TOKENS_MAX: usize = 64;
/// Largest token server answer read.
const TOKEN_RESPONSE_BYTES_MAX: usize = 64 << 10;
/// Lifetime of a token whose answer names none (Docker's token specification).
const TOKEN_LIFETIME_DEFAULT: Duration = Duration::from_secs(60);
/// Longest a token is kept, whatever its answer says.
const TOKEN_LIFETIME_MAX: Duration = Duration::from_secs(24 * 60 * 60);
/// A token is dropped this long before it expires, so that it does not run out in flight.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(5);
const _: () = assert!(TOKEN_EXPIRY_MARGIN.as_secs() < TOKEN_LIFETIME_DEFAULT.as_secs());
const _: () = assert!(TOKEN_LIFETIME_DEFAULT.as_secs() <= TOKEN_LIFETIME_MAX.as_secs());
/// Random bytes in a token request's nonce (Ollama: 16).
const NONCE_BYTES: usize = 16;
/// Most scopes taken from one challenge.
const SCOPES_MAX: usize = 8;

/// Where requests go and what a token for them must allow: a registry origin, a repository, pull or push.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    base: Url,
    repository: String,
    push: bool,
}

impl Access {
    /// Pulling `name` from its registry.
    pub(crate) fn pull(
        name: &ollamamax_core::name::ModelName,
        insecure: bool,
    ) -> Result<Self, RegistryError> {
        Access::new(name, insecure, false)
    }

    /// Pushing `name` to its registry (which also reads).
    pub(crate) fn push(
        name: &ollamamax_core::name::ModelName,
        insecure: bool,
    ) -> Result<Self, RegistryError> {
        Access::new(name, insecure, true)
    }

    fn new(
        name: &ollamamax_core::name::ModelName,
        insecure: bool,
        push: bool,
    ) -> Result<Self, RegistryError> {
        Ok(Access {
            base: super::base_url(name, insecure)?,
            repository: format!("{}/{}", name.namespace(), name.model()),
            push,
        })
    }

    /// Whether the transfer goes over plain HTTP (the caller passed `insecure`).
    pub(crate) fn is_insecure(&self) -> bool {
        self.base.scheme() == "http"
    }

    /// Docker's scope for this access.
    fn scope(&self) -> String {
        let actions = if self.push { "pull,push" } else { "pull" };
        format!("repository:{}:{actions}", self.repository)
    }

    /// The token cache's key: origin and scope.
    fn key(&self) -> String {
        format!(
            "{} {}",
            self.base.origin().ascii_serialization(),
            self.scope()
        )
    }

    /// Whether `url` is on the registry's origin (scheme, host and port, as reqwest compares them when it
    /// decides to keep `Authorization` across a redirect).
    fn is_registry(&self, url: &Url) -> bool {
        same_origin(&self.base, url)
    }
}

fn same_origin(left: &Url, right: &Url) -> bool {
    left.scheme() == right.scheme()
        && left.host_str() == right.host_str()
        && left.port_or_known_default() == right.port_or_known_default()
}

/// A cached token: the whole `Authorization` value, marked sensitive so that it never prints.
struct Token {
    header: HeaderValue,
    expires: Instant,
}

impl Token {
    fn is_fresh(&self) -> bool {
        Instant::now() < self.expires
    }
}

/// One cache entry; its async lock also keeps two requests from fetching the same token at once.
type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// Tokens by registry origin and scope, at most [`TOKENS_MAX`].
#[derive(Default)]
pub(crate) struct Tokens {
    slots: Mutex<HashMap<String, Slot>>,
}

impl Tokens {
    fn slot(&self, access: &Access) -> Slot {
        let key = access.key();
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = slots.get(&key) {
            return Arc::clone(slot);
        }
        if slots.len() >= TOKENS_MAX {
            // Keep slots in use or holding a live token.
            slots.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot
                        .try_lock()
                        .map(|token| token.as_ref().is_some_and(Token::is_fresh))
                        .unwrap_or(true)
            });
        }
        let slot = Slot::default();
        if slots.len() < TOKENS_MAX {
            slots.insert(key, Arc::clone(&slot));
        }
        assert!(slots.len() <= TOKENS_MAX);
        slot
    }
}

/// A parsed `WWW-Authenticate: Bearer …` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    realm: String,
    service: String,
    scope: String,
}

impl Challenge {
    /// The first Bearer challenge among `headers`' `WWW-Authenticate` values.
    fn from_headers(headers: &HeaderMap) -> Option<Challenge> {
        headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(Challenge::parse)
    }

    /// `Bearer realm="…",service="…",scope="…"`; parameter values quoted (with `\` escapes) or bare.
    pub(crate) fn parse(text: &str) -> Option<Challenge> {
        let text = text.trim_start();
        let (scheme, mut rest) = text.split_at(text.find(char::is_whitespace)?);
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut challenge = Challenge {
            realm: String::new(),
            service: String::new(),
            scope: String::new(),
        };
        loop {
            rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
            if rest.is_empty() {
                break;
            }
            let (key, after) = rest.split_once('=')?;
            let (value, after) = parameter_value(after.trim_start())?;
            rest = after;
            match key.trim().to_ascii_lowercase().as_str() {
                "realm" => challenge.realm = value,
                "service" => challenge.service = value,
                "scope" => challenge.scope = value,
                _ => {}
            }
        }
        (!challenge.realm.is_empty()).then_some(challenge)
    }
}

/// A quoted or bare parameter value and the text after it.
fn parameter_value(text: &str) -> Option<(String, &str)> {
    let Some(quoted) = text.strip_prefix('"') else {
        let end = text.find(',').unwrap_or(text.len());
        return Some((text[..end].trim().to_string(), &text[end..]));
    };
    let mut value = String::new();
    let mut characters = quoted.char_indices();
    while let Some((index, character)) = characters.next() {
        match character {
            '"' => return Some((value, &quoted[index + 1..])),
            '\\' => value.push(characters.next()?.1),
            _ => value.push(character),
        }
    }
    None
}

/// A token server's answer (Docker's token specification; Ollama reads `token`).
#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Registry {
    /// Sends the request `build` makes, with the cached token for `access` when it goes to the registry. A
    /// `401` from the registry with a Bearer challenge gets a token and one more try; any other answer is
    /// returned as it is, for the caller to check.
    pub(crate) async fn send<F>(&self, access: &Access, build: F) -> Result<Response, RegistryError>
    where
        F: Fn() -> RequestBuilder,
    {
        let slot = self.tokens.slot(access);
        let mut token = slot
            .lock()
            .await
            .as_ref()
            .filter(|token| token.is_fresh())
            .map(|token| token.header.clone());
        let mut renewed = false;
        loop {
            let mut request = build().build().map_err(RegistryError::http)?;
            // Upload locations come from the registry's answers: they face the redirect rules.
            self.options
                .policy
                .check_target(request.url(), access.is_insecure())
                .map_err(|refusal| RegistryError::Refused(refusal.0))?;
            let to_registry = access.is_registry(request.url());
            if let Some(header) = token.as_ref().filter(|_| to_registry) {
                request.headers_mut().insert(AUTHORIZATION, header.clone());
            }
            let response = self
                .http
                .execute(request)
                .await
                .map_err(RegistryError::http)?;
            // A 401 from a redirect target is not the registry's to answer with a token.
            if response.status() != StatusCode::UNAUTHORIZED || !access.is_registry(response.url())
            {
                return Ok(response);
            }
            if renewed {
                return Err(RegistryError::Unauthorized);
            }
            let challenge =
                Challenge::from_headers(response.headers()).ok_or(RegistryError::Unauthorized)?;
            drop(response);
            token = Some(
                self.renew_token(access, &slot, &challenge, token.as_ref())
                    .await?,
            );
            renewed = true;
        }
    }

    /// A token other than `rejected`: one another request fetched meanwhile, else a new one.
    async fn renew_token(
        &self,
        access: &Access,
        slot: &Slot,
        challenge: &Challenge,
        rejected: Option<&HeaderValue>,
    ) -> Result<HeaderValue, RegistryError> {
        let mut cached = slot.lock().await;
        if let Some(current) = cached
            .as_ref()
            .filter(|token| token.is_fresh() && Some(&token.header) != rejected)
        {
            return Ok(current.header.clone());
        }
        *cached = None;
        let token = self.fetch_token(access, challenge).await?;
        let header = token.header.clone();
        *cached = Some(token);
        Ok(header)
    }

    async fn fetch_token(
        &self,
        access: &Access,
        challenge: &Challenge,
    ) -> Result<Token, RegistryError> {
        let url = token_url(access, challenge, unix_seconds(), &nonce()?)?;
        let mut request = self.http.get(url.clone());
        if let Some(identity) = self.identity().await? {
            let mut value = HeaderValue::from_str(&identity.sign(signed_data(&url).as_bytes()))
                .expect("base64 and ':' make a header value");
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let response = request.send().await.map_err(RegistryError::http)?;
        let status = response.status();
        if !status.is_success() {
            let body = error_body(response).await;
            let status = status.as_u16();
            if retryable_status(status) {
                return Err(RegistryError::Status { status, body });
            }
            return Err(RegistryError::TokenDenied { status, body });
        }
        let received = Instant::now();
        let body = read_token_body(response).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| RegistryError::Auth("the token server's answer is not a token"))?;
        let token = if answer.token.is_empty() {
            answer.access_token
        } else {
            answer.token
        };
        if token.is_empty() {
            return Err(RegistryError::Auth(
                "the token server's answer has no token",
            ));
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| RegistryError::Auth("the token server's token is not a header value"))?;
        header.set_sensitive(true);
        let lifetime = answer
            .expires_in
            .map_or(TOKEN_LIFETIME_DEFAULT, Duration::from_secs)
            .min(TOKEN_LIFETIME_MAX);
        Ok(Token {
            header,
            expires: received + lifetime.saturating_sub(TOKEN_EXPIRY_MARGIN),
        })
    }

    /// The signing key, loaded (or created) on first use; `None` when token requests go unsigned.
    async fn identity(&self) -> Result<Option<Arc<Identity>>, RegistryError> {
        let path = match &self.options.signing_key {
            SigningKey::Unsigned => return Ok(None),
            SigningKey::File(path) => path.clone(),
            SigningKey::OllamaHome => ollama_key_path()?,
        };
        let mut loaded = self.identity.lock().await;
        if let Some(identity) = loaded.as_ref() {
            return Ok(Some(Arc::clone(identity)));
        }
        let identity = tokio::task::spawn_blocking(move || Identity::load_or_create(&path))
            .await
            .map_err(|_| RegistryError::Task)??;
        let identity = Arc::new(identity);
        *loaded = Some(Arc::clone(&identity));
        Ok(Some(identity))
    }
}

/// `$HOME/.ollama/id_ed25519`, where Ollama keeps its key.
fn ollama_key_path() -> Result<PathBuf, RegistryError> {
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .ok_or_else(|| RegistryError::SigningKey("no home directory to keep it in".into()))?;
    Ok(PathBuf::from(home).join(".ollama").join("id_ed25519"))
}

/// The token request's URL: the realm's own query plus service, scope(s), ts and nonce, sorted and escaped as
/// Go's `url.Values.Encode` does. The realm must be on the registry's host (Ollama refuses others too), over
/// HTTPS unless the registry itself is plain HTTP.
pub(crate) fn token_url(
    access: &Access,
    challenge: &Challenge,
    unix_seconds: u64,
    nonce: &str,
) -> Result<Url, RegistryError> {
    let mut url = Url::parse(&challenge.realm)
        .map_err(|_| RegistryError::Auth("the registry's token realm is not a URL"))?;
    let scheme_ok = url.scheme() == "https" || url.scheme() == access.base.scheme();
    if !scheme_ok
        || url.host_str() != access.base.host_str()
        || url.port_or_known_default() != access.base.port_or_known_default()
    {
        return Err(RegistryError::Auth(
            "the registry's token realm is not on the registry's host",
        ));
    }
    let mut pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    pairs.push(("service".into(), challenge.service.clone()));
    let scopes: Vec<&str> = challenge
        .scope
        .split(' ')
        .filter(|scope| !scope.is_empty())
        .take(SCOPES_MAX)
        .collect();
    if scopes.is_empty() {
        pairs.push(("scope".into(), access.scope()));
    }
    for scope in scopes {
        pairs.push(("scope".into(), scope.to_string()));
    }
    pairs.push(("ts".into(), unix_seconds.to_string()));
    pairs.push(("nonce".into(), nonce.to_string()));
    // Stable: values of one key keep their order, as in Go.
    pairs.sort_by(|left, right| left.0.cmp(&right.0));
    let query: Vec<String> = pairs
        .iter()
        .map(|(key, value)| format!("{}={}", query_escape(key), query_escape(value)))
        .collect();
    url.set_query(Some(&query.join("&")));
    url.set_fragment(None);
    Ok(url)
}

/// What Ollama signs for a token request: `GET,<url>,<base64 of the hex SHA-256 of the empty body>`.
pub(crate) fn signed_data(url: &Url) -> String {
    let empty_body = Sha256::digest(b"");
    let hex: String = empty_body
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("GET,{},{}", url.as_str(), STANDARD.encode(hex))
}

/// Go's `url.QueryEscape`: unreserved bytes as they are, space as `+`, the rest `%XX`.
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn nonce() -> Result<String, RegistryError> {
    let mut bytes = [0u8; NONCE_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RegistryError::Auth("no randomness for a nonce"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

async fn read_token_body(mut response: Response) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(RegistryError::http)? {
        if body.len() + chunk.len() > TOKEN_RESPONSE_BYTES_MAX {
            return Err(RegistryError::Auth(
                "the token server's answer is too large",
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ollamamax_core::name::ModelName;

    fn access(push: bool) -> Access {
        let name = ModelName::parse("registry.example.com/library/tiny").unwrap();
        Access::new(&name, false, push).unwrap()
    }

    #[test]
    fn parses_bearer_challenges() {
        let challenge = Challenge::parse(
            r#"Bearer realm="https://registry.example.com/token",service="registry",scope="repository:library/tiny:pull,push""#,
        )
        .unwrap();
        assert_eq!(challenge.realm, "https://registry.example.com/token");
        assert_eq!(challenge.service, "registry");
        assert_eq!(challenge.scope, "repository:library/tiny:pull,push");
        let bare = Challenge::parse(r#"bearer realm=https://r/t, scope="a \"b\"""#).unwrap();
        assert_eq!(bare.realm, "https://r/t");
        assert_eq!(bare.scope, r#"a "b""#);
        assert_eq!(Challenge::parse(r#"Basic realm="x""#), None);
        assert_eq!(Challenge::parse(r#"Bearer service="x""#), None);
        assert_eq!(Challenge::parse(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn token_urls_are_go_encoded_and_stay_on_the_registry_host() {
        let challenge = Challenge {
            realm: "https://registry.example.com/v2/token?b=1".into(),
            service: "registry.example.com".into(),
            scope: "repository:library/tiny:pull".into(),
        };
        let url = token_url(&access(false), &challenge, 1_700_000_000, "bm9uY2U").unwrap();
        assert_eq!(
            url.as_str(),
            "https://registry.example.com/v2/token?b=1&nonce=bm9uY2U\
             &scope=repository%3Alibrary%2Ftiny%3Apull&service=registry.example.com&ts=1700000000"
        );
        // No scope in the challenge: the access's own.
        let unscoped = Challenge {
            scope: String::new(),
            ..challenge.clone()
        };
        let url = token_url(&access(true), &unscoped, 1, "n").unwrap();
        assert!(
            url.as_str()
                .contains("scope=repository%3Alibrary%2Ftiny%3Apull%2Cpush&"),
            "{url}"
        );
        for realm in [
            "https://elsewhere.example.com/token",
            "http://registry.example.com/token",
            "https://registry.example.com:8443/token",
            "not a url",
        ] {
            let foreign = Challenge {
                realm: realm.into(),
                ..challenge.clone()
            };
            assert!(
                token_url(&access(false), &foreign, 1, "n").is_err(),
                "{realm}"
            );
        }
    }

    #[test]
    fn signed_data_is_ollamas() {
        let url = Url::parse("https://registry.example.com/token?a=b").unwrap();
        // base64 of e3b0c442…b855, the hex SHA-256 of nothing.
        assert_eq!(
            signed_data(&url),
            "GET,https://registry.example.com/token?a=b,\
             ZTNiMGM0NDI5OGZjMWMxNDlhZmJmNGM4OTk2ZmI5MjQyN2FlNDFlNDY0OWI5MzRjYTQ5NTk5MWI3ODUyYjg1NQ=="
        );
        assert_eq!(query_escape("a b/c:d,e~"), "a+b%2Fc%3Ad%2Ce~");
    }
}
