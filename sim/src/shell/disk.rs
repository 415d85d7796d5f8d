//! The simulated disk under every node's Raft database: writes land in a page cache and reach the disk only when
//! the database syncs, so a crash of the host (a power cut) loses what was not synced. Which unsynced pages had
//! already been written back when the power went is drawn from the seed, page by page: a commit in flight can
//! land half, in any order. A bounce (the process killed, the machine up) loses nothing: the page cache
//! survives it. Either way, the old process is dead: whatever its leftover objects do afterwards (a database
//! closed as its runtime is dropped) reaches no disk.
//!
//! Every commit of the nodes' Raft databases syncs before it returns, and a turmoil crash falls between steps, so
//! a plain crash never finds unsynced pages. A crash can instead be armed to land inside a sync
//! ([`Disk::arm`]): that sync fails, and the host is crashed at the end of the step, with the commit's pages half
//! on the disk.
//!
//! It is installed through [`ollamamax_io::raft::disk`] for every node of one run; files are keyed by host and
//! by their path inside the node's data directory, so a restarted node (which starts from a copy of its
//! directory, see `host.rs`) finds its database where it left it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::options::Draws;

/// The page size of the page cache: the unit a crash keeps or loses.
const PAGE_BYTES: u64 = 4096;

/// One file: what reads see, what is on the disk, and which pages differ.
#[derive(Debug, Default)]
struct File {
    /// The file as the running process sees it (every write so far).
    cached: Vec<u8>,
    /// The file on the disk: as of the last sync, plus whatever write-back a crash kept.
    durable: Vec<u8>,
    /// Pages written since the last sync.
    dirty: BTreeSet<u64>,
}

impl File {
    fn sync(&mut self) {
        self.durable.resize(self.cached.len(), 0);
        for page in std::mem::take(&mut self.dirty) {
            let range = page_range(page, self.cached.len());
            self.durable[range.clone()].copy_from_slice(&self.cached[range]);
        }
    }

    /// A power cut: each dirty page was written back or not, as `keep` says; returns the pages lost.
    fn crash(&mut self, mut keep: impl FnMut() -> bool) -> u64 {
        let length = if keep() {
            self.cached.len()
        } else {
            self.durable.len()
        };
        self.durable.resize(length, 0);
        let mut lost = 0;
        for page in std::mem::take(&mut self.dirty) {
            let range = page_range(page, length.min(self.cached.len()));
            if range.is_empty() {
                continue;
            }
            if keep() {
                self.durable[range.clone()].copy_from_slice(&self.cached[range]);
            } else {
                lost += 1;
            }
        }
        self.cached = self.durable.clone();
        lost
    }
}

fn page_range(page: u64, length: usize) -> std::ops::Range<usize> {
    let start = usize::try_from(page * PAGE_BYTES)
        .unwrap_or(usize::MAX)
        .min(length);
    let end = usize::try_from((page + 1) * PAGE_BYTES)
        .unwrap_or(usize::MAX)
        .min(length);
    start..end
}

/// A file: its host, and its path inside the host's data directory.
type FileKey = (String, PathBuf);

