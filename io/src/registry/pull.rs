//! Pull: Ollama's `PullModel` and `downloadBlob`, with the same progress lines:
//! "pulling manifest"; per blob (layers, then config) "pulling <12 hex>" with digest, total and completed (a
//! blob already present gets one line with completed = total); "verifying sha256 digest"; "writing manifest";
//! "removing unused layers" when a replaced manifest's blobs are no longer used; "success".
//!
//! A blob is downloaded into the store's partial file, in parallel `Range` parts when the server honours
//! `Range`, else as one stream; interrupted parts resume. A one-byte `Range` probe tells which: a server that
//! ignores `Range` answers it with the whole blob, which becomes that stream, so every blob is fetched once.
//! Every downloaded blob is hashed before it gets its name, and the manifest, stored as the registry's exact
//! bytes, is written last.

use super::auth::Access;
use super::{
    ACCEPT_MANIFEST, Registry, RegistryError, blob_url, check_status, emit, manifest_url, read_body,
};
use crate::store::{
    Layer, MANIFEST_BYTES_MAX, Manifest, PartWriter, PartialDownload, Progress, Store,
};
use futures::StreamExt;
use ollamamax_core::digest::Digest;
use ollamamax_core::name::ModelName;
use reqwest::header::{ACCEPT, CONTENT_RANGE, RANGE};
use reqwest::{Response, StatusCode, Url};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{OwnedMutexGuard, mpsc};
use tokio::time::MissedTickBehavior;

/// Media type of Ollama's safetensors tensor layers (MLX models), which this server cannot run.
const TENSOR_MEDIA_TYPE: &str = "application/vnd.ollama.image.tensor";
/// How many parts Ollama aims to split a blob into.
const PARTS_TARGET: u64 = 16;

/// What the one-byte probe of a blob found.
enum Probe {
    /// The server honours `Range`; the blob is at this URL (after redirects).
    Ranges(Url),
    /// The server ignores `Range`: this answer carries the whole blob.
    Whole(Response),
}

/// A downloaded blob waiting for verification, with the lock that keeps other pulls off it.
struct Downloaded {
    partial: PartialDownload,
    _lock: DownloadLock,
}

