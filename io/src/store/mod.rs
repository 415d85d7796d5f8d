//! The model store: Ollama's on-disk layout, so an existing `$OLLAMA_MODELS` directory is served as it is.
//!
//! ```text
//! <root>/manifests/<host>/<namespace>/<model>/<tag>    JSON manifest (schemaVersion 2, config + layers)
//! <root>/blobs/sha256-<64 hex>                         content-addressed blobs
//! <root>/blobs/sha256-<64 hex>-partial[-N]             a resumable download and its part records (Ollama's)
//! <root>/blobs/.upload-*.tmp                           a blob being written by a [`BlobWriter`]
//! ```
//!
//! Every path comes from a [`ModelName`] or a [`Digest`], whose text forms are safe path segments by
//! construction; [`Store`] asserts it again before touching the filesystem. The API is synchronous `std::fs`:
//! the server calls it from `spawn_blocking`. A [`Store`] is cheap to clone and all clones share one set of
//! in-process guards, so open it once per models directory:
//! - a lock that makes "scan the manifests, then remove unreferenced blobs" atomic with respect to manifest
//!   writes, so a blob cannot be collected between a writer's "blob is present" check and its manifest landing;
//! - pins ([`Store::pin`]): blobs an unfinished pull or create will reference; collection skips them.
//!
//! Blobs are written to a temporary file in `blobs/` (same filesystem, so the final rename is atomic), hashed as
//! they arrive, and renamed to their digest only once the hash matches: a file named `sha256-<hex>` always holds
//! exactly those bytes.

mod blob;
mod config;
mod create;
mod error;
mod gguf_check;
mod gguf_info;
mod go_json;
mod lifecycle;
mod list;
mod manifest;
mod params;
mod partial;
mod progress;
mod quantize;
mod resolve;

pub use blob::{BlobStored, BlobWriter};
pub use config::{ModelConfig, ModelDetails};
pub use create::{CreateMessage, CreateOutcome, CreateRequest};
pub use error::{ErrorKind, StoreError};
pub use gguf_check::{GgufCheckError, validate_gguf_file};
pub use gguf_info::{GgufInfo, human_number};
pub use lifecycle::{DeleteOutcome, GcOutcome};
pub use list::ModelSummary;
pub use manifest::{
    CONFIG_MEDIA_TYPE, Layer, MANIFEST_MEDIA_TYPE, Manifest, StoredManifest, media_type,
};
pub use params::validate_parameters;
pub use partial::{PartState, PartWriter, PartialDownload};
pub use progress::Progress;
pub use resolve::{BlobFile, ResolvedModel};

use ollamamax_core::digest::Digest;
use ollamamax_core::name::ModelName;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind as IoErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Largest blob the store accepts (a 671B-parameter model at 4 bits is ~400 GB).
pub const BLOB_BYTES_MAX: u64 = 1 << 40;
/// Largest manifest file: 64 layers are a few kilobytes.
pub const MANIFEST_BYTES_MAX: u64 = 1 << 20;
/// Largest config blob read for model details.
pub const CONFIG_BYTES_MAX: u64 = 1 << 20;
/// Largest text layer (template, system prompt, license, parameters, messages) read into memory.
pub const TEXT_LAYER_BYTES_MAX: u64 = 16 << 20;
/// Most entries read from one directory while walking `manifests/` or `blobs/`.
pub const DIRECTORY_ENTRIES_MAX: u32 = 1_000_000;
/// Longest `from` or `name` field in a manifest layer, and longest file name in a create request.
pub const LAYER_TEXT_FIELD_BYTES_MAX: u32 = 1024;

const _: () = assert!(MANIFEST_BYTES_MAX <= TEXT_LAYER_BYTES_MAX);
// The server moves these into `spawn_blocking` and across tasks.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Store>();
    send::<BlobWriter>();
    send::<PartialDownload>();
    send::<PartWriter>();
    send::<StoreError>();
};
const _: () = assert!(TEXT_LAYER_BYTES_MAX <= BLOB_BYTES_MAX);

