//! A node started on a socket of the caller's (`Transport::with_socket`, the path the simulator takes with its
//! own UDP): all its traffic goes through that socket, and it talks to a node on tokio's socket.

mod t10_transport_support;

use ollamamax_core::ids::NodeId;
use ollamamax_io::cluster::ClusterCa;
use ollamamax_io::transport::{NoBlobs, NoStreams, Request, Response, Services, Transport, config};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use t10_transport_support::{Echo, Members, start_plain};

/// Delegates to a real socket and counts datagrams both ways.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn AsyncUdpSocket>,
    sent: AtomicU64,
    received: AtomicU64,
}

impl AsyncUdpSocket for Counting {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> std::io::Result<()> {
        self.inner.try_send(transmit)?;
        self.sent.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        let poll = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(count)) = &poll {
            self.received.fetch_add(*count as u64, Ordering::SeqCst);
        }
        poll
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_node_on_a_caller_supplied_socket_talks_to_the_cluster() {
    let ca = ClusterCa::create().unwrap();
    let members = Members::of(&[1, 2]);
    let one = start_plain(&ca.issue_identity(NodeId(1)).unwrap(), &members);

    let runtime = quinn::default_runtime().unwrap();
    let udp = config::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    let inner = config::wrap_udp(&runtime, udp).unwrap();
    let socket = Arc::new(Counting {
        inner,
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
    });
    let services = Services {
        handler: Arc::new(Echo::default()),
        blobs: Arc::new(NoBlobs),
        streams: Arc::new(NoStreams),
        membership: members.predicate(),
        join: None,
    };
    let identity = ca.issue_identity(NodeId(2)).unwrap();
    let two = Transport::with_socket(socket.clone(), runtime, &identity, services, Some([7; 32]))
        .unwrap();
    two.set_address(NodeId(1), one.address).unwrap();
    one.transport
        .set_address(NodeId(2), two.local_addr().unwrap())
        .unwrap();

    assert_eq!(
        two.request(NodeId(1), Request::Ping { nonce: 1 })
            .await
            .unwrap(),
        Response::Pong { nonce: 1 }
    );
    assert_eq!(
        one.transport
            .request(NodeId(2), Request::Ping { nonce: 2 })
            .await
            .unwrap(),
        Response::Pong { nonce: 2 }
    );
    assert!(socket.sent.load(Ordering::SeqCst) > 0);
    assert!(socket.received.load(Ordering::SeqCst) > 0);
}
