//! quinn over turmoil's simulated UDP: an [`AsyncUdpSocket`] around [`turmoil::net::UdpSocket`], and the
//! [`SocketProvider`] a simulated node binds its cluster sockets with.
//!
//! turmoil's socket has no `poll_recv`; the adapter keeps one boxed `readable()` future and polls it to register
//! the waker, then takes datagrams with `try_recv_from`. turmoil sockets never push back on sends, so the poller
//! is always writable. One datagram per call each way (no GSO/GRO), no ECN.
//!
//! A crashed node's objects are not all dropped with its runtime: the node holds itself in reference cycles
//! (its cluster part, router and RPC handler point at each other), which a real crash ends with the process.
//! So the sockets a node bound are kept in a [`SocketRegistry`] and closed by force before it restarts, which
//! frees their ports for the new incarnation.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::FutureExt;
use ollamamax_io::transport::{BoundSocket, SocketProvider};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

type Readable = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

thread_local! {
    /// Datagrams and bytes sent on this thread's simulated sockets (the simulation runs on one thread).
    static SENT: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Datagrams and bytes sent through simulated sockets on this thread since the last reset; the trace records
/// them, so a run whose packets differ (in number or size) from another run of its seed shows where.
pub fn take_sent() -> (u64, u64) {
    SENT.replace((0, 0))
}

/// Seeded datagram loss (turmoil loses no single message: its `fail_rate` partitions whole links): datagrams
/// from or to a lossy address are dropped with its probability. Only QUIC goes over these sockets, so only the
/// cluster's traffic is lossy, and quinn's retransmissions are what is under test.
#[derive(Debug, Default)]
struct Loss {
    /// Dropped datagrams in 1000, per address.
    per_mille: std::collections::BTreeMap<std::net::IpAddr, u32>,
    /// splitmix64 state of the drop decisions (the simulation runs on one thread, so they replay).
    state: u64,
}

thread_local! {
    static LOSS: std::cell::RefCell<Loss> = std::cell::RefCell::new(Loss::default());
}

/// Start a run's loss decisions from `seed`, with no lossy address.
pub fn reset_loss(seed: u64) {
    LOSS.set(Loss {
        per_mille: Default::default(),
        state: seed,
    });
}

/// Drop `per_mille` datagrams in 1000 from or to `address` (0: none).
pub fn set_loss(address: std::net::IpAddr, per_mille: u32) {
    LOSS.with_borrow_mut(|loss| {
        if per_mille == 0 {
            loss.per_mille.remove(&address);
        } else {
            loss.per_mille.insert(address, per_mille);
        }
    });
}

/// Whether a datagram from `from` to `to` is lost.
fn lost(from: std::net::IpAddr, to: std::net::IpAddr) -> bool {
    LOSS.with_borrow_mut(|loss| {
        let rate = [from, to]
            .iter()
            .filter_map(|address| loss.per_mille.get(address))
            .max()
            .copied()
            .unwrap_or(0);
        rate > 0 && super::mix(loss.next()) % 1000 < u64::from(rate)
    })
}

impl Loss {
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.state
    }
}

/// A turmoil UDP socket as quinn sees it.
pub struct TurmoilUdp {
    /// `None` once closed: sends vanish and receives wait forever.
    socket: Mutex<Option<Arc<turmoil::net::UdpSocket>>>,
    /// The pending wait for a datagram, kept across polls so its waker stays registered.
    readable: Mutex<Option<Readable>>,
}

impl fmt::Debug for TurmoilUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurmoilUdp").finish_non_exhaustive()
    }
}

impl TurmoilUdp {
    /// Binds `address` on the current turmoil host. turmoil's `bind` never waits, so it completes at once.
    pub fn bind(address: SocketAddr) -> io::Result<Self> {
        let socket = turmoil::net::UdpSocket::bind(address)
            .now_or_never()
            .ok_or_else(|| io::Error::other("turmoil's bind did not complete at once"))??;
        Ok(Self {
            socket: Mutex::new(Some(Arc::new(socket))),
            readable: Mutex::new(None),
        })
    }

    fn socket(&self) -> Option<Arc<turmoil::net::UdpSocket>> {
        lock(&self.socket).clone()
    }

    /// Drops the socket (and so its port binding, once no call holds it). Call from the socket's host.
    pub fn close(&self) {
        lock(&self.readable).take();
        lock(&self.socket).take();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The sockets one simulated host bound, across its incarnations.
#[derive(Debug, Default)]
pub struct SocketRegistry {
    sockets: Mutex<Vec<Arc<TurmoilUdp>>>,
}

impl SocketRegistry {
    /// Closes every socket bound so far (before the host's node restarts).
    pub fn close_all(&self) {
        for socket in lock(&self.sockets).drain(..) {
            socket.close();
        }
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for TurmoilUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        debug_assert!(transmit.segment_size.is_none(), "one datagram per transmit");
        let Some(socket) = self.socket() else {
            return Ok(());
        };
        let (datagrams, bytes) = SENT.get();
        SENT.set((datagrams + 1, bytes + transmit.contents.len() as u64));
        let from = socket.local_addr()?.ip();
        if lost(from, transmit.destination.ip()) {
            return Ok(());
        }
        match socket.try_send_to(transmit.contents, transmit.destination) {
            Ok(_) => Ok(()),
            // A datagram to an unreachable host is lost, as on a real network; quinn's timers deal with it.
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        let Some(socket) = self.socket() else {
            return Poll::Pending;
        };
        loop {
            match socket.try_recv_from(buf) {
                Ok((len, from)) => {
                    *slot = RecvMeta {
                        addr: from,
                        len,
                        stride: len,
                        ecn: None,
                        dst_ip: socket.local_addr().ok().map(|local| local.ip()),
                    };
                    return Poll::Ready(Ok(1));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
            let mut readable = lock(&self.readable);
            let wait = readable.get_or_insert_with(|| {
                let socket = socket.clone();
                Box::pin(async move { socket.readable().await })
            });
            match wait.as_mut().poll(cx) {
                Poll::Ready(result) => {
                    *readable = None;
                    result?;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "closed"))?
            .local_addr()
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

/// Binds a simulated node's cluster sockets on its turmoil host, seeding each endpoint's quinn RNG from the
/// node's seed and a count of the sockets it bound before.
pub struct TurmoilSockets {
    seed: u64,
    bound: Mutex<u64>,
    registry: Arc<SocketRegistry>,
}

impl TurmoilSockets {
    /// A provider for the node with `seed`, recording what it binds in `registry`.
    pub fn new(seed: u64, registry: Arc<SocketRegistry>) -> Self {
        Self {
            seed,
            bound: Mutex::new(0),
            registry,
        }
    }
}

impl SocketProvider for TurmoilSockets {
    fn bind(&self, address: SocketAddr) -> io::Result<BoundSocket> {
        let socket = Arc::new(TurmoilUdp::bind(address)?);
        lock(&self.registry.sockets).push(socket.clone());
        let mut bound = lock(&self.bound);
        *bound += 1;
        let mut seed = [0u8; 32];
        for (index, chunk) in seed.chunks_mut(8).enumerate() {
            let word = super::mix(self.seed ^ (*bound << 8) ^ index as u64);
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        Ok(BoundSocket {
            socket,
            runtime: Arc::new(quinn::TokioRuntime),
            rng_seed: Some(seed),
            blocking_threads: false,
        })
    }
}
