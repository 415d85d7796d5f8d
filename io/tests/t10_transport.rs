//! Requests between nodes over mutual TLS, and who is refused: no client certificate, a certificate from another
//! CA, a valid certificate of a node that is not (or no longer) a member.

mod t10_transport_support;

use ollamamax_core::ids::NodeId;
use ollamamax_io::cluster::{ClusterCa, close};
use ollamamax_io::transport::{
    FRAME_BYTES_MAX, FrameError, Request, RequestError, Response, request_on,
};
use std::sync::atomic::Ordering;
use t10_transport_support::{
    Members, client_endpoint, introduce, raw_client_config, raw_connect, start_plain,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_members_ping_and_exchange_raft_payloads_both_ways() {
    let ca = ClusterCa::create().unwrap();
    let members = Members::of(&[1, 2]);
    let one = start_plain(&ca.issue_identity(NodeId(1)).unwrap(), &members);
    let two = start_plain(&ca.issue_identity(NodeId(2)).unwrap(), &members);
    introduce(&one, &two);
    introduce(&two, &one);

    let pong = one
        .transport
        .request(two.id(), Request::Ping { nonce: 42 })
        .await
        .unwrap();
    assert_eq!(pong, Response::Pong { nonce: 42 });
    let raft = two
        .transport
        .request(one.id(), Request::Raft(vec![1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(raft, Response::Raft(vec![3, 2, 1]));

    // Many concurrent requests share the one pooled connection.
    let mut tasks = Vec::new();
    for nonce in 0..64u64 {
        let transport = one.transport.clone();
        let peer = two.id();
        tasks.push(tokio::spawn(async move {
            transport.request(peer, Request::Ping { nonce }).await
        }));
    }
    for (nonce, task) in tasks.into_iter().enumerate() {
        assert_eq!(
            task.await.unwrap().unwrap(),
            Response::Pong {
                nonce: nonce as u64
            }
        );
    }
    assert_eq!(two.handler.calls.load(Ordering::SeqCst), 65);
    assert_eq!(one.handler.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_pool_reconnects_after_a_disconnect() {
    let ca = ClusterCa::create().unwrap();
    let members = Members::of(&[1, 2]);
    let one = start_plain(&ca.issue_identity(NodeId(1)).unwrap(), &members);
    let two = start_plain(&ca.issue_identity(NodeId(2)).unwrap(), &members);
    introduce(&one, &two);
    one.transport
        .request(two.id(), Request::Ping { nonce: 1 })
        .await
        .unwrap();
    // The serving side drops the connection; the next request dials again, at its first try (whether or not the
    // close has reached this side yet).
    for nonce in 2..7 {
        two.transport.disconnect(one.id());
        let answer = one
            .transport
            .request(two.id(), Request::Ping { nonce })
            .await
            .unwrap();
        assert_eq!(answer, Response::Pong { nonce });
    }
    let unknown = one
        .transport
        .request(NodeId(9), Request::Ping { nonce: 0 })
        .await;
    assert!(matches!(unknown, Err(RequestError::NoAddress(NodeId(9)))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_client_without_certificate_is_refused() {
    let ca = ClusterCa::create().unwrap();
    let server = start_plain(&ca.issue_identity(NodeId(1)).unwrap(), &Members::of(&[1]));
    let endpoint = client_endpoint();
    // The server allows a handshake without a client certificate (joiners have none), then closes the member
    // connection with NOT_AUTHENTICATED before serving anything.
    let error = match raw_connect(&endpoint, raw_client_config(&ca, None), &server).await {
        Ok(connection) => request_on(&connection, Request::Ping { nonce: 1 })
            .await
            .unwrap_err(),
        Err(error) => RequestError::Connection(error),
    };
    assert_eq!(
        error.close_code(),
        Some(close::NOT_AUTHENTICATED),
        "{error}"
    );
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_certificate_from_another_ca_is_refused() {
    let ca = ClusterCa::create().unwrap();
    let server = start_plain(
        &ca.issue_identity(NodeId(1)).unwrap(),
        &Members::of(&[1, 7]),
    );
    // Node 7 is even a member by id, but its certificate comes from a CA of its own making.
    let rogue_ca = ClusterCa::create().unwrap();
    let rogue = rogue_ca.issue_identity(NodeId(7)).unwrap();
    let endpoint = client_endpoint();
    let result = match raw_connect(&endpoint, raw_client_config(&ca, Some(&rogue)), &server).await {
        Ok(connection) => request_on(&connection, Request::Ping { nonce: 1 })
            .await
            .map(|_| ()),
        Err(error) => Err(RequestError::Connection(error)),
    };
    let error = result.unwrap_err();
    // The TLS handshake itself fails (a crypto alert, not an application close).
    assert!(
        matches!(
            error,
            RequestError::Connection(
                quinn::ConnectionError::ConnectionClosed(_)
                    | quinn::ConnectionError::TransportError(_)
            )
        ),
        "{error:?}"
    );
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_valid_certificate_of_a_non_member_is_refused() {
    let ca = ClusterCa::create().unwrap();
    let members = Members::of(&[1, 2]);
    let one = start_plain(&ca.issue_identity(NodeId(1)).unwrap(), &members);
    let outsider = start_plain(&ca.issue_identity(NodeId(3)).unwrap(), &members);
    introduce(&outsider, &one);
    let error = outsider
        .transport
        .request(one.id(), Request::Ping { nonce: 1 })
        .await
        .unwrap_err();
    assert_eq!(error.close_code(), Some(close::NOT_MEMBER), "{error}");
    assert_eq!(one.handler.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_removed_member_loses_its_connection_at_the_next_stream() {
    let ca = ClusterCa::create().unwrap();
    let members = Members::of(&[1, 2]);
    let one = start_plain(&ca.issue_identity(NodeId(1)).unwrap(), &members);
    let two = start_plain(&ca.issue_identity(NodeId(2)).unwrap(), &members);
    introduce(&two, &one);
    two.transport
        .request(one.id(), Request::Ping { nonce: 1 })
        .await
        .unwrap();
    members.remove(2);
    let error = two
        .transport
        .request(one.id(), Request::Ping { nonce: 2 })
        .await
        .unwrap_err();
    assert_eq!(error.close_code(), Some(close::NOT_MEMBER), "{error}");
    assert_eq!(one.handler.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_server_whose_certificate_names_another_node_is_refused() {
    let ca = ClusterCa::create().unwrap();
    let members = Members::of(&[1, 2, 5]);
    let one = start_plain(&ca.issue_identity(NodeId(1)).unwrap(), &members);
    let five = start_plain(&ca.issue_identity(NodeId(5)).unwrap(), &members);
    // Node 1 believes node 2 lives at node 5's address: the name check catches it.
    one.transport.set_address(NodeId(2), five.address).unwrap();
    let error = one
        .transport
        .request(NodeId(2), Request::Ping { nonce: 1 })
        .await
        .unwrap_err();
    assert!(matches!(error, RequestError::Connection(_)), "{error:?}");
    assert_eq!(five.handler.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_an_oversized_request_is_refused_before_it_is_sent() {
    let ca = ClusterCa::create().unwrap();
    let members = Members::of(&[1, 2]);
    let one = start_plain(&ca.issue_identity(NodeId(1)).unwrap(), &members);
    let two = start_plain(&ca.issue_identity(NodeId(2)).unwrap(), &members);
    introduce(&one, &two);
    let huge = Request::Raft(vec![0; FRAME_BYTES_MAX as usize]);
    let error = one.transport.request(two.id(), huge).await.unwrap_err();
    assert!(
        matches!(error, RequestError::Frame(FrameError::TooLarge { .. })),
        "{error:?}"
    );
    // The connection is still good for requests that fit.
    let fits = Request::Raft(vec![1; 1 << 20]);
    assert!(
        matches!(one.transport.request(two.id(), fits).await, Ok(Response::Raft(bytes)) if bytes.len() == 1 << 20)
    );
    assert_eq!(two.handler.calls.load(Ordering::SeqCst), 1);
}
