//! Content digests: the only way a blob is named, and the only blob-derived string that may become a path.
//!
//! Ollama's published path-traversal bugs came from turning an untrusted digest string into a file name. Here
//! a digest is 32 bytes; its text forms are produced by us (`sha256:<hex>` on the wire, `sha256-<hex>` on disk),
//! so no caller-supplied character can ever reach the filesystem.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest([u8; 32]);

/// Why a string is not a digest. The message never echoes more than the prefix, so error text stays short and
/// free of whatever the caller sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Not `sha256:` or `sha256-` followed by hex.
    #[error("invalid digest: must be sha256: or sha256- followed by 64 lowercase hex characters")]
    Format,
    /// An algorithm other than sha256.
    #[error("invalid digest: only sha256 is supported")]
    Algorithm,
}

impl Digest {
    /// The digest with these bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The lowercase hex of the digest, without prefix.
    pub fn hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for byte in self.0 {
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0xf)] as char);
        }
        out
    }

    /// The file name of the blob in Ollama's layout: `sha256-<hex>`.
    pub fn file_name(&self) -> String {
        format!("sha256-{}", self.hex())
    }

    /// Parse `sha256:<hex>` or `sha256-<hex>`; exactly 64 lowercase hex characters, nothing else.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let hex = match text.split_once([':', '-']) {
            Some(("sha256", hex)) => hex,
            Some((algorithm, _))
                if !algorithm.is_empty()
                    && algorithm.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                return Err(DigestError::Algorithm);
            }
            _ => return Err(DigestError::Format),
        };
        if hex.len() != 64 {
            return Err(DigestError::Format);
        }
        let mut bytes = [0u8; 32];
        for (index, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            bytes[index] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Ok(Self(bytes))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(byte: u8) -> Result<u8, DigestError> {
    match byte {
        b'0'..=b'9' => Ok(byte - b'0'),
        b'a'..=b'f' => Ok(byte - b'a' + 10),
        _ => Err(DigestError::Format),
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short form keeps traces readable; the full form is `Display`.
        write!(f, "sha256:{}", &self.hex()[..12])
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_both_separators() {
        let colon = Digest::parse(GOOD).unwrap();
        let dash = Digest::parse(&GOOD.replace(':', "-")).unwrap();
        assert_eq!(colon, dash);
        assert_eq!(colon.to_string(), GOOD);
        assert_eq!(colon.file_name(), GOOD.replace(':', "-"));
    }

    #[test]
    fn rejects_hostile_and_malformed() {
        let hex = &GOOD[7..];
        for bad in [
            format!("sha256:{}", &hex[..63]),
            format!("sha256:{hex}0"),
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha256:../{}", &hex[3..]),
            format!("sha256:{}/..", &hex[..61]),
            format!("sha256_{hex}"),
            hex.to_string(),
            String::new(),
            "sha256:".to_string(),
            format!("sha256:{}\0", &hex[..63]),
        ] {
            assert_eq!(Digest::parse(&bad), Err(DigestError::Format), "{bad:?}");
        }
        assert_eq!(
            Digest::parse(&format!("sha512:{hex}")),
            Err(DigestError::Algorithm)
        );
    }

    #[test]
    fn serde_round_trip_and_rejection() {
        let digest = Digest::parse(GOOD).unwrap();
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
        assert!(serde_json::from_str::<Digest>("\"sha256:../../etc/passwd\"").is_err());
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            let digest = Digest::from_bytes(bytes);
            prop_assert_eq!(Digest::parse(&digest.to_string()).unwrap(), digest);
            prop_assert_eq!(Digest::parse(&digest.file_name()).unwrap(), digest);
        }

        #[test]
        fn parsed_digests_are_path_safe(text in "\\PC{0,80}") {
            if let Ok(digest) = Digest::parse(&text) {
                let name = digest.file_name();
                prop_assert!(name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-' || b"sha".contains(&b)));
                prop_assert_eq!(name.len(), 71);
            }
        }
    }
}
