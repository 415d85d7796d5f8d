//! The cluster's certificate authority and each node's identity.
//!
//! `ollamamax cluster init` makes one [`ClusterCa`] (an ECDSA P-256 key and a self-signed CA certificate). Every
//! node holds a [`NodeIdentity`]: its own P-256 key and a certificate the CA signed for it. The certificate names
//! the node through one subject alternative name, the DNS name `node-<id>.ollamamax` ([`node_dns_name`]), where
//! `<id>` is the decimal [`NodeId`]. A DNS name (rather than a URI or a custom extension) lets the client side of
//! every connection check the peer with rustls's stock WebPKI name check, by dialing the server name of the node it
//! means to reach; the server side reads the name back with [`node_id_of_certificate`].
//!
//! Files in a data directory (keys are created with mode 0600 and never logged):
//! ```text
//! <dir>/ca.crt  ca.key      the cluster CA (only on nodes that admit joins)
//! <dir>/node.crt node.key   this node's identity, and <dir>/ca.crt to verify peers
//! ```
//! Certificates are valid from 1975 to 4096 (rcgen's defaults): rotation and revocation are not built yet;
//! removing a node from the membership is what shuts it out (the transport checks membership on every
//! connection and every stream).

use super::{NODE_NAME_PREFIX, NODE_NAME_SUFFIX};
use ollamamax_core::ids::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use sha2::{Digest as _, Sha256};
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The CA certificate's file name in a cluster data directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA key's file name (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// This node's certificate file name.
pub const NODE_CERT_FILE: &str = "node.crt";
/// This node's key file name (mode 0600).
pub const NODE_KEY_FILE: &str = "node.key";
/// Largest key or certificate file read back (a P-256 PEM is under 1 KiB).
pub const PKI_FILE_BYTES_MAX: u64 = 64 << 10;
/// Largest CSR accepted from a joining node, in DER bytes.
pub const CSR_BYTES_MAX: u32 = 4096;
/// Largest certificate accepted in a join answer, in DER bytes.
pub const CERTIFICATE_BYTES_MAX: u32 = 8192;
/// The common name of the cluster CA.
const CA_COMMON_NAME: &str = "ollamamax cluster CA";
/// Mode of every key file.
const KEY_FILE_MODE: u32 = 0o600;
/// Mode of every certificate file.
const CERT_FILE_MODE: u32 = 0o644;

/// Why a PKI operation failed. Texts never contain paths or key material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Key generation, signing or certificate encoding failed.
    #[error("certificate operation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    /// No randomness for a new key.
    #[error(transparent)]
    Random(#[from] crate::entropy::Unavailable),
    /// A key or certificate file could not be read or written.
    #[error("cannot {action} {file}: {kind}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The file name inside the data directory.
        file: &'static str,
        /// The I/O error's kind.
        kind: ErrorKind,
    },
    /// A file is larger than [`PKI_FILE_BYTES_MAX`] or not the PEM it should be.
    #[error("{0} is not a valid PEM file")]
    Malformed(&'static str),
    /// A certificate is not valid DER or carries no well-formed node name.
    #[error("certificate does not name a node")]
    NoNodeName,
    /// A CSR is larger than [`CSR_BYTES_MAX`], malformed, or its signature is wrong.
    #[error("certificate signing request is invalid")]
    InvalidCsr,
}

/// The cluster certificate authority: signs node certificates.
pub struct ClusterCa {
    key: KeyPair,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &fingerprint_hex(&self.cert))
            .finish()
    }
}