impl Registry {
    /// Pulls `name` into `store`. The last progress line is "success".
    pub async fn pull(
        &self,
        store: &Store,
        name: &ModelName,
        insecure: bool,
        progress: &mpsc::Sender<Progress>,
    ) -> Result<(), RegistryError> {
        self.check_allowed(name, insecure)?;
        let replaced = store.read_manifest(name).ok();
        let access = Access::pull(name, insecure)?;
        emit(progress, Progress::status("pulling manifest")).await;
        let (bytes, manifest) = self.fetch_manifest(&access, name, insecure).await?;
        if manifest
            .blobs()
            .any(|layer| layer.media_type == TENSOR_MEDIA_TYPE)
        {
            return Err(RegistryError::Unsupported(
                "this model is stored as safetensors tensors, which this server cannot run".into(),
            ));
        }
        let pins = store.pin(manifest.blobs().map(|layer| layer.digest));
        let mut downloaded = Vec::new();
        let mut seen = BTreeSet::new();
        for layer in manifest.blobs() {
            if !seen.insert(layer.digest) {
                continue;
            }
            if let Some(size) = store.blob_size(&layer.digest)? {
                emit(progress, pulling(layer.digest, size, size)).await;
                continue;
            }
            let lock = self.lock_download(layer.digest).await;
            // Another pull may have finished this blob while we waited.
            if let Some(size) = store.blob_size(&layer.digest)? {
                emit(progress, pulling(layer.digest, size, size)).await;
                continue;
            }
            let partial = self
                .download_blob(store, &access, name, insecure, layer, progress)
                .await?;
            downloaded.push(Downloaded {
                partial,
                _lock: lock,
            });
        }
        emit(progress, Progress::status("verifying sha256 digest")).await;
        // Every good blob is kept even if another fails, so a retry downloads only the bad one.
        let mut first_error = None;
        for blob in downloaded {
            let Downloaded { partial, _lock } = blob;
            let verified = tokio::task::spawn_blocking(move || partial.finish())
                .await
                .map_err(|_| RegistryError::Task)
                .and_then(|result| result.map_err(RegistryError::from));
            if let Err(error) = verified {
                first_error.get_or_insert(error);
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        emit(progress, Progress::status("writing manifest")).await;
        store.write_manifest_bytes(name, &bytes)?;
        drop(pins);
        if let Some(old) = replaced.filter(|_| store.prunes()) {
            let kept: BTreeSet<Digest> = manifest.blobs().map(|layer| layer.digest).collect();
            let unused: BTreeSet<Digest> = old
                .manifest
                .blobs()
                .map(|layer| layer.digest)
                .filter(|digest| !kept.contains(digest))
                .collect();
            if !unused.is_empty() {
                emit(progress, Progress::status("removing unused layers")).await;
                if let Err(error) = store.remove_unreferenced(unused) {
                    let line = format!("couldn't remove unused layers: {error}");
                    emit(progress, Progress::status(line)).await;
                }
            }
        }
        emit(progress, Progress::status("success")).await;
        Ok(())
    }

    /// The manifest's exact bytes and their parse.
    async fn fetch_manifest(
        &self,
        access: &Access,
        name: &ModelName,
        insecure: bool,
    ) -> Result<(Vec<u8>, Manifest), RegistryError> {
        let url = manifest_url(name, insecure)?;
        let bytes = self
            .with_retries(|| async {
                let response = self
                    .send(access, || {
                        self.http.get(url.clone()).header(ACCEPT, ACCEPT_MANIFEST)
                    })
                    .await?;
                if response.status() == StatusCode::NOT_FOUND {
                    return Err(RegistryError::ManifestNotFound);
                }
                read_body(check_status(response).await?, MANIFEST_BYTES_MAX).await
            })
            .await?;
        let manifest = Manifest::parse(&bytes).map_err(RegistryError::InvalidManifest)?;
        Ok((bytes, manifest))
    }

    async fn download_blob(
        &self,
        store: &Store,
        access: &Access,
        name: &ModelName,
        insecure: bool,
        layer: &Layer,
        progress: &mpsc::Sender<Progress>,
    ) -> Result<PartialDownload, RegistryError> {
        let total = layer.size;
        let part_bytes =
            (total / PARTS_TARGET).clamp(self.options.part_bytes_min, self.options.part_bytes_max);
        let mut partial = store.open_partial(&layer.digest, total, part_bytes)?;
        emit(progress, pulling(layer.digest, total, partial.completed())).await;
        // An earlier pull may have fetched every byte and failed before verifying.
        if partial.completed() == total {
            return Ok(partial);
        }
        let url = blob_url(name, insecure, &layer.digest)?;
        let (direct, mut whole) = match self.probe(access, &url).await? {
            Probe::Ranges(direct) => (direct, None),
            Probe::Whole(response) => {
                // The answer starts at byte 0: earlier progress cannot be resumed from this server.
                if partial.parts().len() != 1 || partial.completed() > 0 {
                    partial.reset_to_single_part()?;
                }
                (response.url().clone(), Some(response))
            }
        };
        let completed = Arc::new(AtomicU64::new(partial.completed()));
        {
            let pending = partial
                .parts()
                .into_iter()
                .filter(|part| part.completed < part.size);
            let mut parts = futures::stream::iter(pending.map(|part| {
                let writer = partial.part_writer(part.index);
                let first = whole.take();
                self.download_part(access, &direct, writer, first, Arc::clone(&completed))
            }))
            .buffer_unordered(self.options.parts_parallel_max as usize);
            let mut ticker = tokio::time::interval(self.options.progress_interval);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
            ticker.tick().await;
            loop {
                tokio::select! {
                    next = parts.next() => match next {
                        None => break,
                        Some(result) => result?,
                    },
                    _ = ticker.tick() => {
                        let done = completed.load(Ordering::Relaxed);
                        emit(progress, pulling(layer.digest, total, done)).await;
                    }
                }
            }
        }
        emit(progress, pulling(layer.digest, total, total)).await;
        Ok(partial)
    }

    /// Where the blob really is (after redirects) and whether it honours `Range`, from a one-byte request; a
    /// server that ignores `Range` answers with the whole blob, kept to be read.
    async fn probe(&self, access: &Access, url: &Url) -> Result<Probe, RegistryError> {
        self.with_retries(|| async {
            let response = self
                .send(access, || {
                    self.http.get(url.clone()).header(RANGE, "bytes=0-0")
                })
                .await?;
            let ranges = response.status() == StatusCode::PARTIAL_CONTENT;
            let response = check_status(response).await?;
            if ranges {
                // Dropping the response closes the connection: the byte is not needed.
                Ok(Probe::Ranges(response.url().clone()))
            } else {
                Ok(Probe::Whole(response))
            }
        })
        .await
    }

    /// Downloads the rest of one part, starting with `first` (an answer already carrying the part from its
    /// first byte) if given, retrying (and resuming) on failures that may pass.
    async fn download_part(
        &self,
        access: &Access,
        url: &Url,
        mut writer: PartWriter,
        mut first: Option<Response>,
        completed: Arc<AtomicU64>,
    ) -> Result<(), RegistryError> {
        let mut tries = 0u32;
        loop {
            let attempt = match first.take() {
                Some(response) => {
                    assert_eq!(writer.position(), 0, "a whole answer fills a fresh part");
                    write_body(response, 0, &mut writer, &completed).await
                }
                None => {
                    self.download_part_once(access, url, &mut writer, &completed)
                        .await
                }
            };
            let error = match attempt {
                Ok(()) if writer.remaining() == 0 => return Ok(()),
                Ok(()) => RegistryError::Protocol("the blob ended early"),
                Err(error) if !error.is_retryable() => return Err(error),
                Err(error) => error,
            };
            writer.save()?;
            tries += 1;
            if tries >= self.options.attempts_max {
                return Err(RegistryError::RetriesExhausted(Box::new(error)));
            }
            tokio::time::sleep(super::backoff(tries)).await;
        }
    }

    async fn download_part_once(
        &self,
        access: &Access,
        url: &Url,
        writer: &mut PartWriter,
        completed: &AtomicU64,
    ) -> Result<(), RegistryError> {
        let start = writer.position();
        let end = start + writer.remaining() - 1;
        let range = format!("bytes={start}-{end}");
        let response = self
            .send(access, || self.http.get(url.clone()).header(RANGE, &range))
            .await?;
        // A server that ignores `Range` sends the blob from its first byte.
        let skip = match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                let range = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|value| value.to_str().ok());
                if range_start(range) != Some(start) {
                    return Err(RegistryError::Protocol(
                        "Content-Range does not match the request",
                    ));
                }
                0
            }
            _ => start,
        };
        let response = check_status(response).await?;
        write_body(response, skip, writer, completed).await
    }

    async fn lock_download(&self, digest: Digest) -> DownloadLock {
        let lock = {
            let mut downloads = self
                .downloads
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            Arc::clone(downloads.entry(digest).or_default())
        };
        DownloadLock {
            guard: Some(lock.lock_owned().await),
            downloads: Arc::clone(&self.downloads),
            digest,
        }
    }
}

