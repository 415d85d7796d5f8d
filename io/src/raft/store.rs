//! The on-disk Raft store: one redb database per node holding the log, the vote, the committed log id, the last
//! purged log id and the latest snapshot.
//!
//! Every write transaction commits with [`Durability::Immediate`] (redb fsyncs before `commit` returns), so an
//! acknowledged append or vote survives a crash. Values are postcard-encoded: compact, serde-driven, with a
//! specified and stable wire format, and the same encoding the RPCs use.

use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;

/// The log: index → postcard-encoded entry.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Small records by name: see the `KEY_*` constants.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The current vote.
pub(crate) const KEY_VOTE: &str = "vote";
/// The last committed log id this node learned.
pub(crate) const KEY_COMMITTED: &str = "committed";
/// The last log id removed by a purge.
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";
/// The latest snapshot (metadata and state bytes).
pub(crate) const KEY_SNAPSHOT: &str = "snapshot";

/// The database file inside a node's Raft directory.
pub const DATABASE_FILE_NAME: &str = "raft.redb";

/// Why the Raft store failed. Reading or writing the store is never a peer's fault: to openraft these are
/// storage errors, which stop the node.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (I/O, corruption, a full disk).
    #[error("raft store: {0}")]
    Database(#[from] redb::Error),
    /// A stored record does not decode (corruption, or a format from another version).
    #[error("raft store record: {0}")]
    Encoding(#[from] postcard::Error),
}

macro_rules! from_redb {
    ($($error:ty),*) => {
        $(impl From<$error> for StoreError {
            fn from(error: $error) -> Self {
                Self::Database(error.into())
            }
        })*
    };
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Open (or create) the store in `dir`, which must exist, and make sure both tables exist so that readers never
/// meet a missing table.
pub fn open_database(dir: &Path) -> Result<Arc<Database>, StoreError> {
    let path = dir.join(DATABASE_FILE_NAME);
    let database = match super::disk::backend(&path) {
        Some(backend) => redb::Builder::new().create_with_backend(backend)?,
        None => Database::create(path)?,
    };
    let mut transaction = database.begin_write()?;
    transaction.set_durability(Durability::Immediate)?;
    transaction.open_table(LOG)?;
    transaction.open_table(META)?;
    transaction.commit()?;
    Ok(Arc::new(database))
}

/// Encode a value as stored and sent.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(postcard::to_allocvec(value)?)
}

/// Decode a stored value.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(postcard::from_bytes(bytes)?)
}

/// Read one `META` record.
pub(crate) fn read_meta<T: DeserializeOwned>(
    database: &Database,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let transaction = database.begin_read()?;
    let table = transaction.open_table(META)?;
    let Some(bytes) = table.get(key)? else {
        return Ok(None);
    };
    Ok(Some(decode(bytes.value())?))
}

/// How a `META` record is committed: synced, unless the planted unsynced-vote bug is on.
fn meta_durability(key: &str) -> Durability {
    #[cfg(feature = "planted-bugs")]
    if key == KEY_VOTE && super::planted::unsynced_vote() {
        return Durability::None;
    }
    let _ = key;
    Durability::Immediate
}

/// Write one `META` record durably.
pub(crate) fn write_meta<T: Serialize>(
    database: &Database,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let bytes = encode(value)?;
    let mut transaction = database.begin_write()?;
    transaction.set_durability(meta_durability(key))?;
    {
        let mut table = transaction.open_table(META)?;
        table.insert(key, bytes.as_slice())?;
    }
    transaction.commit()?;
    Ok(())
}
