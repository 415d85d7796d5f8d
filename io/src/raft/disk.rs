//! A hook for simulators: the storage a Raft database opened on this thread lives on. The shell simulation sets
//! it to a simulated disk that loses writes not yet synced when its host crashes (sim/src/shell/disk.rs), so a
//! crash there is a power cut, not a clean process exit with every write on disk. Unset (everywhere else), the
//! database is a file, and a start pays one thread-local read.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

/// The storage of a database file: redb's backend trait, as an object.
pub type Backend = Box<dyn redb::StorageBackend>;

/// Makes the backend for the database file at the given path.
pub type BackendFactory = Rc<dyn Fn(&Path) -> Backend>;

thread_local! {
    static FACTORY: RefCell<Option<BackendFactory>> = const { RefCell::new(None) };
}

/// Raft databases opened on this thread from now on live on the factory's backends (`None`: on files).
pub fn simulate(factory: Option<BackendFactory>) {
    FACTORY.replace(factory);
}

/// The backend for the database file at `path`, if a simulator set one.
pub(super) fn backend(path: &Path) -> Option<Boxed> {
    FACTORY
        .with_borrow(Clone::clone)
        .map(|factory| Boxed(factory(path)))
}

/// A boxed backend is a backend (redb takes `impl StorageBackend`).
#[derive(Debug)]
pub(super) struct Boxed(Backend);

impl redb::StorageBackend for Boxed {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.0.close()
    }
}