/// A models directory in Ollama's layout. Clones share the in-process guards (see the module docs).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    blobs: PathBuf,
    manifests: PathBuf,
    /// Held while manifests are written and while unreferenced blobs are collected.
    manifests_lock: Mutex<()>,
    /// Pin counts of blobs that in-flight operations will reference.
    pins: Mutex<HashMap<Digest, u32>>,
    /// File names of live [`BlobWriter`] temporary files.
    uploads: Mutex<HashSet<OsString>>,
    /// Whether replacing a manifest removes the blobs only the old one used (`OLLAMA_NOPRUNE` turns it off).
    prune: AtomicBool,
    /// Whether every blob removal waits for [`Store::drop_blob`] (a cluster node: placement decides).
    keep_blobs: AtomicBool,
}

impl Store {
    /// Opens (creating if needed) the models directory at `root`, with its `blobs/` and `manifests/`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let blobs = root.join("blobs");
        let manifests = root.join("manifests");
        fs::create_dir_all(&blobs).map_err(StoreError::io("create the blobs directory"))?;
        fs::create_dir_all(&manifests).map_err(StoreError::io("create the manifests directory"))?;
        Ok(Store {
            inner: Arc::new(Inner {
                root,
                blobs,
                manifests,
                manifests_lock: Mutex::new(()),
                pins: Mutex::new(HashMap::new()),
                uploads: Mutex::new(HashSet::new()),
                prune: AtomicBool::new(true),
                keep_blobs: AtomicBool::new(false),
            }),
        })
    }

    /// Whether create and pull remove the blobs a replaced manifest no longer uses (default true; Ollama's
    /// `OLLAMA_NOPRUNE` turns it off). Applies to every clone.
    pub fn set_prune(&self, prune: bool) {
        self.inner.prune.store(prune, Ordering::Relaxed);
    }

    /// On a cluster node, a blob is removed only by [`Store::drop_blob`], after the cluster committed that this
    /// node gives up its copy: delete, replace and garbage collection then keep every blob (another node's model
    /// may need one this node holds without a manifest). Applies to every clone.
    pub fn set_keep_blobs(&self, keep: bool) {
        self.inner.keep_blobs.store(keep, Ordering::Relaxed);
    }

    /// See [`Store::set_keep_blobs`].
    pub fn keeps_blobs(&self) -> bool {
        self.inner.keep_blobs.load(Ordering::Relaxed)
    }

    /// See [`Store::set_prune`].
    pub fn prunes(&self) -> bool {
        self.inner.prune.load(Ordering::Relaxed)
    }

    /// The models directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the blob with this digest lives (it may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let name = digest.file_name();
        assert_safe_segment(&name);
        let path = self.inner.blobs.join(name);
        assert!(path.starts_with(&self.inner.blobs));
        path
    }

    /// Whether the blob is present.
    pub fn has_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self.blob_size(digest)?.is_some())
    }

    /// The blob's size, or `None` if it is absent.
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        match fs::metadata(self.blob_path(digest)) {
            Ok(metadata) if metadata.is_file() => Ok(Some(metadata.len())),
            Ok(_) => Ok(None),
            Err(error) if error.kind() == IoErrorKind::NotFound => Ok(None),
            Err(error) => Err(StoreError::io("stat blob")(error)),
        }
    }

    /// Pins blobs so garbage collection keeps them until the returned guard is dropped, even while no manifest
    /// references them yet (a pull between downloading a blob and writing its manifest).
    pub fn pin(&self, digests: impl IntoIterator<Item = Digest>) -> BlobPins {
        let digests: Vec<Digest> = digests.into_iter().collect();
        let mut pins = self.pins();
        for digest in &digests {
            *pins.entry(*digest).or_insert(0) += 1;
        }
        BlobPins {
            store: self.clone(),
            digests,
        }
    }

    fn is_pinned(&self, digest: &Digest) -> bool {
        self.pins().contains_key(digest)
    }

    fn pins(&self) -> MutexGuard<'_, HashMap<Digest, u32>> {
        // A panic while holding the lock leaves the map consistent (each update is one statement).
        self.inner
            .pins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn uploads(&self) -> MutexGuard<'_, HashSet<OsString>> {
        self.inner
            .uploads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_manifests(&self) -> MutexGuard<'_, ()> {
        self.inner
            .manifests_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn blobs_dir(&self) -> &Path {
        &self.inner.blobs
    }

    fn manifests_dir(&self) -> &Path {
        &self.inner.manifests
    }

    /// The path of the existing manifest for `name`, matching each segment case-insensitively as Ollama does
    /// (`Mistral` finds `mistral`), or `None`.
    fn find_manifest(&self, name: &ModelName) -> Result<Option<PathBuf>, StoreError> {
        let path = self.resolve_segments(name)?;
        match fs::metadata(&path) {
            Ok(metadata) if metadata.is_file() => Ok(Some(path)),
            Ok(_) => Ok(None),
            Err(error) if error.kind() == IoErrorKind::NotFound => Ok(None),
            Err(error) => Err(StoreError::io("stat manifest")(error)),
        }
    }

    /// Where to write the manifest for `name`: existing directories are reused in whatever case they are
    /// spelled, so `Mistral` and `mistral` never become two models on a case-sensitive filesystem.
    fn manifest_path_for_write(&self, name: &ModelName) -> Result<PathBuf, StoreError> {
        self.resolve_segments(name)
    }

    fn resolve_segments(&self, name: &ModelName) -> Result<PathBuf, StoreError> {
        let mut path = self.inner.manifests.clone();
        for segment in name.path_segments() {
            assert_safe_segment(segment);
            let exact = path.join(segment);
            if exact.symlink_metadata().is_ok() {
                path = exact;
                continue;
            }
            path = match find_case_insensitive(&path, segment)? {
                Some(existing) => path.join(existing),
                None => exact,
            };
        }
        assert!(path.starts_with(&self.inner.manifests));
        Ok(path)
    }
}

