//! Writing blobs: bytes stream into a temporary file inside `blobs/`, are hashed as they arrive, and become
//! `sha256-<hex>` only if the hash matches the digest they were announced with.

use super::{Store, StoreError};
use ollamamax_core::digest::Digest;
use sha2::{Digest as _, Sha256};
use std::ffi::OsString;
use std::io::Write;
use tempfile::NamedTempFile;

/// Prefix of a [`BlobWriter`]'s temporary file; garbage collection removes stale ones.
pub(crate) const UPLOAD_PREFIX: &str = ".upload-";
/// Suffix of a [`BlobWriter`]'s temporary file.
pub(crate) const UPLOAD_SUFFIX: &str = ".tmp";

/// A blob being written. Dropping it without [`BlobWriter::finish`] removes the temporary file, so an abandoned
/// upload (a client that disconnects) leaves nothing behind.
pub struct BlobWriter {
    store: Store,
    /// `None` only after `finish` took it.
    file: Option<NamedTempFile>,
    /// The temporary file's name, registered with the store so garbage collection leaves it alone.
    file_name: OsString,
    hasher: Sha256,
    written_bytes: u64,
    limit_bytes: u64,
}

/// A finished blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobStored {
    /// Its digest.
    pub digest: Digest,
    /// Its length in bytes.
    pub size: u64,
    /// False if the store already had this blob (the new copy was discarded).
    pub created: bool,
}

impl Store {
    /// Starts writing a blob of at most `limit_bytes` (capped at [`super::BLOB_BYTES_MAX`]).
    pub fn blob_writer(&self, limit_bytes: u64) -> Result<BlobWriter, StoreError> {
        // Created and registered under one lock, so collection never sees an unregistered live upload.
        let mut uploads = self.uploads();
        let file = tempfile::Builder::new()
            .prefix(UPLOAD_PREFIX)
            .suffix(UPLOAD_SUFFIX)
            .tempfile_in(self.blobs_dir())
            .map_err(StoreError::io("create a temporary blob file"))?;
        assert!(file.path().starts_with(self.blobs_dir()));
        let file_name = file
            .path()
            .file_name()
            .expect("a temporary file has a name")
            .to_os_string();
        assert!(uploads.insert(file_name.clone()));
        drop(uploads);
        Ok(BlobWriter {
            store: self.clone(),
            file: Some(file),
            file_name,
            hasher: Sha256::new(),
            written_bytes: 0,
            limit_bytes: limit_bytes.min(super::BLOB_BYTES_MAX),
        })
    }

    /// Stores `bytes` as a blob and returns its digest (for small layers the store makes itself).
    pub(crate) fn write_blob_bytes(&self, bytes: &[u8]) -> Result<BlobStored, StoreError> {
        let mut writer = self.blob_writer(bytes.len() as u64)?;
        writer.write_chunk(bytes)?;
        let digest = super::manifest::sha256(bytes);
        writer.finish(&digest)
    }
}

impl BlobWriter {
    /// Appends a chunk. Fails with `TooLarge` once the total passes the limit.
    pub fn write_chunk(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let total = self.written_bytes.saturating_add(bytes.len() as u64);
        if total > self.limit_bytes {
            return Err(StoreError::TooLarge {
                what: "blob",
                limit_bytes: self.limit_bytes,
            });
        }
        // Through the `File`: `NamedTempFile`'s own `Write` puts the path into its errors.
        self.file
            .as_mut()
            .expect("an unfinished writer has its file")
            .as_file_mut()
            .write_all(bytes)
            .map_err(StoreError::io("write blob"))?;
        self.hasher.update(bytes);
        self.written_bytes = total;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes
    }

    /// Moves the bytes to the address of whatever they hash to (for blobs this server makes itself).
    pub(crate) fn finish_computed(self) -> Result<BlobStored, StoreError> {
        let digest = Digest::from_bytes(self.hasher.clone().finalize().into());
        self.finish(&digest)
    }

