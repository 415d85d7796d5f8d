//! Blob ranges between nodes: ranges checked against the blob's size, downloads that survive a killed connection
//! and resume from a partial file, and a download whose bytes do not match the digest.

mod t10_transport_support;

use ollamamax_core::digest::Digest;
use ollamamax_core::ids::NodeId;
use ollamamax_io::cluster::ClusterCa;
use ollamamax_io::store::Store;
use ollamamax_io::transport::{
    BlobRefusal, BlobSource, DownloadError, FetchError, OpenedBlob, Transport,
};
use sha2::{Digest as _, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use t10_transport_support::{Members, Node, introduce, pseudo_random_bytes, start, start_plain};

/// Put `bytes` into a fresh store as a blob; returns the store, its directory and the digest.
fn store_with(bytes: &[u8]) -> (Store, tempfile::TempDir, Digest) {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let digest = Digest::from_bytes(Sha256::digest(bytes).into());
    std::fs::write(store.blob_path(&digest), bytes).unwrap();
    (store, directory, digest)
}

/// A server (node 1) serving `blobs`, and a client (node 2) that knows where it is.
fn pair(blobs: Arc<dyn BlobSource>) -> (Node, Node) {
    let ca = ClusterCa::create().unwrap();
    let members = Members::of(&[1, 2]);
    let server = start(
        &ca.issue_identity(NodeId(1)).unwrap(),
        &members,
        blobs,
        None,
    );
    let client = start_plain(&ca.issue_identity(NodeId(2)).unwrap(), &members);
    introduce(&client, &server);
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_ranges_are_served_exactly_and_checked_against_the_blob() {
    let bytes = pseudo_random_bytes(3 << 20, 1);
    let (store, _directory, digest) = store_with(&bytes);
    let (server, client) = pair(Arc::new(store));

    let mut stream = client
        .transport
        .fetch_blob(server.id(), digest, 1000, 2 << 20)
        .await
        .unwrap();
    assert_eq!(stream.blob_bytes(), 3 << 20);
    let mut received = Vec::new();
    while let Some(chunk) = stream.next_chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(received, bytes[1000..1000 + (2 << 20)]);

    let size = bytes.len() as u64;
    for (offset, length) in [(size - 10, 20), (u64::MAX, 1), (size + 1, 0)] {
        let result = client
            .transport
            .fetch_blob(server.id(), digest, offset, length)
            .await;
        assert!(
            matches!(result, Err(FetchError::Refused(BlobRefusal::OutOfRange { blob_bytes })) if blob_bytes == size),
            "{offset} {length}: {result:?}"
        );
    }
    // The empty range at the very end is in range.
    let mut empty = client
        .transport
        .fetch_blob(server.id(), digest, size, 0)
        .await
        .unwrap();
    assert!(empty.next_chunk().await.unwrap().is_none());
    let missing = Digest::from_bytes([9; 32]);
    let result = client
        .transport
        .fetch_blob(server.id(), missing, 0, 1)
        .await;
    assert!(
        matches!(result, Err(FetchError::Refused(BlobRefusal::NotFound))),
        "{result:?}"
    );
}

/// A store whose readers record where they were asked to start, and which can trip a callback once a reader has
/// handed out some bytes (to kill a connection mid-transfer).
struct Tripwire {
    store: Store,
    offsets: Mutex<Vec<u64>>,
    trip_after_bytes: u64,
    tripped: Arc<AtomicBool>,
    on_trip: OnceLock<Box<dyn Fn() + Send + Sync>>,
    self_reference: OnceLock<std::sync::Weak<Tripwire>>,
}

struct TripReader {
    file: std::fs::File,
    read_bytes: u64,
    owner: Arc<Tripwire>,
}

impl Read for TripReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.file.read(buffer)?;
        self.read_bytes += read as u64;
        let owner = &self.owner;
        if self.read_bytes >= owner.trip_after_bytes && !owner.tripped.swap(true, Ordering::SeqCst)
        {
            // Let the bytes already sent arrive, then kill the connection.
            std::thread::sleep(std::time::Duration::from_millis(100));
            (owner.on_trip.get().unwrap())();
        }
        Ok(read)
    }
}

impl Seek for TripReader {
    fn seek(&mut self, position: SeekFrom) -> std::io::Result<u64> {
        let at = self.file.seek(position)?;
        self.owner.offsets.lock().unwrap().push(at);
        Ok(at)
    }
}

impl BlobSource for Tripwire {
    fn open(&self, digest: &Digest) -> std::io::Result<Option<OpenedBlob>> {
        let file = std::fs::File::open(self.store.blob_path(digest))?;
        let blob_bytes = file.metadata()?.len();
        let owner = self.self_reference.get().unwrap().upgrade().unwrap();
        let reader = TripReader {
            file,
            read_bytes: 0,
            owner,
        };
        Ok(Some(OpenedBlob {
            blob_bytes,
            reader: Box::new(reader),
        }))
    }
}