/// The entry of `directory` whose name equals `segment` ignoring ASCII case, if any.
fn find_case_insensitive(directory: &Path, segment: &str) -> Result<Option<String>, StoreError> {
    let entries = match fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == IoErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(StoreError::io("read the manifests directory")(error)),
    };
    for entry in entries.take(DIRECTORY_ENTRIES_MAX as usize) {
        let entry = entry.map_err(StoreError::io("read the manifests directory"))?;
        if let Some(file_name) = entry.file_name().to_str()
            && file_name.eq_ignore_ascii_case(segment)
            && is_safe_segment(file_name)
        {
            return Ok(Some(file_name.to_string()));
        }
    }
    Ok(None)
}

/// Blobs kept from garbage collection until dropped; see [`Store::pin`].
pub struct BlobPins {
    store: Store,
    digests: Vec<Digest>,
}

impl BlobPins {
    /// Pins one more blob under this guard.
    pub fn add(&mut self, digest: Digest) {
        *self.store.pins().entry(digest).or_insert(0) += 1;
        self.digests.push(digest);
    }
}

impl Drop for BlobPins {
    fn drop(&mut self) {
        let mut pins = self.store.pins();
        for digest in &self.digests {
            let count = pins.get_mut(digest).expect("a pinned digest has a count");
            assert!(*count >= 1);
            *count -= 1;
            if *count == 0 {
                pins.remove(digest);
            }
        }
    }
}

fn is_safe_segment(segment: &str) -> bool {
    !segment.is_empty() && segment != "." && segment != ".." && !segment.contains(['/', '\\', '\0'])
}

/// A path segment derived from a name or digest; `ModelName` and `Digest` guarantee this, so failing it is a
/// programmer error.
fn assert_safe_segment(segment: &str) {
    assert!(is_safe_segment(segment), "unsafe path segment");
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, then renamed over it.
fn write_atomically(path: &Path, bytes: &[u8], operation: &'static str) -> Result<(), StoreError> {
    use std::io::Write;
    let directory = path.parent().expect("store paths have a parent");
    fs::create_dir_all(directory).map_err(StoreError::io(operation))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(directory)
        .map_err(StoreError::io(operation))?;
    temp.as_file_mut()
        .write_all(bytes)
        .map_err(StoreError::io(operation))?;
    temp.as_file()
        .sync_all()
        .map_err(StoreError::io(operation))?;
    temp.persist(path)
        .map_err(|error| StoreError::io(operation)(error.error))?;
    Ok(())
}

/// Reads at most `limit_bytes` of a file, or `TooLarge`.
fn read_bounded(
    path: &Path,
    limit_bytes: u64,
    what: &'static str,
    operation: &'static str,
) -> Result<Vec<u8>, StoreError> {
    use std::io::Read;
    let file = fs::File::open(path).map_err(StoreError::io(operation))?;
    let mut bytes = Vec::new();
    file.take(limit_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(StoreError::io(operation))?;
    if bytes.len() as u64 > limit_bytes {
        return Err(StoreError::TooLarge { what, limit_bytes });
    }
    Ok(bytes)
}
