//! Resumable downloads, in Ollama's own format so a download Ollama left half done resumes here and the other
//! way round: the data goes to `blobs/sha256-<hex>-partial` (at each part's offset) and each part's progress to
//! `blobs/sha256-<hex>-partial-<N>`, a JSON record `{"N","Offset","Size","Completed"}`.
//!
//! A record is saved after the data it counts was written, so after a crash a record never claims more than the
//! file holds (without power loss; the final hash check catches the rest). Records that do not parse or do not
//! tile `[0, total)` exactly are discarded with the data and the download starts over. [`PartialDownload::finish`]
//! hashes the whole file and renames it to the blob only if the digest matches.

use super::{Store, StoreError};
use ollamamax_core::digest::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind as IoErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Most parts one download is split into.
pub const PARTS_MAX: u32 = 1024;
/// How many bytes a part writer writes between saving its record.
const SAVE_EVERY_BYTES: u64 = 8 << 20;

/// Ollama's `blobDownloadPart` JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PartRecord {
    #[serde(rename = "N")]
    n: u32,
    offset: u64,
    size: u64,
    completed: u64,
}

/// One part's place and progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartState {
    /// The part's number.
    pub index: u32,
    /// Where it starts in the blob.
    pub offset: u64,
    /// Its length.
    pub size: u64,
    /// Bytes of it already written (from `offset`).
    pub completed: u64,
}

/// A blob being downloaded in parts.
pub struct PartialDownload {
    store: Store,
    digest: Digest,
    total: u64,
    file: Arc<File>,
    parts: Vec<PartRecord>,
}

/// Writes one part sequentially from where it left off. Saves its record every few megabytes and when dropped.
pub struct PartWriter {
    file: Arc<File>,
    record_path: PathBuf,
    record: PartRecord,
    unsaved_bytes: u64,
}

impl Store {
    /// Opens the partial download of `digest` (a blob of `total` bytes), resuming Ollama-format records if they
    /// match `total`, or starting over in parts of about `part_bytes`.
    pub fn open_partial(
        &self,
        digest: &Digest,
        total: u64,
        part_bytes: u64,
    ) -> Result<PartialDownload, StoreError> {
        if total > super::BLOB_BYTES_MAX {
            return Err(StoreError::TooLarge {
                what: "blob",
                limit_bytes: super::BLOB_BYTES_MAX,
            });
        }
        let data_path = self.partial_path(digest);
        let resumed = self
            .load_records(digest, total)
            .filter(|_| data_path.is_file());
        let parts = match resumed {
            Some(parts) => parts,
            None => {
                self.remove_partial(digest)?;
                plan_parts(total, part_bytes)
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(StoreError::io("open partial download"))?;
        file.set_len(total)
            .map_err(StoreError::io("open partial download"))?;
        let download = PartialDownload {
            store: self.clone(),
            digest: *digest,
            total,
            file: Arc::new(file),
            parts,
        };
        for part in &download.parts {
            download.save_record(part)?;
        }
        Ok(download)
    }

    fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.blob_path_with_suffix(digest, "-partial")
    }

    fn record_path(&self, digest: &Digest, index: u32) -> PathBuf {
        let data = self.partial_path(digest);
        let mut name = data
            .file_name()
            .expect("partial paths have a name")
            .to_os_string();
        name.push(format!("-{index}"));
        data.with_file_name(name)
    }

    /// The saved records if they tile `[0, total)` exactly, in order.
    fn load_records(&self, digest: &Digest, total: u64) -> Option<Vec<PartRecord>> {
        let mut parts = Vec::new();
        for index in 0..PARTS_MAX {
            let path = self.record_path(digest, index);
            let mut text = String::new();
            match File::open(&path) {
                Ok(file) => file.take(4096).read_to_string(&mut text).ok()?,
                Err(error) if error.kind() == IoErrorKind::NotFound => break,
                Err(_) => return None,
            };
            let record: PartRecord = serde_json::from_str(&text).ok()?;
            parts.push(record);
        }
        let mut offset = 0u64;
        for (index, part) in parts.iter().enumerate() {
            let consistent = part.n as usize == index
                && part.offset == offset
                && part.size > 0
                && part.completed <= part.size;
            if !consistent {
                return None;
            }
            offset = offset.checked_add(part.size)?;
        }
        (offset == total && (total == 0 || !parts.is_empty())).then_some(parts)
    }

    /// Removes a partial download's data and records, if any.
    pub fn remove_partial(&self, digest: &Digest) -> Result<(), StoreError> {
        let remove = |path: PathBuf| match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == IoErrorKind::NotFound => Ok(false),
            Err(error) => Err(StoreError::io("remove partial download")(error)),
        };
        remove(self.partial_path(digest))?;
        for index in 0..PARTS_MAX {
            if !remove(self.record_path(digest, index))? {
                break;
            }
        }
        Ok(())
    }
}

/// Parts of about `part_bytes` (at most [`PARTS_MAX`] of them) covering `total`.
fn plan_parts(total: u64, part_bytes: u64) -> Vec<PartRecord> {
    let size = part_bytes.max(1).max(total.div_ceil(u64::from(PARTS_MAX)));
    let mut parts = Vec::new();
    let mut offset = 0u64;
    while offset < total {
        let length = size.min(total - offset);
        parts.push(PartRecord {
            n: parts.len() as u32,
            offset,
            size: length,
            completed: 0,
        });
        offset += length;
    }
    assert!(parts.len() <= PARTS_MAX as usize);
    parts
}

impl PartialDownload {
    /// The blob's digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The blob's size.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes already written over all parts (as of opening or the last reset).
    pub fn completed(&self) -> u64 {
        self.parts.iter().map(|part| part.completed).sum()
    }

