//! Peer messages: arbitrary bytes read as one frame (length, version, postcard body) of each message type a
//! node reads from a peer's stream, and as each cluster-control message inside a `Request::Control`. Reading
//! never panics or allocates beyond the frame limit, and whatever decodes encodes to a frame that decodes and
//! encodes to the same bytes again.
//!
//! The committed seeds are real frames: `OLLAMAMAX_FUZZ_SEEDS_OUT=fuzz/seeds/peer_message cargo fuzz run
//! peer_message -- -runs=0` writes them again (see [`emit_seeds`]).
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use ollamamax_core::cluster_state::Command;
use ollamamax_core::{Digest, NodeId};
use ollamamax_io::transport::frame::{self, FRAME_BYTES_MAX};
use ollamamax_io::transport::message::{BlobHeader, OpenReply, ReplyItem, StreamHead};
use ollamamax_io::transport::{
    BlobRange, BlobRefusal, RemoteError, RemoteErrorKind, Request, Response,
};
use ollamamax_server::cluster::health::Load;
use ollamamax_server::cluster::rpc::{self, Control, ControlReply};
use ollamamax_server::node::requests::{RequestReport, Stage};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A limit small enough that announced lengths over it are common in the corpus.
const LIMIT: u32 = 64 << 10;

thread_local! {
    static RUNTIME: RefCell<tokio::runtime::Runtime> = RefCell::new(
        tokio::runtime::Builder::new_current_thread().build().expect("a runtime"),
    );
}

fn read<T: DeserializeOwned>(mut bytes: &[u8]) -> Option<T> {
    RUNTIME.with(|runtime| {
        runtime
            .borrow()
            .block_on(frame::read_frame::<T, _>(&mut bytes, LIMIT))
            .ok()
    })
}

fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) {
    let Some(message) = read::<T>(data) else {
        return;
    };
    let encoded = frame::encode(&message, FRAME_BYTES_MAX).expect("a decoded message encodes");
    assert!(
        encoded.len() <= data.len(),
        "encoding grew: {} > {}",
        encoded.len(),
        data.len()
    );
    let again: T = read(&encoded).expect("an encoded message decodes");
    assert_eq!(frame::encode(&again, FRAME_BYTES_MAX).ok(), Some(encoded));
}

/// Writes a frame of each message kind into the folder named by `OLLAMAMAX_FUZZ_SEEDS_OUT`, if set.
fn emit_seeds() {
    let Some(folder) = std::env::var_os("OLLAMAMAX_FUZZ_SEEDS_OUT") else {
        return;
    };
    let folder = std::path::PathBuf::from(folder);
    std::fs::create_dir_all(&folder).expect("the seed folder");
    let digest = Digest::from_bytes([7; 32]);
    let frames = [
        frame::encode(&StreamHead::Call(Request::Ping { nonce: 7 }), LIMIT),
        frame::encode(&StreamHead::Call(Request::Raft(vec![1, 0, 3])), LIMIT),
        frame::encode(
            &StreamHead::Call(Request::Control(rpc::encode(ControlReply::Done))),
            LIMIT,
        ),
        frame::encode(
            &StreamHead::FetchBlob(BlobRange {
                digest,
                offset: 0,
                length: 1 << 20,
            }),
            LIMIT,
        ),
        frame::encode(
            &StreamHead::Open {
                head: vec![0, 1, 2],
                body_bytes: 512,
            },
            LIMIT,
        ),
        frame::encode(&Response::Pong { nonce: 7 }, LIMIT),
        frame::encode(
            &Response::Error(RemoteError::new(RemoteErrorKind::BadRequest, "malformed")),
            LIMIT,
        ),
        frame::encode(&OpenReply::Opened { head: vec![9] }, LIMIT),
        frame::encode(&ReplyItem::Chunk { bytes: 4096 }, LIMIT),
        frame::encode(&ReplyItem::Failed("the model failed".into()), LIMIT),
        frame::encode(
            &BlobHeader::Sending {
                blob_bytes: 1 << 30,
            },
            LIMIT,
        ),
        frame::encode(
            &BlobHeader::Refused(BlobRefusal::OutOfRange { blob_bytes: 3 }),
            LIMIT,
        ),
    ];
    for (index, bytes) in frames.into_iter().enumerate() {
        let path = folder.join(format!("frame-{index}"));
        std::fs::write(path, bytes.expect("a real message encodes")).expect("a seed file");
    }
    let load = Load {
        running: 1,
        queued: 2,
        slots: 4,
        loaded: vec!["smollm2:latest".into()],
        requests: vec![RequestReport {
            id: "5f2c9a1e0b7d4e33".into(),
            model: "smollm2:latest".into(),
            accepted_by: Some(2),
            stage: Stage::Generating,
            tokens: 42,
            decode_ms: 900,
            age_ms: 1500,
        }],
        requests_total: 1,
    };
    let controls = [
        rpc::encode(Control::Heartbeat(load.clone())),
        rpc::encode(Control::Replicate {
            digest,
            size: 10,
            source: NodeId(1),
            chain: vec![NodeId(2), NodeId(3)],
        }),
        rpc::encode(Control::Propose(Command::SetReplication { factor: 2 })),
        rpc::encode(ControlReply::Heartbeat(load)),
        rpc::encode(ControlReply::Refused("not the leader".into())),
    ];
    for (index, bytes) in controls.into_iter().enumerate() {
        std::fs::write(folder.join(format!("control-{index}")), bytes).expect("a seed file");
    }
}

fn control_round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) {
    let Ok(message) = rpc::decode::<T>(data) else {
        return;
    };
    let encoded = rpc::encode(&message);
    let again: T = rpc::decode(&encoded).expect("an encoded control message decodes");
    assert_eq!(rpc::encode(&again), encoded);
}

fuzz_target!(init: emit_seeds(), |data: &[u8]| {
    round_trip::<StreamHead>(data);
    round_trip::<Request>(data);
    round_trip::<Response>(data);
    round_trip::<OpenReply>(data);
    round_trip::<ReplyItem>(data);
    round_trip::<BlobHeader>(data);
    control_round_trip::<Control>(data);
    control_round_trip::<ControlReply>(data);
});
