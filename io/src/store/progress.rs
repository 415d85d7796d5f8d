//! Progress lines of `/api/create`, `/api/pull` and `/api/push`, in Ollama's `api.ProgressResponse` shape.

use ollamamax_core::digest::Digest;
use serde::{Deserialize, Serialize};

/// One progress line. Like Go's `omitempty`, an absent digest and a zero `total` or `completed` are left out of
/// the JSON: the first "pulling …" line of a fresh download has no `completed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// "pulling manifest", "pulling 0123456789ab", "writing manifest", "success", …
    pub status: String,
    /// The blob a transfer line is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// The blob's size.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub total: u64,
    /// Bytes of it present so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub completed: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl Progress {
    /// A line with only a status.
    pub fn status(status: impl Into<String>) -> Self {
        Progress {
            status: status.into(),
            digest: None,
            total: 0,
            completed: 0,
        }
    }

    /// A transfer line: "<verb> <first 12 hex digits>" with the blob's digest, size and bytes done, as Ollama's
    /// `fmt.Sprintf("pulling %s", digest[7:19])`.
    pub fn transfer(verb: &str, digest: Digest, total: u64, completed: u64) -> Self {
        Progress {
            status: format!("{verb} {}", &digest.hex()[..12]),
            digest: Some(digest),
            total,
            completed,
        }
    }
}