    /// Every part's place and progress.
    pub fn parts(&self) -> Vec<PartState> {
        self.parts
            .iter()
            .map(|part| PartState {
                index: part.n,
                offset: part.offset,
                size: part.size,
                completed: part.completed,
            })
            .collect()
    }

    /// Starts over as one part: for a server that ignores `Range`, whose only answer is the whole blob.
    pub fn reset_to_single_part(&mut self) -> Result<(), StoreError> {
        for part in &self.parts {
            let path = self.store.record_path(&self.digest, part.n);
            if let Err(error) = fs::remove_file(path)
                && error.kind() != IoErrorKind::NotFound
            {
                return Err(StoreError::io("reset partial download")(error));
            }
        }
        self.parts = plan_parts(self.total, self.total);
        for part in &self.parts {
            self.save_record(part)?;
        }
        Ok(())
    }

    /// A writer for part `index`, continuing where it left off. One writer per part at a time.
    pub fn part_writer(&self, index: u32) -> PartWriter {
        let record = self.parts[index as usize];
        assert_eq!(record.n, index);
        PartWriter {
            file: Arc::clone(&self.file),
            record_path: self.store.record_path(&self.digest, index),
            record,
            unsaved_bytes: 0,
        }
    }

    fn save_record(&self, part: &PartRecord) -> Result<(), StoreError> {
        save_record(&self.store.record_path(&self.digest, part.n), part)
    }

    /// Checks that every part is complete, hashes the file and, if it matches the digest, renames it to the
    /// blob and removes the records. On a mismatch the partial download is removed. Reads the whole blob: call
    /// it from a blocking context.
    pub fn finish(self) -> Result<(), StoreError> {
        let records: Vec<PartRecord> = (0..self.parts.len() as u32)
            .map(|index| {
                let path = self.store.record_path(&self.digest, index);
                let text = fs::read_to_string(path).map_err(StoreError::io("read part record"))?;
                serde_json::from_str(&text)
                    .map_err(|error| StoreError::Invalid(format!("part record: {error}")))
            })
            .collect::<Result<_, _>>()?;
        if records
            .iter()
            .any(|part: &PartRecord| part.completed != part.size)
        {
            return Err(StoreError::Invalid(format!(
                "download of {} is incomplete",
                self.digest
            )));
        }
        self.file.sync_all().map_err(StoreError::io("write blob"))?;
        let actual = hash_file(&self.file, self.total)?;
        if actual != self.digest {
            self.store.remove_partial(&self.digest)?;
            return Err(StoreError::DigestMismatch {
                expected: self.digest,
                actual,
            });
        }
        fs::rename(
            self.store.partial_path(&self.digest),
            self.store.blob_path(&self.digest),
        )
        .map_err(StoreError::io("store blob"))?;
        self.store.remove_partial(&self.digest)
    }
}

fn hash_file(file: &File, total: u64) -> Result<Digest, StoreError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < total {
        let want = (buffer.len() as u64).min(total - offset) as usize;
        let read = file
            .read_at(&mut buffer[..want], offset)
            .map_err(StoreError::io("verify blob"))?;
        if read == 0 {
            return Err(StoreError::Invalid(
                "partial download is truncated".to_string(),
            ));
        }
        hasher.update(&buffer[..read]);
        offset += read as u64;
    }
    Ok(Digest::from_bytes(hasher.finalize().into()))
}

fn save_record(path: &std::path::Path, part: &PartRecord) -> Result<(), StoreError> {
    let mut bytes = serde_json::to_vec(part).expect("records serialize");
    bytes.push(b'\n');
    fs::write(path, bytes).map_err(StoreError::io("save part record"))
}

impl PartWriter {
    /// Where the next byte goes in the blob.
    pub fn position(&self) -> u64 {
        self.record.offset + self.record.completed
    }

    /// Bytes this part still needs.
    pub fn remaining(&self) -> u64 {
        self.record.size - self.record.completed
    }

    /// Writes as much of `bytes` as the part still needs; returns how many bytes were taken.
    pub fn write(&mut self, bytes: &[u8]) -> Result<usize, StoreError> {
        let take = (self.remaining().min(bytes.len() as u64)) as usize;
        self.file
            .write_all_at(&bytes[..take], self.position())
            .map_err(StoreError::io("write partial download"))?;
        self.record.completed += take as u64;
        self.unsaved_bytes += take as u64;
        if self.unsaved_bytes >= SAVE_EVERY_BYTES || self.remaining() == 0 {
            self.save()?;
        }
        Ok(take)
    }

    /// Saves the part's record now.
    pub fn save(&mut self) -> Result<(), StoreError> {
        save_record(&self.record_path, &self.record)?;
        self.unsaved_bytes = 0;
        Ok(())
    }
}

impl Drop for PartWriter {
    fn drop(&mut self) {
        if self.unsaved_bytes > 0 {
            // Best effort: a lost record only means those bytes are downloaded again.
            let _ = self.save();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_tile_the_blob() {
        let parts = plan_parts(10, 4);
        let sizes: Vec<u64> = parts.iter().map(|part| part.size).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        assert_eq!(parts[2].offset, 8);
        assert!(plan_parts(0, 4).is_empty());
        assert_eq!(
            plan_parts(u64::from(PARTS_MAX) * 10, 1).len(),
            PARTS_MAX as usize
        );
    }

    #[test]
    fn records_use_ollamas_field_names() {
        let record = PartRecord {
            n: 1,
            offset: 2,
            size: 3,
            completed: 4,
        };
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            r#"{"N":1,"Offset":2,"Size":3,"Completed":4}"#
        );
    }
}
