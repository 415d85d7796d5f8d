//! Which registries a pull or push may talk to, and which addresses its connections may reach.
//!
//! - **Allowlist.** A model name's registry (its host, with any port) must be on the list, or the transfer fails
//!   before any network I/O with [`RegistryError::NotAllowed`]. The default list is Ollama's registry
//!   (`registry.ollama.ai`); `OLLAMAMAX_REGISTRIES` replaces it with comma-separated `host` or `host:port`
//!   entries (IPv6 in brackets). An entry without a port allows every port of that host.
//! - **Addresses.** Every connection's address must be public: not loopback, private (10/8, 172.16/12,
//!   192.168/16, fc00::/7), link-local (169.254/16, fe80::/10), CGNAT (100.64/10), unspecified, multicast,
//!   broadcast or reserved, nor an IPv4-mapped or NAT64 form of one. Exceptions: an allowlist entry that is
//!   itself an address literal (`127.0.0.1:5000`) allows that address; an entry naming a host allows the
//!   private addresses it resolves to only with `OLLAMAMAX_REGISTRIES_PRIVATE=1`. The check runs on the DNS
//!   answer at connect time ([`PolicyResolver`]), so a name that resolves elsewhere later (DNS rebinding) is
//!   still checked.
//! - **Redirects and upload locations** ([`RegistryPolicy::check_target`]). A target on the allowlist is
//!   followed (over `http` only when the transfer itself is `insecure`); any other target (the CDN Ollama's
//!   registry sends blobs from) must be `https` and public, so a redirect to `http://169.254.169.254/` is
//!   refused.
//!
//! The token realm rule lives in `auth.rs`: a realm is followed only on the registry's own host and port.

use super::RegistryError;
use ollamamax_core::name::ModelName;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The environment variable holding the allowlist.
pub const REGISTRIES_ENV: &str = "OLLAMAMAX_REGISTRIES";
/// The environment variable that lets allowlisted host names resolve to private addresses (`1` or `true`).
pub const REGISTRIES_PRIVATE_ENV: &str = "OLLAMAMAX_REGISTRIES_PRIVATE";
/// Ollama's registry, the default allowlist.
pub const DEFAULT_REGISTRY: &str = "registry.ollama.ai";
/// Most allowlist entries.
pub const REGISTRIES_MAX: usize = 64;
/// Most addresses taken from one DNS answer.
const ADDRESSES_MAX: usize = 32;

/// A URL's host: a (lowercase) name or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Domain(String),
    Address(IpAddr),
}

impl Host {
    /// `url`'s host; IPv6 hosts come bracketed from `host_str`.
    fn of(url: &Url) -> Option<Host> {
        let text = url.host_str()?;
        let bare = text.trim_start_matches('[').trim_end_matches(']');
        Some(match bare.parse::<IpAddr>() {
            Ok(address) => Host::Address(address),
            Err(_) => Host::Domain(text.to_ascii_lowercase()),
        })
    }
}

/// One allowlist entry: a host (name or address) and maybe a port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    host: Host,
    port: Option<u16>,
    /// As written (normalised), for messages.
    text: String,
}

impl Entry {
    fn parse(text: &str) -> Option<Entry> {
        if text.contains(['/', '@', '?', '#', '\\']) || text.chars().any(char::is_whitespace) {
            return None;
        }
        let url = Url::parse(&format!("https://{text}/")).ok()?;
        let host = Host::of(&url)?;
        let port = url.port();
        // `https://host:443/` drops the default port; keep what was written.
        let port = port.or_else(|| text.ends_with(":443").then_some(443));
        let name = url.host_str()?;
        let text = match port {
            Some(port) => format!("{name}:{port}"),
            None => name.to_string(),
        };
        Some(Entry { host, port, text })
    }

    fn matches(&self, url: &Url) -> bool {
        Host::of(url).is_some_and(|host| host == self.host)
            && self
                .port
                .is_none_or(|port| url.port_or_known_default() == Some(port))
    }
}

