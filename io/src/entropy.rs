//! Where a node's randomness comes from: node ids, cluster keys, join secrets and the TLS handshakes between
//! nodes. Normally the OS (ring's `SystemRandom`). On a thread the shell simulator seeds with [`seed_thread`], a
//! sequence drawn from the seed instead, so that one seed gives the same ids, keys and handshake bytes on every
//! run: without it, two runs of a seed differ from the first handshake on.
//!
//! The seeded sequence is for simulation only: it is predictable by design.

use rustls::NamedGroup;
use rustls::crypto::{ActiveKeyExchange, CryptoProvider, GetRandomFailed, SharedSecret};
use std::cell::Cell;

thread_local! {
    /// The seeded sequence's state on this thread (`None`: the OS's randomness).
    static SEEDED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The OS's randomness failed (it does not, on any platform ring supports, once the process has started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct Unavailable;

/// Makes every draw on this thread come from a sequence seeded with `seed` (`None`: the OS's again). The shell
/// simulator runs every node of a simulated cluster on one thread, so seeding it covers all of them.
pub fn seed_thread(seed: Option<u64>) {
    SEEDED.set(seed);
}

/// Whether this thread draws from a seeded sequence.
pub fn is_seeded() -> bool {
    SEEDED.get().is_some()
}

/// Fill `bytes` with random bytes: the OS's, or the seeded sequence's on a seeded thread.
pub fn fill(bytes: &mut [u8]) -> Result<(), Unavailable> {
    let Some(mut state) = SEEDED.get() else {
        use ring::rand::SecureRandom as _;
        return ring::rand::SystemRandom::new()
            .fill(bytes)
            .map_err(|_| Unavailable);
    };
    for chunk in bytes.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        chunk.copy_from_slice(&splitmix64(state).to_le_bytes()[..chunk.len()]);
    }
    SEEDED.set(Some(state));
    Ok(())
}

/// A random u64 from [`fill`].
pub fn next_u64() -> Result<u64, Unavailable> {
    let mut bytes = [0u8; 8];
    fill(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// splitmix64's output function: distinct, well-mixed outputs for consecutive states.
fn splitmix64(state: u64) -> u64 {
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// ring's rustls provider, except that on a seeded thread its randomness and its key exchange (X25519 only) draw
/// from [`fill`]. Everything else (ciphers, signatures, their verification) is ring's.
pub fn tls_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if is_seeded() {
        provider.secure_random = &Drawn;
        provider.kx_groups = vec![&DrawnX25519];
    }
    provider
}

/// rustls's randomness from [`fill`].
#[derive(Debug)]
struct Drawn;

impl rustls::crypto::SecureRandom for Drawn {
    fn fill(&self, bytes: &mut [u8]) -> Result<(), GetRandomFailed> {
        fill(bytes).map_err(|_| GetRandomFailed)
    }
}

/// X25519 (RFC 7748) whose ephemeral secrets come from [`fill`]: ring's key exchange takes only the OS's
/// randomness, so the seeded provider uses x25519-dalek's.
#[derive(Debug)]
struct DrawnX25519;

impl rustls::crypto::SupportedKxGroup for DrawnX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let mut secret = [0u8; 32];
        fill(&mut secret).map_err(|_| GetRandomFailed)?;
        let secret = x25519_dalek::StaticSecret::from(secret);
        let public = x25519_dalek::PublicKey::from(&secret);
        Ok(Box::new(X25519Exchange { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// One side of an X25519 exchange under way.
struct X25519Exchange {
    secret: x25519_dalek::StaticSecret,
    public: x25519_dalek::PublicKey,
}

impl ActiveKeyExchange for X25519Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let peer: [u8; 32] = peer
            .try_into()
            .map_err(|_| rustls::PeerMisbehaved::InvalidKeyShare)?;
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        // An all-zero result means a low-order peer key (RFC 7748 section 6.1): refused, as ring refuses it.
        if !shared.was_contributory() {
            return Err(rustls::PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        self.public.as_bytes()
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_thread_repeats_and_an_unseeded_one_does_not() {
        seed_thread(Some(7));
        let first = [next_u64().unwrap(), next_u64().unwrap()];
        seed_thread(Some(7));
        let again = [next_u64().unwrap(), next_u64().unwrap()];
        seed_thread(Some(8));
        let other = next_u64().unwrap();
        seed_thread(None);
        assert_eq!(first, again);
        assert_ne!(first[0], first[1]);
        assert_ne!(first[0], other);
        assert_ne!(next_u64().unwrap(), next_u64().unwrap());
        // Odd lengths take the front of the next word.
        seed_thread(Some(7));
        let mut bytes = [0u8; 11];
        fill(&mut bytes).unwrap();
        seed_thread(None);
        assert_eq!(bytes[..8], first[0].to_le_bytes());
        assert_eq!(bytes[8..], first[1].to_le_bytes()[..3]);
    }

    #[test]
    fn the_drawn_x25519_agrees_with_rings() {
        use ring::agreement;
        use rustls::crypto::SupportedKxGroup as _;
        seed_thread(Some(3));
        let ours = DrawnX25519.start().unwrap();
        seed_thread(None);
        let rng = ring::rand::SystemRandom::new();
        let theirs = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng).unwrap();
        let their_public = theirs.compute_public_key().unwrap();
        let their_shared = agreement::agree_ephemeral(
            theirs,
            &agreement::UnparsedPublicKey::new(&agreement::X25519, ours.pub_key()),
            |shared| shared.to_vec(),
        )
        .unwrap();
        let our_shared = ours.complete(their_public.as_ref()).unwrap();
        assert_eq!(our_shared.secret_bytes(), their_shared);
    }

    #[test]
    fn a_low_order_or_misshaped_peer_key_is_refused() {
        use rustls::crypto::SupportedKxGroup as _;
        seed_thread(Some(3));
        let exchange = DrawnX25519.start().unwrap();
        let short = DrawnX25519.start().unwrap();
        seed_thread(None);
        assert!(exchange.complete(&[0u8; 32]).is_err());
        assert!(short.complete(&[9u8; 31]).is_err());
    }
}