fn tripwire(store: Store, trip_after_bytes: u64) -> Arc<Tripwire> {
    let tripwire = Arc::new(Tripwire {
        store,
        offsets: Mutex::new(Vec::new()),
        trip_after_bytes,
        tripped: Arc::new(AtomicBool::new(false)),
        on_trip: OnceLock::new(),
        self_reference: OnceLock::new(),
    });
    tripwire
        .self_reference
        .set(Arc::downgrade(&tripwire))
        .ok()
        .unwrap();
    tripwire
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_download_resumes_after_the_connection_is_killed_mid_transfer() {
    let bytes = pseudo_random_bytes(24 << 20, 2);
    let (store, directory, digest) = store_with(&bytes);
    let source = tripwire(store, 8 << 20);
    let (server, client) = pair(source.clone());
    let killer: Transport = client.transport.clone();
    let server_id = server.id();
    source
        .on_trip
        .set(Box::new(move || killer.disconnect(server_id)))
        .ok()
        .unwrap();

    let target = directory.path().join("download");
    let done = client
        .transport
        .download_blob(server.id(), digest, bytes.len() as u64, &target)
        .await
        .unwrap();
    assert_eq!(done.attempts, 2);
    assert_eq!(done.resumed_from_bytes, 0);
    assert_eq!(done.blob_bytes, bytes.len() as u64);
    let offsets = source.offsets.lock().unwrap().clone();
    assert_eq!(offsets.len(), 2, "{offsets:?}");
    assert_eq!(offsets[0], 0);
    // The second try asked only for what had not arrived.
    assert!(
        offsets[1] > 0 && offsets[1] < bytes.len() as u64,
        "{offsets:?}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_download_resumes_from_a_partial_file_and_checks_the_whole_hash() {
    let bytes = pseudo_random_bytes(5 << 20, 3);
    let (store, directory, digest) = store_with(&bytes);
    let source = tripwire(store, u64::MAX);
    let (server, client) = pair(source.clone());
    let target = directory.path().join("partial");
    let prefix = 2 << 20;
    std::fs::write(&target, &bytes[..prefix]).unwrap();

    let done = client
        .transport
        .download_blob(server.id(), digest, bytes.len() as u64, &target)
        .await
        .unwrap();
    assert_eq!(done.resumed_from_bytes, prefix as u64);
    assert_eq!(done.received_bytes, (bytes.len() - prefix) as u64);
    assert_eq!(done.attempts, 1);
    assert_eq!(source.offsets.lock().unwrap().clone(), vec![prefix as u64]);
    assert_eq!(std::fs::read(&target).unwrap(), bytes);

    // Already complete: nothing is fetched, the hash is still checked.
    let again = client
        .transport
        .download_blob(server.id(), digest, bytes.len() as u64, &target)
        .await
        .unwrap();
    assert_eq!((again.attempts, again.received_bytes), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_download_whose_bytes_do_not_match_the_digest_fails_and_is_removed() {
    let bytes = pseudo_random_bytes(1 << 20, 4);
    let (store, directory, digest) = store_with(&bytes);
    let (server, client) = pair(Arc::new(store));
    let target = directory.path().join("corrupt");
    // A partial file whose first bytes are wrong: the rest arrives intact, the whole hash does not match.
    let mut wrong = bytes[..4096].to_vec();
    wrong[0] ^= 1;
    std::fs::write(&target, &wrong).unwrap();
    let result = client
        .transport
        .download_blob(server.id(), digest, bytes.len() as u64, &target)
        .await;
    assert!(
        matches!(result, Err(DownloadError::DigestMismatch)),
        "{result:?}"
    );
    assert!(!target.exists());

    // A blob whose size differs from what the caller expects is not retried either.
    let result = client
        .transport
        .download_blob(server.id(), digest, bytes.len() as u64 - 1, &target)
        .await;
    assert!(
        matches!(result, Err(DownloadError::Fetch(FetchError::SizeMismatch { actual_bytes, .. })) if actual_bytes == bytes.len() as u64),
        "{result:?}"
    );

    // A blob the server does not hold is not retried.
    let missing = Digest::from_bytes([3; 32]);
    let result = client
        .transport
        .download_blob(server.id(), missing, 10, &target)
        .await;
    assert!(
        matches!(
            result,
            Err(DownloadError::Fetch(FetchError::Refused(
                BlobRefusal::NotFound
            )))
        ),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_one_source_serves_several_downloads_at_once() {
    let bytes = pseudo_random_bytes(4 << 20, 5);
    let (store, directory, digest) = store_with(&bytes);
    let ca = ClusterCa::create().unwrap();
    let members = Members::of(&[1, 2, 3, 4]);
    let server = start(
        &ca.issue_identity(NodeId(1)).unwrap(),
        &members,
        Arc::new(store),
        None,
    );
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for id in 2..=4 {
        let client = start_plain(&ca.issue_identity(NodeId(id)).unwrap(), &members);
        introduce(&client, &server);
        let target = directory.path().join(format!("copy-{id}"));
        let received = received.clone();
        let size = bytes.len() as u64;
        tasks.push(tokio::spawn(async move {
            let done = client
                .transport
                .download_blob(NodeId(1), digest, size, &target)
                .await
                .unwrap();
            received.fetch_add(done.received_bytes, Ordering::SeqCst);
            std::fs::read(&target).unwrap()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), bytes);
    }
    assert_eq!(received.load(Ordering::SeqCst), 3 * bytes.len() as u64);
}
