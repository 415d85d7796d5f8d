//! What can go wrong in the store, and which HTTP status each failure means to a client.

use ollamamax_core::digest::{Digest, DigestError};
use ollamamax_core::name::NameError;

/// How the server should answer a failed store operation: Ollama answers an unknown model with 404, a request it
/// cannot accept with 400 and anything else with 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The model (or blob) does not exist: 404.
    NotFound,
    /// The request is malformed or asks for something unsupported: 400.
    Invalid,
    /// The store itself failed (disk, a corrupt file): 500.
    Internal,
}

/// Why a store operation failed. Messages never contain a filesystem path: names and digests are ours to print,
/// paths are not.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No manifest for this name.
    #[error("model '{0}' not found")]
    ModelNotFound(String),
    /// A blob the request names is not in the store.
    #[error("blob {0} not found")]
    BlobNotFound(Digest),
    /// A manifest references a blob the store does not have: the store is inconsistent.
    #[error("model '{name}' references missing blob {digest}")]
    MissingBlob {
        /// The model whose manifest references the blob.
        name: String,
        /// The missing blob.
        digest: Digest,
    },
    /// The bytes written do not hash to the digest they were announced with.
    #[error("digest mismatch, file must be downloaded again: want {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the caller promised.
        expected: Digest,
        /// The digest of the bytes actually received.
        actual: Digest,
    },
    /// More bytes than the limit for this kind of file.
    #[error("{what} is larger than {limit_bytes} bytes")]
    TooLarge {
        /// What was too large ("blob", "manifest", …).
        what: &'static str,
        /// The limit.
        limit_bytes: u64,
    },
    /// A request the store cannot accept (bad name, digest, parameter, template, file type).
    #[error("{0}")]
    Invalid(String),
    /// Something Ollama can do that this store cannot (quantization, adapters, safetensors import).
    #[error("{0}")]
    Unsupported(String),
    /// A manifest or config file on disk that does not parse.
    #[error("invalid manifest for model '{name}': {reason}")]
    CorruptManifest {
        /// The model.
        name: String,
        /// What is wrong, without the file's path.
        reason: String,
    },
    /// Garbage collection refused to run because it cannot tell which blobs are in use.
    #[error("cannot remove unused blobs: {0} manifest(s) could not be read")]
    UnreadableManifests(u32),
    /// A filesystem operation failed. `std::io::Error` from `std::fs` does not carry the path, so its text is safe
    /// to show.
    #[error("{operation}: {source}")]
    Io {
        /// What the store was doing ("write blob", "read manifest", …).
        operation: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

impl StoreError {
    /// Which HTTP status this failure maps to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::ModelNotFound(_) | StoreError::BlobNotFound(_) => ErrorKind::NotFound,
            StoreError::DigestMismatch { .. }
            | StoreError::TooLarge { .. }
            | StoreError::Invalid(_)
            | StoreError::Unsupported(_) => ErrorKind::Invalid,
            StoreError::MissingBlob { .. }
            | StoreError::CorruptManifest { .. }
            | StoreError::UnreadableManifests(_)
            | StoreError::Io { .. } => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(operation: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
        move |source| StoreError::Io {
            operation,
            source: without_path(source),
        }
    }
}

impl From<NameError> for StoreError {
    fn from(error: NameError) -> Self {
        StoreError::Invalid(error.to_string())
    }
}

impl From<DigestError> for StoreError {
    fn from(error: DigestError) -> Self {
        StoreError::Invalid(error.to_string())
    }
}

/// `error` without context a library may have wrapped around it (tempfile adds the file's path to its
/// errors): the OS error if one can be reached, else just the kind.
fn without_path(error: std::io::Error) -> std::io::Error {
    if let Some(code) = error.raw_os_error() {
        return std::io::Error::from_raw_os_error(code);
    }
    let mut inner: Option<&(dyn std::error::Error + 'static)> = error
        .get_ref()
        .map(|custom| custom as &(dyn std::error::Error + 'static));
    while let Some(current) = inner {
        if let Some(code) = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return std::io::Error::from_raw_os_error(code);
        }
        inner = current.source();
    }
    std::io::Error::from(error.kind())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_lose_wrapped_paths() {
        let directory = std::env::temp_dir().join("ollamamax-no-such-directory-for-this-test");
        let error = tempfile::Builder::new()
            .tempfile_in(&directory)
            .unwrap_err();
        assert!(error.to_string().contains("ollamamax-no-such-directory"));
        let store_error = StoreError::io("create")(error);
        let text = store_error.to_string();
        assert!(!text.contains("ollamamax-no-such-directory"), "{text}");
        let StoreError::Io { source, .. } = store_error else {
            panic!("an I/O error")
        };
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        let plain = std::fs::File::open(&directory).unwrap_err();
        assert_eq!(
            StoreError::io("open")(plain).to_string(),
            "open: No such file or directory (os error 2)"
        );
    }
}
