//! The serving side: accept connections, check who is calling, dispatch streams (requests here, blob ranges to
//! [`blob`], streaming calls to [`stream`]).

use super::message::{RemoteError, RemoteErrorKind, Response, StreamHead};
use super::{
    FRAME_BYTES_MAX, Handler, REQUEST_TIMEOUT_MS, Services, Transport, blob, frame, stream,
};
use crate::cluster::pki::node_id_of_certificate;
use crate::cluster::{CLUSTER_ALPN, JOIN_ALPN, close, join};
use ollamamax_core::ids::NodeId;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;

/// Accept connections until the endpoint closes; each connection is served on its own task.
pub(super) async fn accept_loop<H: Handler>(transport: Transport, services: Arc<Services<H>>) {
    while let Some(incoming) = transport.inner.endpoint.accept().await {
        let transport = transport.clone();
        let services = services.clone();
        tokio::spawn(async move {
            // A failed handshake (wrong CA, timeout) ends here: the peer has been told by TLS.
            if let Ok(connection) = incoming.await {
                serve_connection(transport, services, connection).await;
            }
        });
    }
}

async fn serve_connection<H: Handler>(
    transport: Transport,
    services: Arc<Services<H>>,
    connection: quinn::Connection,
) {
    let protocol = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    match protocol.as_deref() {
        Some(JOIN_ALPN) => match &services.join {
            Some(service) => join::serve_join(service, connection).await,
            None => connection.close(
                close::JOIN_UNAVAILABLE.into(),
                b"this node does not admit joins",
            ),
        },
        Some(CLUSTER_ALPN) => serve_member(transport, services, connection).await,
        _ => connection.close(close::PROTOCOL.into(), b"unknown protocol"),
    }
}

/// The node named by the connection's client certificate (its chain was checked during the handshake).
fn peer_node(connection: &quinn::Connection) -> Option<NodeId> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_id_of_certificate(chain.first()?).ok()
}

async fn serve_member<H: Handler>(
    transport: Transport,
    services: Arc<Services<H>>,
    connection: quinn::Connection,
) {
    let Some(peer) = peer_node(&connection) else {
        connection.close(
            close::NOT_AUTHENTICATED.into(),
            b"client certificate required",
        );
        return;
    };
    if !(services.membership)(peer) {
        connection.close(close::NOT_MEMBER.into(), b"not a member");
        return;
    }
    transport.register_inbound(peer, &connection);
    while let Ok((send, recv)) = connection.accept_bi().await {
        // Membership can change while a connection lives: a removed node loses it at its next stream.
        if !(services.membership)(peer) {
            connection.close(close::NOT_MEMBER.into(), b"not a member");
            break;
        }
        let blocking_threads = transport.inner.blocking_threads;
        tokio::spawn(serve_stream(
            services.clone(),
            peer,
            send,
            recv,
            blocking_threads,
        ));
    }
    transport.unregister_inbound(peer, &connection);
}

async fn serve_stream<H: Handler>(
    services: Arc<Services<H>>,
    peer: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    blocking_threads: bool,
) {
    let timeout = Duration::from_millis(u64::from(REQUEST_TIMEOUT_MS));
    let head = tokio::time::timeout(
        timeout,
        frame::read_frame::<StreamHead, _>(&mut recv, FRAME_BYTES_MAX),
    );
    let head = match head.await {
        Ok(Ok(head)) => head,
        // A broken first frame: nothing sensible to answer; tell the peer through the reset code.
        _ => {
            let _ = send.reset(close::PROTOCOL.into());
            return;
        }
    };
    match head {
        StreamHead::Call(request) => {
            let response: Response = services.handler.handle(peer, request).await;
            let encoded = frame::encode(&response, FRAME_BYTES_MAX).or_else(|error| {
                let error = RemoteError::new(RemoteErrorKind::Internal, error.to_string());
                frame::encode(&Response::Error(error), FRAME_BYTES_MAX)
            });
            match encoded {
                Ok(encoded) if send.write_all(&encoded).await.is_ok() => {
                    let _ = send.finish();
                }
                _ => {
                    let _ = send.reset(close::PROTOCOL.into());
                }
            }
        }
        StreamHead::FetchBlob(range) => {
            blob::serve_range(services.blobs.clone(), range, send, blocking_threads).await
        }
        StreamHead::Open { head, body_bytes } => {
            let streams = services.streams.clone();
            stream::serve_open(streams, peer, head, body_bytes, send, recv).await
        }
    }
}