/// Why a connection or redirect was refused; turned into [`RegistryError::Refused`] when it surfaces through
/// reqwest (see [`refusal_in`]).
#[derive(Debug)]
pub(crate) struct Refusal(pub(crate) String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

/// The registries a client may use and the private addresses it may reach; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryPolicy {
    entries: Vec<Entry>,
    /// Allowlisted host names may resolve to private addresses.
    private_names: bool,
}

impl Default for RegistryPolicy {
    /// Ollama's registry only.
    fn default() -> Self {
        RegistryPolicy::parse(DEFAULT_REGISTRY, false).expect("the default registry parses")
    }
}

impl RegistryPolicy {
    /// A policy from a comma-separated list of `host` / `host:port` entries (empty entries are skipped; an
    /// empty list is the default), and whether allowlisted names may resolve to private addresses.
    pub fn parse(list: &str, private_names: bool) -> Result<Self, RegistryError> {
        let mut entries = Vec::new();
        for text in list
            .split(',')
            .map(str::trim)
            .filter(|text| !text.is_empty())
        {
            let entry = Entry::parse(text).ok_or_else(|| {
                RegistryError::InvalidPolicy(format!(
                    "{REGISTRIES_ENV}: {text:?} is not a host or host:port"
                ))
            })?;
            if entries.len() >= REGISTRIES_MAX {
                return Err(RegistryError::InvalidPolicy(format!(
                    "{REGISTRIES_ENV}: more than {REGISTRIES_MAX} registries"
                )));
            }
            if !entries.contains(&entry) {
                entries.push(entry);
            }
        }
        if entries.is_empty() {
            return RegistryPolicy::parse(DEFAULT_REGISTRY, private_names);
        }
        assert!(entries.len() <= REGISTRIES_MAX);
        Ok(RegistryPolicy {
            entries,
            private_names,
        })
    }

    /// The policy `OLLAMAMAX_REGISTRIES` and `OLLAMAMAX_REGISTRIES_PRIVATE` describe (unset: the default).
    pub fn from_env() -> Result<Self, RegistryError> {
        let list = std::env::var(REGISTRIES_ENV).unwrap_or_default();
        let private = std::env::var(REGISTRIES_PRIVATE_ENV).unwrap_or_default();
        let private = match private.trim().to_ascii_lowercase().as_str() {
            "" | "0" | "false" => false,
            "1" | "true" => true,
            _ => {
                return Err(RegistryError::InvalidPolicy(format!(
                    "{REGISTRIES_PRIVATE_ENV}: expected 1 or 0"
                )));
            }
        };
        RegistryPolicy::parse(&list, private)
    }

    /// The allowlist as written, comma-separated.
    pub fn allowed(&self) -> String {
        let texts: Vec<&str> = self
            .entries
            .iter()
            .map(|entry| entry.text.as_str())
            .collect();
        texts.join(", ")
    }

    /// Fails with [`RegistryError::NotAllowed`] unless `name`'s registry (over http when `insecure`) is on
    /// the allowlist.
    pub fn check_name(&self, name: &ModelName, insecure: bool) -> Result<(), RegistryError> {
        let allowed = super::base_url(name, insecure).is_ok_and(|url| self.allows(&url));
        if allowed {
            return Ok(());
        }
        Err(RegistryError::NotAllowed {
            registry: name.host().to_string(),
            allowed: self.allowed(),
        })
    }

    /// Whether `url`'s host and port are on the allowlist.
    pub fn allows(&self, url: &Url) -> bool {
        self.entries.iter().any(|entry| entry.matches(url))
    }

