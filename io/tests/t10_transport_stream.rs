//! Streaming calls between nodes: heads and chunks arrive in order and end cleanly; a large reply arrives intact;
//! a failed body, a node shut down mid-stream and a reset are errors, never a clean end; a caller that drops its
//! reply cancels the handler's work; refusals and oversized bodies give clear errors.

mod t10_transport_support;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, stream};
use ollamamax_core::ids::NodeId;
use ollamamax_io::cluster::{ClusterCa, close};
use ollamamax_io::transport::{
    FRAME_BYTES_MAX, NoStreams, OpenError, RemoteError, RemoteErrorKind, ReplyBody, ReplyStream,
    STREAM_BODY_BYTES_MAX, STREAM_CHUNK_BYTES_MAX, StreamError, StreamHandler, frame,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use t10_transport_support::{
    Members, Node, client_endpoint, introduce, pseudo_random_bytes, raw_client_config, raw_connect,
    start_plain, start_streaming,
};

/// A hang guard for waits that must end (not a timing assertion: far above any expected duration).
const HANG_GUARD: Duration = Duration::from_secs(20);

type Opened = Result<(Vec<u8>, ReplyBody), RemoteError>;

/// A stream handler made of a function; counts the calls that reached it.
struct Streams<F> {
    open: F,
    calls: AtomicU32,
}

impl<F> StreamHandler for Streams<F>
where
    F: Fn(Vec<u8>, Bytes) -> Opened + Send + Sync + 'static,
{
    fn open(&self, _peer: NodeId, head: Vec<u8>, body: Bytes) -> BoxFuture<'static, Opened> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready((self.open)(head, body)).boxed()
    }
}

fn streams<F>(open: F) -> Arc<Streams<F>>
where
    F: Fn(Vec<u8>, Bytes) -> Opened + Send + Sync + 'static,
{
    Arc::new(Streams {
        open,
        calls: AtomicU32::new(0),
    })
}

/// A server (node 1) serving `handler`, and a client (node 2) that knows where it is.
fn pair(handler: Arc<dyn StreamHandler>) -> (Node, Node) {
    let ca = ClusterCa::create().unwrap();
    let members = Members::of(&[1, 2]);
    let server = start_streaming(&ca.issue_identity(NodeId(1)).unwrap(), &members, handler);
    let client = start_plain(&ca.issue_identity(NodeId(2)).unwrap(), &members);
    introduce(&client, &server);
    (server, client)
}

/// `count` chunks `chunk-<n>`, one every `pause`, then `last` (if any).
fn paced_chunks(count: u32, pause: Duration, last: Option<String>) -> ReplyBody {
    let chunks = stream::iter(0..count).then(move |index| async move {
        tokio::time::sleep(pause).await;
        Ok(Bytes::from(format!("chunk-{index}")))
    });
    chunks.chain(stream::iter(last.map(Err))).boxed()
}

/// Read until the reply ends: the chunks, and how it ended.
async fn read_all(reply: &mut ReplyStream) -> (Vec<Bytes>, Result<(), StreamError>) {
    let mut chunks = Vec::new();
    loop {
        match reply.next_chunk().await {
            Ok(Some(chunk)) => chunks.push(chunk),
            Ok(None) => return (chunks, Ok(())),
            Err(error) => return (chunks, Err(error)),
        }
    }
}

