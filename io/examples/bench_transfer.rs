//! Blob transfer throughput over the cluster transport on loopback: one ~98 MB blob from one node to 1 peer and
//! to 4 peers at once, each receiver writing the file and checking its SHA-256 before the transfer counts as done.
//! Prints every run and the medians; no assertions (timings live in benches, never in tests).
//!
//! ```text
//! cargo run --release -p ollamamax-io --example bench_transfer -- [--runs N] [--file PATH] [--peers 1,4] [--dir D]
//! ```
//! Received files are written under `--dir` (default /dev/shm when present, so disk writeback does not blur the
//! transport's figure; pass a disk folder to include it).
//! Without `--file`, it uses the SmolLM2 model cached by `scripts/fetch-model.sh` when present, else a generated
//! 98 MB file of pseudo-random bytes. Targets: median >= 450 MB/s to 1 peer, >= 650 MB/s aggregate to 4.

use ollamamax_core::digest::Digest;
use ollamamax_core::ids::NodeId;
use ollamamax_io::cluster::ClusterCa;
use ollamamax_io::store::Store;
use ollamamax_io::transport::{
    Handler, NoBlobs, NoStreams, Request, Response, Services, Transport,
};
use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const GENERATED_BYTES: usize = 98_362_432;
const MODEL: &str = ".cache/ollamamax/SmolLM2-135M-Instruct.Q4_1.gguf";

struct Pong;

impl Handler for Pong {
    async fn handle(&self, _peer: NodeId, request: Request) -> Response {
        match request {
            Request::Ping { nonce } => Response::Pong { nonce },
            Request::Raft(bytes) => Response::Raft(bytes),
            Request::Control(bytes) => Response::Control(bytes),
        }
    }
}

struct Options {
    runs: usize,
    file: Option<PathBuf>,
    peers: Vec<u64>,
    directory: Option<PathBuf>,
}

fn options() -> Options {
    let mut options = Options {
        runs: 7,
        file: None,
        peers: vec![1, 4],
        directory: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--runs" => options.runs = value.parse().expect("--runs takes a number"),
            "--file" => options.file = Some(PathBuf::from(value)),
            "--dir" => options.directory = Some(PathBuf::from(value)),
            "--peers" => {
                options.peers = value
                    .split(',')
                    .map(|n| n.parse().expect("--peers takes 1,4"))
                    .collect()
            }
            other => panic!("unknown flag {other}"),
        }
    }
    options
}

/// The blob to send: copied (or generated) into the source node's store. Returns its digest and size.
fn prepare_blob(options: &Options, store: &Store, scratch: &Path) -> (Digest, u64) {
    let model = std::env::var_os("HOME").map(|home| Path::new(&home).join(MODEL));
    let source = options.file.clone().or(model.filter(|path| path.exists()));
    let bytes = match &source {
        Some(path) => {
            println!(
                "blob: {}",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            std::fs::read(path).expect("read the blob file")
        }
        None => {
            println!("blob: {GENERATED_BYTES} generated pseudo-random bytes");
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            let mut bytes = Vec::with_capacity(GENERATED_BYTES + 8);
            while bytes.len() < GENERATED_BYTES {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.extend_from_slice(&state.to_le_bytes());
            }
            bytes.truncate(GENERATED_BYTES);
            bytes
        }
    };
    let started = Instant::now();
    let digest = Digest::from_bytes(Sha256::digest(&bytes).into());
    let hash_seconds = started.elapsed().as_secs_f64();
    println!(
        "sha256 of {} bytes in memory: {:.0} MB/s (one core)",
        bytes.len(),
        bytes.len() as f64 / hash_seconds / 1e6
    );
    std::fs::write(store.blob_path(&digest), &bytes).expect("write the blob");
    let _ = scratch;
    (digest, bytes.len() as u64)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

fn start(
    ca: &ClusterCa,
    id: u64,
    blobs: Arc<dyn ollamamax_io::transport::BlobSource>,
) -> Transport {
    let services = Services {
        handler: Arc::new(Pong),
        blobs,
        streams: Arc::new(NoStreams),
        membership: Arc::new(|_| true),
        join: None,
    };
    let identity = ca.issue_identity(NodeId(id)).expect("identity");
    Transport::bind("127.0.0.1:0".parse().unwrap(), &identity, services).expect("bind")
}

async fn run(options: Options) {
    // Files go to the given folder, else to /dev/shm when there is one: the figure is the transport's (network,
    // crypto, hashing), not the disk's writeback.
    let parent = options.directory.clone().unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        }
    });
    let scratch = tempfile::tempdir_in(&parent).expect("temporary directory");
    println!("files in {}", parent.display());
    let store = Store::open(scratch.path().join("models")).expect("store");
    let (digest, blob_bytes) = prepare_blob(&options, &store, scratch.path());
    // Read the blob once so every run starts from the page cache.
    let mut warm = Vec::new();
    std::fs::File::open(store.blob_path(&digest))
        .unwrap()
        .read_to_end(&mut warm)
        .unwrap();
    drop(warm);

    let ca = ClusterCa::create().expect("CA");
    let source = start(&ca, 1, Arc::new(store));
    let source_address = source.local_addr().unwrap();
    for &peers in &options.peers {
        let clients: Vec<Transport> = (0..peers)
            .map(|index| start(&ca, 100 + index, Arc::new(NoBlobs)))
            .collect();
        for client in &clients {
            client.set_address(NodeId(1), source_address).unwrap();
            client
                .request(NodeId(1), Request::Ping { nonce: 0 })
                .await
                .expect("ping");
        }
        let mut rates = Vec::new();
        // One warm-up run, not counted.
        for run in 0..=options.runs {
            let targets: Vec<PathBuf> = (0..peers)
                .map(|index| scratch.path().join(format!("copy-{peers}-{index}")))
                .collect();
            for target in &targets {
                let _ = std::fs::remove_file(target);
            }
            let started = Instant::now();
            let mut tasks = Vec::new();
            for (client, target) in clients.iter().zip(targets.clone()) {
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    client
                        .download_blob(NodeId(1), digest, blob_bytes, &target)
                        .await
                }));
            }
            for task in tasks {
                task.await.unwrap().expect("download");
            }
            let seconds = started.elapsed().as_secs_f64();
            let rate = (blob_bytes * peers) as f64 / seconds / 1e6;
            if run == 0 {
                println!("{peers} peer(s): warm-up {rate:.0} MB/s");
                continue;
            }
            println!(
                "{peers} peer(s): run {run}: {:.3} s, {rate:.0} MB/s aggregate",
                seconds
            );
            rates.push(rate);
        }
        if let Some(stats) = clients[0].connection_stats(NodeId(1)) {
            // The receiving side's view: its path MTU and RTT (the sender's congestion window is not visible here).
            println!(
                "{peers} peer(s): path MTU {} bytes, RTT {} us, lost packets {}",
                stats.path.current_mtu,
                stats.path.rtt.as_micros(),
                stats.path.lost_packets
            );
        }
        let median = median(&mut rates);
        println!(
            "{peers} peer(s): median {median:.0} MB/s aggregate over {} runs (hash verified)",
            rates.len()
        );
        for client in clients {
            client.shutdown().await;
        }
    }
    source.shutdown().await;
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(options));
}