    /// Checks the bytes against `expected` and, if they match, moves them to `blobs/sha256-<hex>` atomically.
    /// On a mismatch nothing is kept.
    pub fn finish(mut self, expected: &Digest) -> Result<BlobStored, StoreError> {
        let file = self.file.take().expect("an unfinished writer has its file");
        let store = self.store.clone();
        let written_bytes = self.written_bytes;
        let actual = Digest::from_bytes(std::mem::take(&mut self.hasher).finalize().into());
        if actual != *expected {
            // Dropping `file` removes the temporary file.
            return Err(StoreError::DigestMismatch {
                expected: *expected,
                actual,
            });
        }
        file.as_file()
            .sync_all()
            .map_err(StoreError::io("write blob"))?;
        let path = store.blob_path(expected);
        if store.has_blob(expected)? {
            return Ok(BlobStored {
                digest: actual,
                size: written_bytes,
                created: false,
            });
        }
        set_blob_permissions(file.as_file())?;
        file.persist(&path)
            .map_err(|error| StoreError::io("store blob")(error.error))?;
        Ok(BlobStored {
            digest: actual,
            size: written_bytes,
            created: true,
        })
    }
}

impl Store {
    /// Where a copy of `digest` from another node is downloaded before it becomes the blob (inside `blobs/`, so
    /// the final rename is atomic; resumable across a broken connection).
    pub fn replica_path(&self, digest: &Digest) -> std::path::PathBuf {
        self.blob_path_with_suffix(digest, "-replica")
    }

    /// `blobs/sha256-<hex><suffix>`: a file that belongs to the blob but is not it (yet).
    pub(crate) fn blob_path_with_suffix(
        &self,
        digest: &Digest,
        suffix: &str,
    ) -> std::path::PathBuf {
        let path = self.blob_path(digest);
        let mut name = path
            .file_name()
            .expect("blob paths have a name")
            .to_os_string();
        name.push(suffix);
        path.with_file_name(name)
    }

    /// Makes the downloaded copy at [`Store::replica_path`] the blob: fsync, then rename. The caller has checked
    /// its SHA-256 against `digest` (the transport's download does) and that it is `size` bytes long. A copy that
    /// looks like a GGUF file must pass the validator; one that does not is deleted and refused with
    /// [`StoreError::Invalid`] (the transfer failed).
    pub fn adopt_replica(&self, digest: &Digest, size: u64) -> Result<(), StoreError> {
        let source = self.replica_path(digest);
        let file = std::fs::File::open(&source).map_err(StoreError::io("store replica"))?;
        let length = file
            .metadata()
            .map_err(StoreError::io("store replica"))?
            .len();
        if length != size {
            let _ = std::fs::remove_file(&source);
            return Err(StoreError::Invalid(format!(
                "replica of {digest} has {length} bytes, not {size}"
            )));
        }
        // A peer's bytes are as untrusted as a client's: a malformed model is refused before it becomes a blob.
        if super::gguf_check::looks_like_gguf(&source)?
            && let Err(error) = super::gguf_check::check_gguf(&source)
        {
            let _ = std::fs::remove_file(&source);
            return Err(error);
        }
        file.sync_all().map_err(StoreError::io("store replica"))?;
        set_blob_permissions(&file)?;
        std::fs::rename(&source, self.blob_path(digest))
            .map_err(StoreError::io("store replica"))?;
        if let Some(directory) = source.parent() {
            std::fs::File::open(directory)
                .and_then(|directory| directory.sync_all())
                .map_err(StoreError::io("store replica"))?;
        }
        Ok(())
    }
}

/// Blobs are world-readable like Ollama's (0644), not the temporary file's 0600: a models directory shared with
/// Ollama or read by another service user keeps working.
fn set_blob_permissions(file: &std::fs::File) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(BLOB_MODE))
            .map_err(StoreError::io("store blob"))?;
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// The mode of a stored blob.
#[cfg(unix)]
const BLOB_MODE: u32 = 0o644;

impl Write for BlobWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_chunk(bytes)
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.as_file_mut().flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // The temporary file (if `finish` did not take it) is removed by its own drop, right after this.
        let removed = self.store.uploads().remove(&self.file_name);
        assert!(removed);
    }
}
