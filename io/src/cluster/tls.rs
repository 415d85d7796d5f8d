//! rustls configurations for node-to-node QUIC. Every builder goes through `builder_with_provider` with ring:
//! the workspace enables no other provider, and rustls's plain builders panic when a process has two.
//!
//! - [`server_config`]: a node's listening side. Presents the node's chain (node, CA). Accepts a client
//!   certificate that chains to the cluster CA, and also no certificate at all: a joining node has none yet. The
//!   transport refuses unauthenticated clients on [`CLUSTER_ALPN`] after the handshake (close code
//!   [`close::NOT_AUTHENTICATED`](super::close::NOT_AUTHENTICATED)); a certificate from another CA fails the
//!   handshake itself.
//! - [`member_client_config`]: dials a member; checks the server chains to the CA and carries the DNS name of the
//!   node dialed; presents this node's chain.
//! - [`join_client_config`]: dials a node while joining; trusts exactly the CA whose fingerprint the token names.

use super::pki::{NodeIdentity, fingerprint, node_id_of_certificate};
use super::{CLUSTER_ALPN, JOIN_ALPN};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Why a TLS configuration could not be built (a bad certificate or key of our own: a fatal setup error).
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// rustls refused the certificate, key or protocol versions.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built (no usable CA certificate).
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The one crypto provider of the cluster transport: ring (with seeded randomness on a simulator's thread, see
/// [`crate::entropy`]).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(crate::entropy::tls_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// The listening side of a node: TLS 1.3 (QUIC requires it), ALPNs [`CLUSTER_ALPN`] and [`JOIN_ALPN`].
pub fn server_config(identity: &NodeIdentity) -> Result<ServerConfig, TlsConfigError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        roots(identity.ca_certificate())?,
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain(), identity.private_key())?;
    config.alpn_protocols = vec![CLUSTER_ALPN.to_vec(), JOIN_ALPN.to_vec()];
    Ok(config)
}

/// The dialing side of a member: verifies the server against the CA and the dialed node's name, presents this
/// node's certificate.
pub fn member_client_config(identity: &NodeIdentity) -> Result<ClientConfig, TlsConfigError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(identity.ca_certificate())?)
        .with_client_auth_cert(identity.chain(), identity.private_key())?;
    config.alpn_protocols = vec![CLUSTER_ALPN.to_vec()];
    Ok(config)
}

/// The dialing side of a joining node: no client certificate; the server must chain to the CA with this
/// fingerprint. The returned flag turns true if a server presented any other CA, so the caller can say why the
/// handshake failed.
pub fn join_client_config(
    ca_fingerprint: [u8; 32],
) -> Result<(ClientConfig, Arc<AtomicBool>), TlsConfigError> {
    let provider = provider();
    let wrong_ca = Arc::new(AtomicBool::new(false));
    let verifier = FingerprintVerifier {
        ca_fingerprint,
        provider: provider.clone(),
        wrong_ca: wrong_ca.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    Ok((config, wrong_ca))
}

/// Trusts the server only if its chain ends in the CA certificate with a known SHA-256, and the end certificate
/// is a node certificate that CA signed. The server name is not checked: the joiner does not know the id of the
/// node it dials.
#[derive(Debug)]
struct FingerprintVerifier {
    ca_fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
    wrong_ca: Arc<AtomicBool>,
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|cert| fingerprint(cert) == self.ca_fingerprint)
        else {
            self.wrong_ca.store(true, Ordering::Relaxed);
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &[],
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        node_id_of_certificate(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