/// Holds one blob's download lock; the map entry goes when nobody else wants it.
struct DownloadLock {
    guard: Option<OwnedMutexGuard<()>>,
    downloads:
        Arc<std::sync::Mutex<std::collections::HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>>,
    digest: Digest,
}

impl Drop for DownloadLock {
    fn drop(&mut self) {
        let mut downloads = self
            .downloads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        drop(self.guard.take());
        // Only the map holds it now: no pull is waiting for this blob.
        if downloads
            .get(&self.digest)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            downloads.remove(&self.digest);
        }
    }
}

/// Writes `response`'s body, less its first `skip` bytes, into the part until the part is full or the body
/// ends.
async fn write_body(
    mut response: Response,
    mut skip: u64,
    writer: &mut PartWriter,
    completed: &AtomicU64,
) -> Result<(), RegistryError> {
    while writer.remaining() > 0 {
        let Some(chunk) = response.chunk().await.map_err(RegistryError::http)? else {
            break;
        };
        let skipped = (skip.min(chunk.len() as u64)) as usize;
        skip -= skipped as u64;
        let taken = writer.write(&chunk[skipped..])?;
        completed.fetch_add(taken as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// The first byte of `bytes <first>-<last>/<total>`.
fn range_start(content_range: Option<&str>) -> Option<u64> {
    let rest = content_range?.trim().strip_prefix("bytes ")?;
    rest.split_once('-')?.0.trim().parse().ok()
}

fn pulling(digest: Digest, total: u64, completed: u64) -> Progress {
    Progress::transfer("pulling", digest, total, completed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_start() {
        assert_eq!(range_start(Some("bytes 10-19/100")), Some(10));
        assert_eq!(range_start(Some("bytes */100")), None);
        assert_eq!(range_start(None), None);
    }
}