fn expected_chunks(count: u32) -> Vec<Bytes> {
    (0..count)
        .map(|index| Bytes::from(format!("chunk-{index}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_heads_and_chunks_arrive_in_order_then_a_clean_end() {
    let handler = streams(|head, body| {
        // The reply head echoes the request head and body, so both are seen to arrive.
        let mut reply = head;
        reply.extend_from_slice(&body);
        Ok((reply, paced_chunks(20, Duration::from_millis(5), None)))
    });
    let (server, client) = pair(handler.clone());
    for attempt in 0..3u8 {
        let (head, mut reply) = client
            .transport
            .open_stream(server.id(), vec![attempt, 1], Bytes::from_static(b"body"))
            .await
            .unwrap();
        assert_eq!(head, [&[attempt, 1][..], b"body"].concat());
        let (chunks, end) = read_all(&mut reply).await;
        assert_eq!(chunks, expected_chunks(20));
        end.unwrap();
        // A finished reply stays finished.
        assert!(reply.next_chunk().await.unwrap().is_none());
    }
    assert_eq!(handler.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_redial_leaves_the_streams_under_way_to_finish() {
    let handler = streams(|_head, _body| {
        Ok((
            Vec::new(),
            paced_chunks(10, Duration::from_millis(20), None),
        ))
    });
    let (server, client) = pair(handler.clone());
    let (_head, mut first) = client
        .transport
        .open_stream(server.id(), Vec::new(), Bytes::new())
        .await
        .unwrap();
    assert!(first.next_chunk().await.unwrap().is_some());
    // What Raft does after a failed call: new calls get a new connection, the one under way keeps its own.
    client.transport.redial(server.id());
    let (_head, mut second) = client
        .transport
        .open_stream(server.id(), Vec::new(), Bytes::new())
        .await
        .unwrap();
    let (rest, end) = tokio::time::timeout(HANG_GUARD, read_all(&mut first))
        .await
        .unwrap();
    end.unwrap();
    assert_eq!(rest, expected_chunks(10)[1..]);
    let (all, end) = read_all(&mut second).await;
    end.unwrap();
    assert_eq!(all, expected_chunks(10));
    assert_eq!(handler.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_call_on_a_connection_the_peer_dropped_is_tried_once_on_a_new_one() {
    let handler = streams(|_head, _body| Ok((b"ok".to_vec(), stream::empty().boxed())));
    let (server, client) = pair(handler.clone());
    for round in 0..5 {
        let (head, mut reply) = client
            .transport
            .open_stream(server.id(), Vec::new(), Bytes::new())
            .await
            .unwrap_or_else(|error| panic!("round {round}: {error}"));
        assert_eq!(head, b"ok");
        read_all(&mut reply).await.1.unwrap();
        // The serving side drops every connection (as a restarted peer has none): the pooled one is dead, and
        // the caller may not know yet. The next call still answers, at the first try.
        server.transport.disconnect(client.id());
    }
    assert_eq!(handler.calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_large_reply_arrives_intact_in_bounded_chunks() {
    const CHUNK: usize = 64 << 10;
    let bytes = Bytes::from(pseudo_random_bytes(40 << 20, 3));
    // One chunk far over the wire's chunk size: the serving side splits it.
    let tail = Bytes::from(pseudo_random_bytes(3 << 20, 4));
    let expected = Sha256::new()
        .chain_update(&bytes)
        .chain_update(&tail)
        .finalize();
    let handler = streams(move |_head, _body| {
        let pieces: Vec<_> = (0..bytes.len())
            .step_by(CHUNK)
            .map(|start| Ok(bytes.slice(start..bytes.len().min(start + CHUNK))))
            .chain([Ok(tail.clone())])
            .collect();
        Ok((Vec::new(), stream::iter(pieces).boxed()))
    });
    let (server, client) = pair(handler);
    let (_head, mut reply) = client
        .transport
        .open_stream(server.id(), Vec::new(), Bytes::new())
        .await
        .unwrap();
    let mut hasher = Sha256::new();
    let mut received = 0usize;
    while let Some(chunk) = reply.next_chunk().await.unwrap() {
        assert!(!chunk.is_empty() && chunk.len() <= STREAM_CHUNK_BYTES_MAX as usize);
        received += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(received, (40 << 20) + (3 << 20));
    assert_eq!(hasher.finalize(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_body_that_fails_midway_is_an_error_after_its_chunks() {
    let handler = streams(|_head, _body| {
        let failure = Some("the model crashed".to_string());
        Ok((
            b"ok".to_vec(),
            paced_chunks(3, Duration::from_millis(2), failure),
        ))
    });
    let (server, client) = pair(handler);
    let (_head, mut reply) = client
        .transport
        .open_stream(server.id(), Vec::new(), Bytes::new())
        .await
        .unwrap();
    let (chunks, end) = read_all(&mut reply).await;
    assert_eq!(chunks, expected_chunks(3));
    assert!(
        matches!(&end, Err(StreamError::Failed(text)) if text == "the model crashed"),
        "{end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_body_that_panics_midway_is_an_error_not_a_clean_end() {
    // The serving task dies with the body; quinn finishes the dropped stream, without the end marker.
    let handler = streams(|_head, _body| {
        let chunks = paced_chunks(2, Duration::from_millis(2), None);
        let panics = stream::once(async { panic!("handler body panics on purpose") });
        Ok((Vec::new(), chunks.chain(panics).boxed()))
    });
    let (server, client) = pair(handler);
    let (_head, mut reply) = client
        .transport
        .open_stream(server.id(), Vec::new(), Bytes::new())
        .await
        .unwrap();
    let (chunks, end) = read_all(&mut reply).await;
    assert_eq!(chunks, expected_chunks(2));
    assert!(matches!(end, Err(StreamError::Truncated)), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_node_shut_down_midstream_is_an_error_not_a_clean_end() {
    // Chunks keep coming until the node goes away; the body never ends by itself.
    let handler = streams(|_head, _body| {
        Ok((
            Vec::new(),
            paced_chunks(u32::MAX, Duration::from_millis(5), None),
        ))
    });
    let (server, client) = pair(handler);
    let (_head, mut reply) = client
        .transport
        .open_stream(server.id(), Vec::new(), Bytes::new())
        .await
        .unwrap();
    for expected in expected_chunks(3) {
        assert_eq!(reply.next_chunk().await.unwrap(), Some(expected));
    }
    server.transport.shutdown().await;
    let (chunks, end) = tokio::time::timeout(HANG_GUARD, read_all(&mut reply))
        .await
        .unwrap();
    // Whatever was in flight arrives in order; then the connection's close, with the node's code.
    assert_eq!(chunks, expected_chunks(3 + chunks.len() as u32)[3..]);
    match end {
        Err(StreamError::Connection(quinn::ConnectionError::ApplicationClosed(reason))) => {
            assert_eq!(reason.error_code.into_inner(), u64::from(close::NORMAL));
        }
        other => panic!("expected the connection's close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_connection_closed_midstream_is_an_error_not_a_clean_end() {
    let handler = streams(|_head, _body| Ok((Vec::new(), stream::pending().boxed())));
    let (server, client) = pair(handler);
    let (_head, mut reply) = client
        .transport
        .open_stream(server.id(), Vec::new(), Bytes::new())
        .await
        .unwrap();
    server.transport.disconnect(client.id());
    let end = tokio::time::timeout(HANG_GUARD, reply.next_chunk())
        .await
        .unwrap();
    assert!(matches!(end, Err(StreamError::Connection(_))), "{end:?}");
}

/// Signals when dropped: the handler's body holds one, so the test sees the body dropped.
struct DropGuard(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(signal) = self.0.take() {
            let _ = signal.send(());
        }
    }
}

/// Where a guarded handler leaves the receiver of its body's [`DropGuard`].
type DroppedSignal = Arc<Mutex<Option<tokio::sync::oneshot::Receiver<()>>>>;

/// A handler whose body yields one chunk, then either pauses forever or streams without end; it holds a
/// [`DropGuard`] whose receiver the test takes from the returned slot.
fn guarded(pause_forever: bool) -> (Arc<dyn StreamHandler>, DroppedSignal) {
    let dropped = Arc::new(Mutex::new(None));
    let slot = dropped.clone();
    let handler = streams(move |_head, _body| {
        let (signal, receiver) = tokio::sync::oneshot::channel();
        *slot.lock().unwrap() = Some(receiver);
        let guard = DropGuard(Some(signal));
        let first = stream::iter([Ok(Bytes::from_static(b"first"))]);
        let rest = if pause_forever {
            stream::pending().boxed()
        } else {
            // Faster than the caller reads: the server ends up blocked on flow control.
            stream::repeat_with(|| Ok(Bytes::from(vec![7u8; 64 << 10]))).boxed()
        };
        let body = first.chain(rest).map(move |item| {
            let _hold = &guard;
            item
        });
        Ok((Vec::new(), body.boxed()))
    });
    (handler, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_caller_dropping_its_reply_cancels_the_handlers_body() {
    for pause_forever in [true, false] {
        let (handler, dropped) = guarded(pause_forever);
        let (server, client) = pair(handler);
        let (_head, mut reply) = client
            .transport
            .open_stream(server.id(), Vec::new(), Bytes::new())
            .await
            .unwrap();
        assert_eq!(
            reply.next_chunk().await.unwrap(),
            Some(Bytes::from_static(b"first"))
        );
        let receiver = dropped.lock().unwrap().take().unwrap();
        drop(reply);
        // The body is dropped (its guard signals), not merely left behind: a send error would mean the same.
        tokio::time::timeout(HANG_GUARD, receiver)
            .await
            .unwrap_or_else(|_| panic!("body not dropped (pause_forever: {pause_forever})"))
            .unwrap();
        // The connection is still good for further calls.
        let (_head, mut again) = client
            .transport
            .open_stream(server.id(), Vec::new(), Bytes::new())
            .await
            .unwrap();
        assert!(again.next_chunk().await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_refused_open_gives_the_remote_error() {
    let (server, client) = pair(Arc::new(NoStreams));
    let error = client
        .transport
        .open_stream(server.id(), b"head".to_vec(), Bytes::from_static(b"body"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            OpenError::Refused(RemoteError {
                kind: RemoteErrorKind::Unavailable,
                ..
            })
        ),
        "{error:?}"
    );

    let handler = streams(|head, _body| {
        Err(RemoteError::new(
            RemoteErrorKind::BadRequest,
            format!("no model {}", String::from_utf8_lossy(&head)),
        ))
    });
    let (server, client) = pair(handler);
    let error = client
        .transport
        .open_stream(server.id(), b"llama".to_vec(), Bytes::new())
        .await
        .unwrap_err();
    match error {
        OpenError::Refused(refusal) => {
            assert_eq!(refusal.kind, RemoteErrorKind::BadRequest);
            assert_eq!(refusal.message, "no model llama");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_bodies_up_to_the_limit_arrive_and_larger_ones_are_refused() {
    let handler = streams(|_head, body| {
        let digest = Sha256::digest(&body).to_vec();
        Ok((digest, stream::empty().boxed()))
    });
    let (server, client) = pair(handler.clone());
    // Larger than a frame: the body travels after the head frame.
    let big = Bytes::from(pseudo_random_bytes(FRAME_BYTES_MAX as usize + (1 << 20), 5));
    let (head, mut reply) = client
        .transport
        .open_stream(server.id(), Vec::new(), big.clone())
        .await
        .unwrap();
    assert_eq!(head, Sha256::digest(&big).to_vec());
    assert!(reply.next_chunk().await.unwrap().is_none());

    let over = Bytes::from(vec![0u8; STREAM_BODY_BYTES_MAX as usize + 1]);
    let error = client
        .transport
        .open_stream(server.id(), Vec::new(), over)
        .await
        .unwrap_err();
    assert!(
        matches!(error, OpenError::BodyTooLarge { bytes, limit } if bytes == u64::from(limit) + 1),
        "{error:?}"
    );
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
}

/// The wire's stream head, as a peer that does not use [`ollamamax_io::transport::Transport`] writes it: the
/// variants before `Open` only hold its place.
#[derive(Serialize)]
#[allow(dead_code)]
enum RawHead {
    Call(()),
    FetchBlob(()),
    Open { head: Vec<u8>, body_bytes: u64 },
}

/// The wire's reply head, as such a peer reads it.
#[derive(Debug, Deserialize)]
enum RawReply {
    Opened { head: Vec<u8> },
    Refused(RemoteError),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_peer_announcing_a_huge_body_is_refused_before_it_is_read() {
    let handler = streams(|_head, _body| Ok((Vec::new(), stream::empty().boxed())));
    let ca = ClusterCa::create().unwrap();
    let server = start_streaming(
        &ca.issue_identity(NodeId(1)).unwrap(),
        &Members::of(&[1, 2]),
        handler.clone(),
    );
    let endpoint = client_endpoint();
    let identity = ca.issue_identity(NodeId(2)).unwrap();
    let connection = raw_connect(&endpoint, raw_client_config(&ca, Some(&identity)), &server)
        .await
        .unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    // A terabyte announced, none of it sent: the node answers without waiting for (or allocating) the body.
    let head = RawHead::Open {
        head: Vec::new(),
        body_bytes: 1 << 40,
    };
    send.write_all(&frame::encode(&head, FRAME_BYTES_MAX).unwrap())
        .await
        .unwrap();
    let reply: RawReply =
        tokio::time::timeout(HANG_GUARD, frame::read_frame(&mut recv, FRAME_BYTES_MAX))
            .await
            .unwrap()
            .unwrap();
    match reply {
        RawReply::Refused(refusal) => {
            assert_eq!(refusal.kind, RemoteErrorKind::BadRequest);
            assert!(
                refusal.message.contains("over the limit"),
                "{}",
                refusal.message
            );
        }
        RawReply::Opened { head } => panic!("opened with head {head:?}"),
    }
    // The node stopped the body it will not read.
    let stopped = tokio::time::timeout(HANG_GUARD, send.stopped())
        .await
        .unwrap();
    assert_eq!(stopped.unwrap(), Some(close::PROTOCOL.into()));
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
}