/// Every host's files, and the incarnation of each host whose process may write.
#[derive(Debug)]
pub struct Disk {
    /// The run's data root: a file's host is the first component under it.
    root: PathBuf,
    files: Mutex<BTreeMap<FileKey, Arc<Mutex<File>>>>,
    /// Per host: the process now running, and whether its power is about to go.
    hosts: Mutex<BTreeMap<String, Arc<HostDisk>>>,
    /// Which dirty pages a crash keeps.
    draws: Mutex<Draws>,
    /// Pages lost to crashes so far.
    lost_pages: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Disk {
    /// An empty disk for the data directories under `root`; `seed` draws what crashes keep.
    pub fn new(root: PathBuf, seed: u64) -> Self {
        Self {
            root,
            files: Mutex::default(),
            hosts: Mutex::default(),
            draws: Mutex::new(Draws::new(seed)),
            lost_pages: AtomicU64::new(0),
        }
    }

    /// The host and the path inside its data directory of `path` (`<root>/n2.3/cluster/raft.redb` is host `n2`'s
    /// `cluster/raft.redb`: restarts run on copies named `n2.1`, `n2.2`, ...).
    fn key(&self, path: &Path) -> FileKey {
        let relative = path.strip_prefix(&self.root).unwrap_or(path);
        let mut components = relative.components();
        let host = match components.next() {
            Some(Component::Normal(name)) => name.to_string_lossy().to_string(),
            _ => String::new(),
        };
        let host = host.split('.').next().unwrap_or_default().to_string();
        (host, components.as_path().to_path_buf())
    }

    fn host(&self, host: &str) -> Arc<HostDisk> {
        lock(&self.hosts)
            .entry(host.to_string())
            .or_default()
            .clone()
    }

    /// The storage of the database file at `path`, for the process now running on its host.
    pub fn open(&self, path: &Path) -> Handle {
        let key = self.key(path);
        let host = self.host(&key.0);
        let file = lock(&self.files).entry(key).or_default().clone();
        Handle {
            file,
            incarnation: host.incarnation.load(Ordering::SeqCst),
            host,
        }
    }

    /// `host`'s power goes during its next sync: that sync fails (the process sees an I/O error and never learns
    /// whether its writes are on the disk), the process writes nothing more, and [`Self::tripped`] says so, for
    /// the caller to crash the host then.
    pub fn arm(&self, host: &str) {
        self.host(host).armed.store(true, Ordering::SeqCst);
    }

    /// Calls off `host`'s armed power cut, if it has not happened.
    pub fn disarm(&self, host: &str) {
        self.host(host).armed.store(false, Ordering::SeqCst);
    }

    /// Whether `host`'s power went in a sync and the host is still to be crashed.
    pub fn power_lost(&self, host: &str) -> bool {
        self.host(host).tripped.load(Ordering::SeqCst)
    }

    /// Whether `host`'s armed power cut has happened (once: it is disarmed).
    pub fn tripped(&self, host: &str) -> bool {
        self.host(host).tripped.swap(false, Ordering::SeqCst)
    }

    /// `host` loses power: its process dies, and of what it wrote since its last syncs, only the pages the seed
    /// says were written back survive.
    pub fn crash(&self, host: &str) {
        let state = self.host(host);
        state.incarnation.fetch_add(1, Ordering::SeqCst);
        state.armed.store(false, Ordering::SeqCst);
        let mut draws = lock(&self.draws);
        for ((owner, _), file) in lock(&self.files).iter() {
            if owner == host {
                let lost = lock(file).crash(|| draws.chance(50));
                self.lost_pages.fetch_add(lost, Ordering::Relaxed);
            }
        }
    }

    /// `host`'s process dies (and is started again): its writes are in the page cache, and survive.
    pub fn kill(&self, host: &str) {
        self.host(host).incarnation.fetch_add(1, Ordering::SeqCst);
    }

    /// Unsynced pages crashes have lost so far.
    pub fn lost_pages(&self) -> u64 {
        self.lost_pages.load(Ordering::Relaxed)
    }
}

/// One host's power and processes.
#[derive(Debug, Default)]
struct HostDisk {
    /// The process now running (bumped at every crash and bounce, and when the power goes).
    incarnation: AtomicU64,
    /// The power goes at the next sync.
    armed: AtomicBool,
    /// It went; the host is to be crashed.
    tripped: AtomicBool,
}

/// One process's open database file.
#[derive(Debug)]
pub struct Handle {
    file: Arc<Mutex<File>>,
    /// The process that opened it.
    incarnation: u64,
    /// Its host.
    host: Arc<HostDisk>,
}

impl Handle {
    /// Whether the process that opened this file still runs (a dead one's writes reach nothing).
    fn alive(&self) -> bool {
        self.host.incarnation.load(Ordering::SeqCst) == self.incarnation
    }
}

impl redb::StorageBackend for Handle {
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.file).cached.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let file = lock(&self.file);
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start.checked_add(out.len());
        match end.and_then(|end| file.cached.get(start..end)) {
            Some(bytes) => {
                out.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            )),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if !self.alive() {
            return Ok(());
        }
        let mut file = lock(&self.file);
        let length = usize::try_from(len).map_err(io::Error::other)?;
        if length > file.cached.len() {
            // The new pages are zeros the disk may not have yet.
            let first = file.cached.len() as u64 / PAGE_BYTES;
            let last = len.div_ceil(PAGE_BYTES);
            file.dirty.extend(first..last);
        }
        file.cached.resize(length, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        if !self.alive() {
            return Ok(());
        }
        if self.host.armed.swap(false, Ordering::SeqCst) {
            self.host.incarnation.fetch_add(1, Ordering::SeqCst);
            self.host.tripped.store(true, Ordering::SeqCst);
            return Err(io::Error::other("the power went during a sync"));
        }
        lock(&self.file).sync();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if !self.alive() || data.is_empty() {
            return Ok(());
        }
        let mut file = lock(&self.file);
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + data.len();
        if end > file.cached.len() {
            let grown = file.cached.len() as u64;
            file.dirty
                .extend(grown / PAGE_BYTES..(end as u64).div_ceil(PAGE_BYTES));
            file.cached.resize(end, 0);
        }
        file.cached[start..end].copy_from_slice(data);
        file.dirty
            .extend(offset / PAGE_BYTES..(end as u64).div_ceil(PAGE_BYTES));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;

    fn read_all(handle: &Handle) -> Vec<u8> {
        let mut bytes = vec![0; handle.len().unwrap() as usize];
        handle.read(0, &mut bytes).unwrap();
        bytes
    }

    #[test]
    fn a_crash_keeps_synced_pages_and_a_bounce_keeps_everything() {
        let disk = Disk::new(PathBuf::from("/root"), 1);
        let path = Path::new("/root/n2/cluster/raft.redb");
        let first = disk.open(path);
        first.write(0, &[1; 4096]).unwrap();
        first.sync_data().unwrap();
        first.write(0, &[2; 4096]).unwrap();
        disk.kill("n2");
        // The dead process's writes reach nothing; the page cache keeps what it wrote before.
        first.write(0, &[3; 4096]).unwrap();
        let second = disk.open(Path::new("/root/n2.1/cluster/raft.redb"));
        assert_eq!(read_all(&second), vec![2; 4096]);
        second.sync_data().unwrap();
        // Many crashes, each with one unsynced page beyond the synced one: some keep it, some lose it.
        let mut kept = 0;
        for round in 0..32_u8 {
            let handle = disk.open(path);
            handle.write(4096, &[round; 4096]).unwrap();
            disk.crash("n2");
            let after = read_all(&disk.open(path));
            assert!(
                after[..4096].iter().all(|&byte| byte == 2),
                "synced page lost"
            );
            if after.len() == 8192 && after[4096..].iter().all(|&byte| byte == round) {
                kept += 1;
            }
            // Start the next round from a known state: the second page synced away.
            let handle = disk.open(path);
            handle.set_len(4096).unwrap();
            handle.sync_data().unwrap();
        }
        assert!(kept > 0 && kept < 32, "kept {kept} of 32");
        // An armed power cut fails the next sync, and the dead process writes nothing more.
        let handle = disk.open(path);
        handle.write(0, &[9; 4096]).unwrap();
        disk.arm("n2");
        assert!(handle.sync_data().is_err());
        handle.write(4096, &[9; 4096]).unwrap();
        assert_eq!(handle.len().unwrap(), 4096);
        assert!(disk.tripped("n2") && !disk.tripped("n2"));
        disk.crash("n2");
        assert!(disk.open(path).sync_data().is_ok());
        assert!(disk.lost_pages() > 0);
        // Other hosts' files are apart.
        assert_eq!(
            disk.open(Path::new("/root/n3/cluster/raft.redb"))
                .len()
                .unwrap(),
            0
        );
    }

    #[test]
    fn redb_recovers_from_crashes_mid_commit() {
        let disk = Arc::new(Disk::new(PathBuf::from("/root"), 7));
        let path = Path::new("/root/n1/raft.redb");
        const TABLE: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("t");
        let mut acknowledged = 0;
        for round in 1..=20_u64 {
            let database = redb::Builder::new()
                .create_with_backend(disk.open(path))
                .unwrap();
            {
                let read = redb::ReadableDatabase::begin_read(&database).unwrap();
                if let Ok(table) = read.open_table(TABLE) {
                    // The acknowledged commit survived the crash, or the cut one (which may have landed whole).
                    let last = table.get(0).unwrap().map_or(0, |value| value.value());
                    assert!(
                        last == acknowledged || last == acknowledged + 1000,
                        "round {round}: {last}, acknowledged {acknowledged}"
                    );
                }
            }
            let transaction = database.begin_write().unwrap();
            transaction
                .open_table(TABLE)
                .unwrap()
                .insert(0, round)
                .unwrap();
            transaction.commit().unwrap();
            acknowledged = round;
            // A second commit, cut by a power loss inside its sync.
            disk.arm("n1");
            let transaction = database.begin_write().unwrap();
            transaction
                .open_table(TABLE)
                .unwrap()
                .insert(0, round + 1000)
                .unwrap();
            assert!(transaction.commit().is_err(), "the sync failed");
            assert!(disk.tripped("n1"));
            disk.crash("n1");
            drop(database);
        }
        assert!(disk.lost_pages() > 0, "no crash cut a commit");
    }
}
