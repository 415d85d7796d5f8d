//! The Raft log and vote on redb ([`RaftLogStorage`]).
//!
//! An append is one durable transaction: openraft's flush callback fires only after redb has fsynced, so a
//! vote or an entry this node acknowledged is never lost in a crash. Reads for replication are bounded by
//! [`LOG_READ_ENTRIES_MAX`] and [`LOG_READ_BYTES_MAX`]; openraft bounds appends by `max_payload_entries`
//! (see [`super::network::APPEND_ENTRIES_MAX`]).
//!
//! The store is synchronous under an async interface: every call is one short redb transaction, run on the
//! calling task. That blocks a runtime worker for an fsync, which is what every durable Raft log must wait
//! for anyway, and it keeps the order of I/O deterministic under simulation.

use super::store::{
    KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOG, StoreError, decode, encode, read_meta,
    write_meta,
};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, RaftLogId, RaftLogReader, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

/// Most entries one bounded read ([`RaftLogReader::limited_get_log_entries`]) returns.
pub const LOG_READ_ENTRIES_MAX: u64 = 256;
/// Most encoded bytes one bounded read returns (it always returns at least one entry).
pub const LOG_READ_BYTES_MAX: u64 = 8 << 20;

const _: () = assert!(LOG_READ_ENTRIES_MAX >= 1);
const _: () = assert!(LOG_READ_BYTES_MAX >= 1 << 20);

/// The log and vote store of one node. Cheap to clone: clones share the database (openraft reads the log from
/// replication tasks through clones).
#[derive(Debug, Clone)]
pub struct LogStore {
    database: Arc<Database>,
}

impl LogStore {
    /// The log store over an open Raft database (see [`super::store::open_database`]).
    pub fn new(database: Arc<Database>) -> Self {
        Self { database }
    }

    /// Entries in `range`, at most `entries_max` of them and, past the first, at most `bytes_max` bytes.
    fn read_range<RB: RangeBounds<u64>>(
        &self,
        range: RB,
        entries_max: u64,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        let transaction = self.database.begin_read()?;
        let table = transaction.open_table(LOG)?;
        let mut entries = Vec::new();
        let mut bytes_total: u64 = 0;
        for item in
            table.range::<u64>((range.start_bound().cloned(), range.end_bound().cloned()))?
        {
            let (_, value) = item?;
            let bytes = value.value();
            bytes_total = bytes_total.saturating_add(bytes.len() as u64);
            if !entries.is_empty() && bytes_total > bytes_max {
                break;
            }
            entries.push(decode::<Entry>(bytes)?);
            if entries.len() as u64 >= entries_max {
                break;
            }
        }
        Ok(entries)
    }

    fn last_log_id(&self) -> Result<Option<LogId>, StoreError> {
        let transaction = self.database.begin_read()?;
        let table = transaction.open_table(LOG)?;
        let Some((_, value)) = table.last()? else {
            return Ok(None);
        };
        Ok(Some(*decode::<Entry>(value.value())?.get_log_id()))
    }

    fn append_all(&self, entries: impl Iterator<Item = Entry>) -> Result<(), StoreError> {
        let mut transaction = self.database.begin_write()?;
        transaction.set_durability(Durability::Immediate)?;
        {
            let mut table = transaction.open_table(LOG)?;
            for entry in entries {
                let bytes = encode(&entry)?;
                table.insert(entry.log_id.index, bytes.as_slice())?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// Remove the entries in `range` and, for a purge, record the last purged id in the same transaction.
    fn remove_range(
        &self,
        range: (Bound<u64>, Bound<u64>),
        purged: Option<&LogId>,
    ) -> Result<(), StoreError> {
        let mut transaction = self.database.begin_write()?;
        transaction.set_durability(Durability::Immediate)?;
        {
            let mut table = transaction.open_table(LOG)?;
            table.retain_in::<u64, _>(range, |_, _| false)?;
        }
        if let Some(purged) = purged {
            let bytes = encode(purged)?;
            let mut table = transaction.open_table(super::store::META)?;
            table.insert(KEY_LAST_PURGED, bytes.as_slice())?;
        }
        transaction.commit()?;
        Ok(())
    }
}

fn read_error(error: StoreError) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&error)).into()
}

fn write_error(error: StoreError) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&error)).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_range(range, u64::MAX, u64::MAX)
            .map_err(read_error)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_range(start..end, LOG_READ_ENTRIES_MAX, LOG_READ_BYTES_MAX)
            .map_err(read_error)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> =
            read_meta(&self.database, KEY_LAST_PURGED).map_err(read_error)?;
        let last_log_id = self
            .last_log_id()
            .map_err(read_error)?
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        write_meta(&self.database, KEY_VOTE, vote)
            .map_err(|error| StorageIOError::write_vote(AnyError::new(&error)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        read_meta(&self.database, KEY_VOTE)
            .map_err(|error| StorageIOError::read_vote(AnyError::new(&error)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        write_meta(&self.database, KEY_COMMITTED, &committed).map_err(write_error)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> =
            read_meta(&self.database, KEY_COMMITTED).map_err(read_error)?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        match self.append_all(entries.into_iter()) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(write_error(error))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove_range((Bound::Included(log_id.index), Bound::Unbounded), None)
            .map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove_range(
            (Bound::Unbounded, Bound::Included(log_id.index)),
            Some(&log_id),
        )
        .map_err(write_error)
    }
}
