//! The join handshake: the right token admits a node that can then talk to the cluster; a server from another CA
//! is refused before the secret leaves the joiner; expired, used and unknown secrets are refused.

mod t10_transport_support;

use futures::future::BoxFuture;
use ollamamax_core::ids::NodeId;
use ollamamax_io::cluster::{
    ClusterCa, JoinAuthority, JoinError, JoinRefusal, JoinSecret, JoinService, JoinToken,
    RedeemError, StoreAuthority, TokenPolicy, TokenStore, close, join_cluster,
};
use ollamamax_io::transport::{NoBlobs, Request, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use t10_transport_support::{Members, Node, introduce, start, start_plain};

const NOW_UNIX_S: u64 = 1_800_000_000;

/// Counts every secret that reached the server, then defers to a [`StoreAuthority`].
struct Counting {
    secrets_received: AtomicU32,
    inner: StoreAuthority,
}

impl JoinAuthority for Counting {
    fn admit(
        &self,
        secret: JoinSecret,
        remote: SocketAddr,
    ) -> BoxFuture<'_, Result<NodeId, JoinRefusal>> {
        self.secrets_received.fetch_add(1, Ordering::SeqCst);
        self.inner.admit(secret, remote)
    }
}

struct Cluster {
    ca_fingerprint: [u8; 32],
    seed: Node,
    authority: Arc<Counting>,
    clock: Arc<AtomicU64>,
    members: Members,
}

/// Node 1 holds the CA and admits joiners with the tokens in `tokens`; new nodes get ids from 2.
fn cluster(ca: ClusterCa, tokens: TokenStore) -> Cluster {
    let clock = Arc::new(AtomicU64::new(NOW_UNIX_S));
    let now = clock.clone();
    let authority = Arc::new(Counting {
        secrets_received: AtomicU32::new(0),
        inner: StoreAuthority::new(
            tokens,
            NodeId(2),
            Box::new(move || now.load(Ordering::SeqCst)),
        ),
    });
    let identity = ca.issue_identity(NodeId(1)).unwrap();
    let ca_fingerprint = ca.fingerprint();
    let members = Members::of(&[1, 2]);
    let join = Arc::new(JoinService::new(ca, authority.clone()));
    let seed = start(&identity, &members, Arc::new(NoBlobs), Some(join));
    Cluster {
        ca_fingerprint,
        seed,
        authority,
        clock,
        members,
    }
}

fn token_store(ca: &ClusterCa, policy: TokenPolicy) -> (TokenStore, JoinToken) {
    let mut store = TokenStore::new();
    let token = store.issue(ca.fingerprint(), policy, NOW_UNIX_S).unwrap();
    (store, token)
}

const FOREVER: TokenPolicy = TokenPolicy {
    expires_at_unix_s: None,
    single_use: false,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_the_right_token_admits_a_node_that_then_talks_to_the_cluster() {
    let ca = ClusterCa::create().unwrap();
    let (tokens, token) = token_store(&ca, FOREVER);
    let text = token.to_string();
    let cluster = cluster(ca, tokens);

    let joined = join_cluster(cluster.seed.address, &text.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(joined.identity.node(), NodeId(2));
    assert_eq!(
        ollamamax_io::cluster::pki::fingerprint(joined.identity.ca_certificate()),
        cluster.ca_fingerprint
    );

    // The new identity works for member traffic in both directions.
    let two = start_plain(&joined.identity, &cluster.members);
    introduce(&two, &cluster.seed);
    introduce(&cluster.seed, &two);
    let pong = two
        .transport
        .request(NodeId(1), Request::Ping { nonce: 5 })
        .await
        .unwrap();
    assert_eq!(pong, Response::Pong { nonce: 5 });
    let pong = cluster
        .seed
        .transport
        .request(NodeId(2), Request::Ping { nonce: 6 })
        .await
        .unwrap();
    assert_eq!(pong, Response::Pong { nonce: 6 });
    assert_eq!(cluster.authority.secrets_received.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_server_of_another_ca_never_receives_the_secret() {
    let ours = ClusterCa::create().unwrap();
    let theirs = ClusterCa::create().unwrap();
    // The impostor runs a real join service that would accept this very secret.
    let (their_tokens, their_token) = token_store(&theirs, FOREVER);
    let impostor = cluster(theirs, their_tokens);
    let token = JoinToken {
        ca_fingerprint: ours.fingerprint(),
        secret: their_token.secret,
    };

    let error = join_cluster(impostor.seed.address, &token)
        .await
        .unwrap_err();
    assert!(matches!(error, JoinError::WrongCluster), "{error:?}");
    assert_eq!(
        impostor.authority.secrets_received.load(Ordering::SeqCst),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_expired_used_and_unknown_secrets_are_refused() {
    let ca = ClusterCa::create().unwrap();
    let mut tokens = TokenStore::new();
    let fingerprint = ca.fingerprint();
    let expiring = TokenPolicy {
        expires_at_unix_s: Some(NOW_UNIX_S + 60),
        single_use: false,
    };
    let expiring = tokens.issue(fingerprint, expiring, NOW_UNIX_S).unwrap();
    let once = TokenPolicy {
        expires_at_unix_s: None,
        single_use: true,
    };
    let once = tokens.issue(fingerprint, once, NOW_UNIX_S).unwrap();
    let cluster = cluster(ca, tokens);
    let address = cluster.seed.address;

    // Single use: the first join succeeds, the second is refused.
    assert_eq!(
        join_cluster(address, &once).await.unwrap().identity.node(),
        NodeId(2)
    );
    let error = join_cluster(address, &once).await.unwrap_err();
    assert!(
        matches!(
            error,
            JoinError::Refused(JoinRefusal::Token(RedeemError::Used))
        ),
        "{error:?}"
    );

    // Expiry: valid before, refused at and after the expiry second.
    assert_eq!(
        join_cluster(address, &expiring)
            .await
            .unwrap()
            .identity
            .node(),
        NodeId(3)
    );
    cluster.clock.store(NOW_UNIX_S + 60, Ordering::SeqCst);
    let error = join_cluster(address, &expiring).await.unwrap_err();
    assert!(
        matches!(
            error,
            JoinError::Refused(JoinRefusal::Token(RedeemError::Expired))
        ),
        "{error:?}"
    );

    // A secret the cluster never issued, with the right fingerprint.
    let unknown = JoinToken {
        ca_fingerprint: cluster.ca_fingerprint,
        secret: JoinSecret([7; 32]),
    };
    let error = join_cluster(address, &unknown).await.unwrap_err();
    assert!(
        matches!(
            error,
            JoinError::Refused(JoinRefusal::Token(RedeemError::Unknown))
        ),
        "{error:?}"
    );
    assert_eq!(cluster.authority.secrets_received.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_node_without_the_ca_key_does_not_admit_joins() {
    let ca = ClusterCa::create().unwrap();
    let fingerprint = ca.fingerprint();
    let plain = start_plain(&ca.issue_identity(NodeId(1)).unwrap(), &Members::of(&[1]));
    let token = JoinToken {
        ca_fingerprint: fingerprint,
        secret: JoinSecret([1; 32]),
    };
    let error = join_cluster(plain.address, &token).await.unwrap_err();
    let code = match &error {
        JoinError::Connection(quinn::ConnectionError::ApplicationClosed(reason)) => {
            Some(reason.error_code.into_inner())
        }
        _ => None,
    };
    assert_eq!(code, Some(u64::from(close::JOIN_UNAVAILABLE)), "{error:?}");
}
