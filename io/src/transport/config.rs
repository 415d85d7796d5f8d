//! QUIC settings for node-to-node links, and the UDP socket under them.
//!
//! Flow-control windows follow window >= rate x RTT: a window smaller than what the link carries in one round
//! trip caps a stream at window / RTT. The targets are a 10 Gbit/s LAN (1.25 GB/s) with up to 10 ms of RTT under
//! load: 12.5 MB per round trip, so a blob stream gets a 16 MiB window and a connection (a few blob streams plus
//! Raft traffic) 64 MiB. The link itself holds at most one round trip's worth, so a sender keeps up to 32 MiB
//! unacknowledged per connection (twice the round trip: room for loss recovery). On loopback (RTT ~100 us) these
//! are far above what is needed; they are ceilings on buffered bytes per connection, not allocations.
//!
//! Datagram size: quinn's default 1472-byte payload limit (1500-byte Ethernet) also caps MTU discovery, unless both
//! ends raise `EndpointConfig::max_udp_payload_size`. Bigger packets cut per-packet crypto and syscall costs, so
//! nodes allow [`UDP_PAYLOAD_BYTES_MAX`] and let MTU discovery find what the path carries (1472 on plain Ethernet,
//! more on jumbo frames and loopback). It stays below ~6500 bytes: with GSO on, quinn-udp batches of larger
//! datagrams can be dropped silently by the kernel. Measured here (2 cores, loopback, 98 MB blob, same load): 6000
//! gives about 1.6x the throughput of 1472 (360 vs 225 MB/s to one peer, 370 vs 230 MB/s to four).

use quinn::{EndpointConfig, MtuDiscoveryConfig, TransportConfig, VarInt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Receive window of one stream, in bytes (see the module docs for the rule).
pub const STREAM_WINDOW_BYTES: u32 = 16 << 20;
/// Receive window of one connection, all streams together.
pub const CONNECTION_WINDOW_BYTES: u32 = 64 << 20;
/// Bytes a connection may have sent but not yet acknowledged.
pub const SEND_WINDOW_BYTES: u32 = 32 << 20;
/// Largest UDP payload this node sends or accepts (see the module docs).
pub const UDP_PAYLOAD_BYTES_MAX: u16 = 6000;
/// Requested kernel socket buffer size, each direction. The kernel may cap it (`net.core.rmem_max`).
pub const UDP_BUFFER_BYTES: u32 = 8 << 20;
/// Streams a peer may have open to this node at once (requests and blob transfers together).
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// A connection with no traffic for this long is closed. It equals the failure detector's default dead timeout
/// (5 s): a peer killed mid-stream fails the streams it carried in that time, instead of leaving a client's
/// answer hanging, while keep-alives keep a live but quiet connection up.
pub const IDLE_TIMEOUT_MS: u32 = 5_000;
/// Keep-alive interval, well under the idle timeout so a pooled connection stays up.
pub const KEEP_ALIVE_MS: u32 = 1_000;

const _: () = assert!(STREAM_WINDOW_BYTES <= CONNECTION_WINDOW_BYTES);
const _: () = assert!(SEND_WINDOW_BYTES >= STREAM_WINDOW_BYTES);
const _: () = assert!(KEEP_ALIVE_MS < IDLE_TIMEOUT_MS);
const _: () = assert!(UDP_PAYLOAD_BYTES_MAX >= 1472);
const _: () = assert!(UDP_PAYLOAD_BYTES_MAX < 6500);

/// The transport parameters of every node-to-node connection.
pub fn transport_config() -> TransportConfig {
    let mut config = TransportConfig::default();
    config
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW_BYTES))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW_BYTES))
        .send_window(u64::from(SEND_WINDOW_BYTES))
        .max_concurrent_bidi_streams(VarInt::from_u32(STREAMS_PER_CONNECTION_MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(VarInt::from_u32(IDLE_TIMEOUT_MS).into()))
        .keep_alive_interval(Some(Duration::from_millis(u64::from(KEEP_ALIVE_MS))));
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(UDP_PAYLOAD_BYTES_MAX);
    config.mtu_discovery_config(Some(mtu));
    config
}

/// The endpoint settings of every node. `rng_seed` makes quinn's randomness reproducible in simulation.
pub fn endpoint_config(rng_seed: Option<[u8; 32]>) -> EndpointConfig {
    let mut config = EndpointConfig::default();
    // Cannot fail: the value is a constant within quinn's 1200..=65527 (asserted above against 1472).
    let _ = config.max_udp_payload_size(UDP_PAYLOAD_BYTES_MAX);
    config.rng_seed(rng_seed);
    config
}

/// Bind a UDP socket for quinn: non-blocking, with [`UDP_BUFFER_BYTES`] asked for in each direction (best
/// effort: an unprivileged process gets at most the kernel's limit).
pub fn bind_udp(address: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if address.is_ipv6() {
        // Only the address asked for; dual-stack behaviour differs across systems.
        let _ = socket.set_only_v6(true);
    }
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES as usize);
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES as usize);
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// Wrap an already bound UDP socket in quinn's runtime socket.
pub fn wrap_udp(
    runtime: &Arc<dyn quinn::Runtime>,
    socket: std::net::UdpSocket,
) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
    runtime.wrap_udp_socket(socket)
}