    /// Whether a request may go to `url` (a redirect target, an upload location, or the registry itself),
    /// during a transfer that is plain HTTP when `insecure`. Names are checked again when they resolve.
    pub(crate) fn check_target(&self, url: &Url, insecure: bool) -> Result<(), Refusal> {
        let host = url.host_str().unwrap_or("");
        let scheme = url.scheme();
        if scheme != "https" && scheme != "http" {
            return Err(Refusal(format!(
                "registry request refused: {scheme:?} is not http or https"
            )));
        }
        if self.allows(url) {
            if scheme == "http" && !insecure {
                return Err(Refusal(format!(
                    "registry request refused: \"{host}\" over plain http in a secure transfer"
                )));
            }
            return Ok(());
        }
        if scheme != "https" {
            return Err(Refusal(format!(
                "registry request refused: \"{host}\" is not an allowed registry, and only allowed \
                 registries may be reached over plain http"
            )));
        }
        let address = match Host::of(url) {
            Some(Host::Address(address)) => Some(address),
            Some(Host::Domain(_)) => None,
            None => return Err(Refusal("registry request refused: no host".into())),
        };
        if address.is_some_and(|address| !is_public(address)) {
            return Err(Refusal(format!(
                "registry request refused: \"{host}\" is a loopback, private or link-local address \
                 (allow it by its address in {REGISTRIES_ENV})"
            )));
        }
        Ok(())
    }

    /// Whether `name`, when it resolves, may resolve to private addresses: it is on the allowlist by name
    /// and the private opt-in is set.
    fn allows_private_name(&self, name: &str) -> bool {
        self.private_names
            && self.entries.iter().any(|entry| match &entry.host {
                Host::Domain(domain) => domain.eq_ignore_ascii_case(name),
                _ => false,
            })
    }

    /// Of `addresses` (a DNS answer for `name`), those a connection may use.
    pub(crate) fn filter_addresses(
        &self,
        name: &str,
        addresses: impl Iterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let private_allowed = self.allows_private_name(name);
        let mut kept = Vec::new();
        let mut refused = 0u32;
        for address in addresses.take(ADDRESSES_MAX) {
            if private_allowed || is_public(address.ip()) {
                kept.push(address);
            } else {
                refused += 1;
            }
        }
        if kept.is_empty() && refused > 0 {
            return Err(Refusal(format!(
                "registry connection refused: \"{name}\" resolves only to loopback, private or link-local \
                 addresses (allow a registry there by its address in {REGISTRIES_ENV}, or by name with \
                 {REGISTRIES_PRIVATE_ENV}=1)"
            )));
        }
        Ok(kept)
    }
}

/// reqwest's resolver for a registry client: the system's DNS answer, less the addresses the policy refuses.
pub(crate) struct PolicyResolver {
    pub(crate) policy: Arc<RegistryPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let host = name.as_str().to_string();
            let answer = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let kept = policy.filter_addresses(&host, answer)?;
            let addresses: Addrs = Box::new(kept.into_iter());
            Ok(addresses)
        })
    }
}

/// The policy's refusal somewhere in `error`'s chain of causes, if any.
pub(crate) fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(refusal) = current.downcast_ref::<Refusal>() {
            return Some(refusal.0.clone());
        }
        if let Some(inner) = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(refusal) = inner.downcast_ref::<Refusal>()
        {
            return Some(refusal.0.clone());
        }
        cause = current.source();
    }
    None
}

/// Whether `address` is a public unicast address a registry may be reached at without an explicit entry.
pub fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(address) => is_public_v4(address),
        IpAddr::V6(address) => is_public_v6(address),
    }
}

fn is_public_v4(address: Ipv4Addr) -> bool {
    let [a, b, c, _] = address.octets();
    let refused = a == 0 // "this network", unspecified
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 168)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 224; // multicast, reserved, broadcast
    !refused
}

fn is_public_v6(address: Ipv6Addr) -> bool {
    if let Some(mapped) = address.to_ipv4_mapped() {
        return is_public_v4(mapped);
    }
    let segments = address.segments();
    // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., high, low] = segments;
        let v4 = Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
        return is_public_v4(v4);
    }
    let refused = address.is_unspecified()
        || address.is_loopback()
        || segments[..6] == [0; 6] // IPv4-compatible (deprecated)
        || (segments[0] & 0xfe00) == 0xfc00 // unique local
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (segments[0] & 0xff00) == 0xff00; // multicast
    !refused
}

#[cfg(test)]
mod tests;
