//! Join tokens, k3s style: `OMX1.<ca-fingerprint>.<secret>`.
//!
//! The fingerprint (64 lowercase hex characters, SHA-256 of the CA certificate's DER) lets a joining node check it
//! is talking to the right cluster *before* it sends anything secret; the secret (64 hex characters, 32 random
//! bytes) proves to the cluster that the joiner was invited. Expiry and single use are the cluster's policy, kept
//! in its [`TokenStore`] and checked there, so they are not part of the text. The store keeps only a SHA-256 of
//! each secret and compares in constant time.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// The token format's version prefix.
pub const TOKEN_PREFIX: &str = "OMX1";
/// Bytes of a join secret.
pub const SECRET_BYTES: usize = 32;
/// Most tokens a store holds at once (expired and used ones are dropped first).
pub const TOKENS_MAX: u32 = 64;

/// A join token as an operator copies it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate.
    pub ca_fingerprint: [u8; 32],
    /// The secret that admits the joiner.
    pub secret: JoinSecret,
}

/// The secret part of a join token. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinSecret(pub [u8; SECRET_BYTES]);

impl fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinSecret(..)")
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &hex(&self.ca_fingerprint))
            .finish_non_exhaustive()
    }
}

/// Why a text is not a join token. Texts never echo the input (it may hold a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenParseError {
    /// It does not start with `OMX1.`.
    #[error("join token must start with {TOKEN_PREFIX}.")]
    Version,
    /// Not three dot-separated parts.
    #[error("join token must be {TOKEN_PREFIX}.<64 hex CA fingerprint>.<64 hex secret>")]
    Format,
    /// The fingerprint is not 64 lowercase hex characters.
    #[error("join token's CA fingerprint must be 64 lowercase hex characters")]
    Fingerprint,
    /// The secret is not 64 lowercase hex characters.
    #[error("join token's secret must be 64 lowercase hex characters")]
    Secret,
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}",
            hex(&self.ca_fingerprint),
            hex(&self.secret.0)
        )
    }
}

impl FromStr for JoinToken {
    type Err = TokenParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let rest = text
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.strip_prefix('.'))
            .ok_or(TokenParseError::Version)?;
        let (fingerprint, secret) = rest.split_once('.').ok_or(TokenParseError::Format)?;
        if secret.contains('.') {
            return Err(TokenParseError::Format);
        }
        Ok(Self {
            ca_fingerprint: unhex(fingerprint).ok_or(TokenParseError::Fingerprint)?,
            secret: JoinSecret(unhex(secret).ok_or(TokenParseError::Secret)?),
        })
    }
}

/// How long and how often a token admits joiners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPolicy {
    /// Unix seconds after which the token is refused; `None` never expires.
    pub expires_at_unix_s: Option<u64>,
    /// Refused after its first successful use.
    pub single_use: bool,
}

/// Why a store cannot issue a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// [`TOKENS_MAX`] live tokens exist already.
    #[error("too many join tokens (at most {TOKENS_MAX}); revoke or let some expire")]
    Full,
    /// The system random number generator failed.
    #[error("cannot draw a random join secret")]
    Random,
}

/// Why a store refuses a secret. Also sent to the joiner, so it can tell its operator what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RedeemError {
    /// No token has this secret.
    #[error("join token is not known to this cluster")]
    Unknown,
    /// The token has expired.
    #[error("join token has expired")]
    Expired,
    /// The single-use token was used already.
    #[error("join token was already used")]
    Used,
}

/// One token as the store keeps it: the secret's hash, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredToken {
    secret_sha256: [u8; 32],
    policy: TokenPolicy,
    used: bool,
}

/// The tokens a cluster accepts. Plain data (serde), so the cluster state can replicate it; time is an input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenStore {
    tokens: Vec<StoredToken>,
}

impl TokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Live tokens held.
    pub fn len(&self) -> u32 {
        u32::try_from(self.tokens.len()).unwrap_or(u32::MAX)
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Draw a new secret and keep it under `policy`; returns the token to hand to the operator.
    pub fn issue(
        &mut self,
        ca_fingerprint: [u8; 32],
        policy: TokenPolicy,
        now_unix_s: u64,
    ) -> Result<JoinToken, IssueError> {
        let mut secret = [0u8; SECRET_BYTES];
        crate::entropy::fill(&mut secret).map_err(|_| IssueError::Random)?;
        let secret = JoinSecret(secret);
        self.insert(&secret, policy, now_unix_s)?;
        Ok(JoinToken {
            ca_fingerprint,
            secret,
        })
    }

    /// Keep a secret chosen elsewhere (a token re-imported from a file, a test's fixed secret).
    pub fn insert(
        &mut self,
        secret: &JoinSecret,
        policy: TokenPolicy,
        now_unix_s: u64,
    ) -> Result<(), IssueError> {
        self.prune(now_unix_s);
        if self.len() >= TOKENS_MAX {
            return Err(IssueError::Full);
        }
        self.tokens.push(StoredToken {
            secret_sha256: sha256(&secret.0),
            policy,
            used: false,
        });
        debug_assert!(self.len() <= TOKENS_MAX);
        Ok(())
    }

    /// Check a joiner's secret at `now_unix_s` and, when it is good, count the use.
    pub fn redeem(&mut self, secret: &JoinSecret, now_unix_s: u64) -> Result<(), RedeemError> {
        let presented = sha256(&secret.0);
        // Compare against every token, whatever matches, so timing says nothing about which did.
        let mut found = None;
        for (index, token) in self.tokens.iter().enumerate() {
            if constant_time_eq(&token.secret_sha256, &presented) {
                found = Some(index);
            }
        }
        let token = &mut self.tokens[found.ok_or(RedeemError::Unknown)?];
        if token
            .policy
            .expires_at_unix_s
            .is_some_and(|expiry| now_unix_s >= expiry)
        {
            return Err(RedeemError::Expired);
        }
        if token.policy.single_use && token.used {
            return Err(RedeemError::Used);
        }
        token.used = true;
        Ok(())
    }

    /// Forget the token with this secret; whether one was held.
    pub fn revoke(&mut self, secret: &JoinSecret) -> bool {
        let presented = sha256(&secret.0);
        let before = self.tokens.len();
        self.tokens
            .retain(|token| !constant_time_eq(&token.secret_sha256, &presented));
        self.tokens.len() != before
    }

    /// Drop expired and used single-use tokens.
    fn prune(&mut self, now_unix_s: u64) {
        self.tokens.retain(|token| {
            let expired = token
                .policy
                .expires_at_unix_s
                .is_some_and(|expiry| now_unix_s >= expiry);
            let used_up = token.policy.single_use && token.used;
            !(expired || used_up)
        });
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equality whose running time does not depend on where the inputs differ.
pub fn constant_time_eq(left: &[u8; 32], right: &[u8; 32]) -> bool {
    let mut difference = 0u8;
    for (a, b) in left.iter().zip(right) {
        difference |= std::hint::black_box(a ^ b);
    }
    difference == 0
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

/// Exactly 64 lowercase hex characters into 32 bytes.
fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let nibble = |byte: u8| match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (index, pair) in text.as_bytes().chunks_exact(2).enumerate() {
        out[index] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}
