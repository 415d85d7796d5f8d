//! Push: Ollama's `PushModel` and `uploadBlob`, with its progress lines: "retrieving manifest" ("couldn't
//! retrieve manifest" if there is none); per blob (layers, then config) "pushing <12 hex>" with digest, total
//! and completed (a blob the registry already has gets one line with completed = total); "pushing manifest";
//! "success".
//!
//! Each missing blob goes up with the Docker upload protocol: `POST …/blobs/uploads/` answers with a location
//! (`Docker-Upload-Location` or `Location`, possibly relative), each `PATCH` of a chunk (`Content-Range:
//! start-end`, Ollama's form) answers with the next one, and `PUT <location>?digest=…` commits. A `201` to the
//! `POST` means the registry already had it. The manifest goes up as the stored file's exact bytes.

use super::auth::Access;
use super::{Registry, RegistryError, blob_url, check_status, emit, manifest_url, repository_url};
use crate::store::{Layer, MANIFEST_MEDIA_TYPE, Progress, Store, StoreError};
use ollamamax_core::name::ModelName;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, LOCATION};
use reqwest::{StatusCode, Url};
use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use tokio::sync::mpsc;

const UPLOAD_LOCATION: &str = "Docker-Upload-Location";

impl Registry {
    /// Pushes `name` from `store` to its registry. The last progress line is "success".
    pub async fn push(
        &self,
        store: &Store,
        name: &ModelName,
        insecure: bool,
        progress: &mpsc::Sender<Progress>,
    ) -> Result<(), RegistryError> {
        self.check_allowed(name, insecure)?;
        let access = Access::push(name, insecure)?;
        emit(progress, Progress::status("retrieving manifest")).await;
        let stored = match store.read_manifest(name) {
            Ok(stored) => stored,
            Err(error) => {
                emit(progress, Progress::status("couldn't retrieve manifest")).await;
                return Err(error.into());
            }
        };
        let mut seen = BTreeSet::new();
        for layer in stored.manifest.blobs() {
            if seen.insert(layer.digest) {
                self.push_blob(store, &access, name, insecure, layer, progress)
                    .await?;
            }
        }
        emit(progress, Progress::status("pushing manifest")).await;
        let url = manifest_url(name, insecure)?;
        self.with_retries(|| async {
            let response = self
                .send(&access, || {
                    self.http
                        .put(url.clone())
                        .header(CONTENT_TYPE, MANIFEST_MEDIA_TYPE)
                        .body(stored.bytes.clone())
                })
                .await?;
            check_status(response).await.map(drop)
        })
        .await?;
        emit(progress, Progress::status("success")).await;
        Ok(())
    }

    async fn push_blob(
        &self,
        store: &Store,
        access: &Access,
        name: &ModelName,
        insecure: bool,
        layer: &Layer,
        progress: &mpsc::Sender<Progress>,
    ) -> Result<(), RegistryError> {
        let total = layer.size;
        let size = store.blob_size(&layer.digest)?;
        if size != Some(total) {
            return Err(StoreError::MissingBlob {
                name: name.short(),
                digest: layer.digest,
            }
            .into());
        }
        let url = blob_url(name, insecure, &layer.digest)?;
        if self.registry_has(access, &url).await? {
            emit(progress, pushing(layer, total)).await;
            return Ok(());
        }
        let uploads = repository_url(name, insecure, "blobs/uploads/")?;
        let response = self
            .with_retries(|| async {
                let response = self
                    .send(access, || {
                        self.http.post(uploads.clone()).header(CONTENT_LENGTH, 0)
                    })
                    .await?;
                check_status(response).await
            })
            .await?;
        if response.status() == StatusCode::CREATED {
            emit(progress, pushing(layer, total)).await;
            return Ok(());
        }
        let mut location = next_location(&uploads, response.headers())?
            .ok_or(RegistryError::Protocol("no upload location"))?;
        emit(progress, pushing(layer, 0)).await;
        let path = store.blob_path(&layer.digest);
        let mut offset = 0u64;
        while offset < total {
            let length = self.options.push_chunk_bytes.min(total - offset);
            let chunk = read_chunk(path.clone(), offset, length).await?;
            location = self.patch_chunk(access, &location, offset, chunk).await?;
            offset += length;
            emit(progress, pushing(layer, offset)).await;
        }
        let mut commit = location;
        commit
            .query_pairs_mut()
            .append_pair("digest", &layer.digest.to_string());
        self.with_retries(|| async {
            let response = self
                .send(access, || {
                    self.http
                        .put(commit.clone())
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, 0)
                })
                .await?;
            check_status(response).await.map(drop)
        })
        .await?;
        emit(progress, pushing(layer, total)).await;
        Ok(())
    }

    /// `HEAD` the blob: present (2xx) or absent (404).
    async fn registry_has(&self, access: &Access, url: &Url) -> Result<bool, RegistryError> {
        self.with_retries(|| async {
            let response = self.send(access, || self.http.head(url.clone())).await?;
            if response.status() == StatusCode::NOT_FOUND {
                return Ok(false);
            }
            check_status(response).await.map(|_| true)
        })
        .await
    }

    /// `PATCH`es one chunk; returns the location for the next request.
    async fn patch_chunk(
        &self,
        access: &Access,
        location: &Url,
        offset: u64,
        chunk: Vec<u8>,
    ) -> Result<Url, RegistryError> {
        let last = offset + chunk.len() as u64 - 1;
        self.with_retries(|| async {
            let response = self
                .send(access, || {
                    self.http
                        .patch(location.clone())
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_RANGE, format!("{offset}-{last}"))
                        .body(chunk.clone())
                })
                .await?;
            let response = check_status(response).await?;
            Ok(next_location(location, response.headers())?.unwrap_or_else(|| location.clone()))
        })
        .await
    }
}

/// The upload location a response names, resolved against the request's URL.
fn next_location(base: &Url, headers: &HeaderMap) -> Result<Option<Url>, RegistryError> {
    let Some(value) = headers
        .get(UPLOAD_LOCATION)
        .or_else(|| headers.get(LOCATION))
    else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| RegistryError::Protocol("upload location is not text"))?;
    base.join(text)
        .map(Some)
        .map_err(|_| RegistryError::Protocol("upload location is not a URL"))
}

async fn read_chunk(
    path: std::path::PathBuf,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, RegistryError> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).map_err(StoreError::io("read blob"))?;
        let mut chunk = vec![0u8; length as usize];
        file.read_exact_at(&mut chunk, offset)
            .map_err(StoreError::io("read blob"))?;
        Ok::<_, StoreError>(chunk)
    })
    .await
    .map_err(|_| RegistryError::Task)?
    .map_err(RegistryError::from)
}

fn pushing(layer: &Layer, completed: u64) -> Progress {
    Progress::transfer("pushing", layer.digest, layer.size, completed)
}
