//! Where a node's cluster sockets come from: the operating system's UDP (every real node) or a provider of the
//! caller's (the shell simulator runs quinn over turmoil's simulated UDP, see `sim/src/shell/udp.rs`).
//!
//! [`Sockets`] travels in a node's settings to the two places that bind UDP: the node's [`Transport`]
//! ([`Transport::bind_with`]) and the temporary endpoint of a join ([`join_cluster_with`]). A provider also hands
//! out the seed of quinn's randomness, so a simulated node's connection ids and packet-number skips replay.
//!
//! [`Transport`]: super::Transport
//! [`Transport::bind_with`]: super::Transport::bind_with
//! [`join_cluster_with`]: crate::cluster::join_cluster_with

use std::net::SocketAddr;
use std::sync::Arc;

/// A UDP socket ready for quinn, with the runtime to drive it and the seed for quinn's randomness.
pub struct BoundSocket {
    /// The socket.
    pub socket: Arc<dyn quinn::AsyncUdpSocket>,
    /// The runtime quinn spawns its driver on and takes its time from.
    pub runtime: Arc<dyn quinn::Runtime>,
    /// `EndpointConfig::rng_seed`; `None` seeds from the OS.
    pub rng_seed: Option<[u8; 32]>,
    /// Whether blob file I/O may run on tokio's blocking threads while it waits for the network. False under
    /// turmoil: its paused clock stands still while a blocking task runs, so a blocking thread that waits for
    /// packets would wait forever; the transport then does that I/O inline in tasks.
    pub blocking_threads: bool,
}

/// Binds UDP sockets other than the operating system's.
pub trait SocketProvider: Send + Sync + 'static {
    /// Bind `address` (port 0: any free port).
    fn bind(&self, address: SocketAddr) -> std::io::Result<BoundSocket>;
}

/// How a node binds its cluster sockets.
#[derive(Clone, Default)]
pub enum Sockets {
    /// tokio's UDP on the operating system (every real node).
    #[default]
    Os,
    /// The caller's provider (the simulator's).
    Provided(Arc<dyn SocketProvider>),
}

impl std::fmt::Debug for Sockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Os => f.write_str("Os"),
            Self::Provided(_) => f.write_str("Provided"),
        }
    }
}

impl Sockets {
    /// Bind `address`. Call inside a tokio runtime.
    pub fn bind(&self, address: SocketAddr) -> std::io::Result<BoundSocket> {
        match self {
            Self::Os => {
                let runtime = quinn::default_runtime().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::Unsupported, "no async runtime")
                })?;
                let socket = super::config::wrap_udp(&runtime, super::config::bind_udp(address)?)?;
                Ok(BoundSocket {
                    socket,
                    runtime,
                    rng_seed: None,
                    blocking_threads: true,
                })
            }
            Self::Provided(provider) => provider.bind(address),
        }
    }
}