impl ClusterCa {
    /// Make a new CA: a fresh Ed25519 key and a self-signed certificate that may sign node certificates only
    /// (path length 0).
    pub fn create() -> Result<Self, PkiError> {
        let key = new_key()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, CA_COMMON_NAME);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?.der().clone();
        Ok(Self { key, cert })
    }

    /// The CA certificate, which every node trusts.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// SHA-256 of the CA certificate's DER: what a join token carries.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.cert)
    }

    /// Sign a certificate for `node` over `public_key`.
    fn sign_node(
        &self,
        node: NodeId,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<CertificateDer<'static>, PkiError> {
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key)?;
        let params = node_params(node)?;
        Ok(params.signed_by(public_key, &issuer)?.der().clone())
    }

    /// Make a complete identity for `node` (used by the node that runs `cluster init`, and by tests).
    pub fn issue_identity(&self, node: NodeId) -> Result<NodeIdentity, PkiError> {
        let key = new_key()?;
        let cert = self.sign_node(node, &key)?;
        Ok(NodeIdentity {
            node,
            key,
            cert,
            ca: self.cert.clone(),
        })
    }

    /// Sign a joining node's checked CSR for `node`. Only the CSR's public key is used; every name and extension
    /// in the certificate comes from us.
    pub fn sign_csr(
        &self,
        node: NodeId,
        csr: &CheckedCsr,
    ) -> Result<CertificateDer<'static>, PkiError> {
        self.sign_node(node, &csr.0.public_key)
    }

    /// Write `ca.crt` and `ca.key` into `dir` (created if missing). Existing files are replaced atomically.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        write_file(
            dir,
            CA_CERT_FILE,
            pem("CERTIFICATE", &self.cert).as_bytes(),
            CERT_FILE_MODE,
        )?;
        write_file(
            dir,
            CA_KEY_FILE,
            self.key.serialize_pem().as_bytes(),
            KEY_FILE_MODE,
        )
    }

    /// Read `ca.crt` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert = read_certificate(dir, CA_CERT_FILE)?;
        let key = read_key(dir, CA_KEY_FILE)?;
        Ok(Self { key, cert })
    }
}

/// A CSR whose signature checked out: the joiner holds the private key of the public key inside.
pub struct CheckedCsr(CertificateSigningRequestParams);

impl std::fmt::Debug for CheckedCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckedCsr(..)")
    }
}

impl CheckedCsr {
    /// Parse a DER CSR of at most [`CSR_BYTES_MAX`] bytes and check its signature.
    pub fn parse(csr_der: &[u8]) -> Result<Self, PkiError> {
        if csr_der.len() as u64 > u64::from(CSR_BYTES_MAX) {
            return Err(PkiError::InvalidCsr);
        }
        let csr = CertificateSigningRequestDer::from(csr_der);
        CertificateSigningRequestParams::from_der(&csr)
            .map(Self)
            .map_err(|_| PkiError::InvalidCsr)
    }
}

/// A node's key and CA-signed certificate, plus the CA certificate it trusts.
pub struct NodeIdentity {
    node: NodeId,
    key: KeyPair,
    cert: CertificateDer<'static>,
    ca: CertificateDer<'static>,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Assemble an identity from a key and the certificate and CA certificate a join answer brought. Checks that
    /// the certificate names a node and is for this key.
    pub fn from_parts(
        key: KeyPair,
        cert: CertificateDer<'static>,
        ca: CertificateDer<'static>,
    ) -> Result<Self, PkiError> {
        let node = node_id_of_certificate(&cert)?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&cert).map_err(|_| PkiError::NoNodeName)?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::NoNodeName);
        }
        Ok(Self {
            node,
            key,
            cert,
            ca,
        })
    }

    /// The node this identity names.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// This node's certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate this node trusts.
    pub fn ca_certificate(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    /// The certificate chain rustls presents: the node certificate, then the CA (so a joiner, which knows only the
    /// CA's fingerprint, can check the chain).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone(), self.ca.clone()]
    }

    /// The private key in the form rustls takes.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// Write `node.crt`, `node.key` and `ca.crt` into `dir` (created if missing).
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        write_file(
            dir,
            CA_CERT_FILE,
            pem("CERTIFICATE", &self.ca).as_bytes(),
            CERT_FILE_MODE,
        )?;
        write_file(
            dir,
            NODE_CERT_FILE,
            pem("CERTIFICATE", &self.cert).as_bytes(),
            CERT_FILE_MODE,
        )?;
        write_file(
            dir,
            NODE_KEY_FILE,
            self.key.serialize_pem().as_bytes(),
            KEY_FILE_MODE,
        )
    }

    /// Read an identity saved by [`NodeIdentity::save`].
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let ca = read_certificate(dir, CA_CERT_FILE)?;
        let cert = read_certificate(dir, NODE_CERT_FILE)?;
        let key = read_key(dir, NODE_KEY_FILE)?;
        Self::from_parts(key, cert, ca)
    }
}

/// The PKCS#8 (v1, RFC 8410) encoding of an Ed25519 private key up to its 32-byte seed, which follows it.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A fresh Ed25519 key from [`crate::entropy`]. Ed25519 rather than ECDSA: its signatures are deterministic and of
/// one length, so a seeded simulation's handshakes repeat byte for byte (and it is faster).
fn new_key() -> Result<KeyPair, PkiError> {
    let mut der = Vec::from(ED25519_PKCS8_PREFIX);
    der.resize(ED25519_PKCS8_PREFIX.len() + 32, 0);
    crate::entropy::fill(&mut der[ED25519_PKCS8_PREFIX.len()..])?;
    let key = KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(der),
        &rcgen::PKCS_ED25519,
    )?;
    Ok(key)
}

/// A fresh key and a CSR for it, which a joining node sends to be signed.
pub fn new_key_and_csr() -> Result<(KeyPair, Vec<u8>), PkiError> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

/// The DNS name that encodes `node` in its certificate: `node-<id>.ollamamax`.
pub fn node_dns_name(node: NodeId) -> String {
    format!("{NODE_NAME_PREFIX}{}{NODE_NAME_SUFFIX}", node.0)
}

/// Parse `node-<id>.ollamamax` strictly: decimal digits, no sign, no leading zero (so one id has one name).
pub fn parse_node_dns_name(name: &str) -> Option<NodeId> {
    let digits = name
        .strip_prefix(NODE_NAME_PREFIX)?
        .strip_suffix(NODE_NAME_SUFFIX)?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return None;
    }
    digits.parse().ok().map(NodeId)
}

/// The node a certificate was issued to: its one `node-<id>.ollamamax` DNS name. A certificate with no such name,
/// or with two different ones, names no node. Call it only on a certificate whose chain was verified.
pub fn node_id_of_certificate(cert: &CertificateDer<'_>) -> Result<NodeId, PkiError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|_| PkiError::NoNodeName)?;
    let names = parsed
        .subject_alternative_name()
        .map_err(|_| PkiError::NoNodeName)?
        .ok_or(PkiError::NoNodeName)?;
    let mut found = None;
    for name in &names.value.general_names {
        if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
            match (parse_node_dns_name(dns), found) {
                (Some(node), None) => found = Some(node),
                (Some(node), Some(previous)) if node != previous => {
                    return Err(PkiError::NoNodeName);
                }
                _ => {}
            }
        }
    }
    found.ok_or(PkiError::NoNodeName)
}

/// SHA-256 of a certificate's DER.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(cert.as_ref()).into()
}

/// Lowercase hex of a certificate's SHA-256.
pub fn fingerprint_hex(cert: &CertificateDer<'_>) -> String {
    super::token::hex(&fingerprint(cert))
}

fn node_params(node: NodeId) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, node_dns_name(node));
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::DnsName(node_dns_name(node).try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every node is both a QUIC server and a QUIC client.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn read_text(dir: &Path, file: &'static str) -> Result<String, PkiError> {
    let path = dir.join(file);
    let io = |action| {
        move |error: std::io::Error| PkiError::Io {
            action,
            file,
            kind: error.kind(),
        }
    };
    let size = fs::metadata(&path).map_err(io("read"))?.len();
    if size > PKI_FILE_BYTES_MAX {
        return Err(PkiError::Malformed(file));
    }
    fs::read_to_string(&path).map_err(io("read"))
}

fn read_certificate(dir: &Path, file: &'static str) -> Result<CertificateDer<'static>, PkiError> {
    use rustls::pki_types::pem::PemObject as _;
    let text = read_text(dir, file)?;
    CertificateDer::from_pem_slice(text.as_bytes()).map_err(|_| PkiError::Malformed(file))
}

fn read_key(dir: &Path, file: &'static str) -> Result<KeyPair, PkiError> {
    let text = read_text(dir, file)?;
    KeyPair::from_pem(&text).map_err(|_| PkiError::Malformed(file))
}

/// Write `bytes` to `dir/file` through a temporary file created with `mode`, fsync'd, then renamed: a reader
/// never sees half a key, and a key file is never readable by others, even briefly.
fn write_file(dir: &Path, file: &'static str, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |action| {
        move |error: std::io::Error| PkiError::Io {
            action,
            file,
            kind: error.kind(),
        }
    };
    fs::create_dir_all(dir).map_err(io("create the directory for"))?;
    let temporary = dir.join(format!(".{file}.tmp"));
    let _ = fs::remove_file(&temporary);
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io("create"))?;
    out.write_all(bytes).map_err(io("write"))?;
    out.sync_all().map_err(io("sync"))?;
    fs::rename(&temporary, dir.join(file)).map_err(io("rename"))
}
