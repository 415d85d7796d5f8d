//! The cluster CA, node identities, CSRs and join tokens, without a network.

use ollamamax_core::ids::NodeId;
use ollamamax_io::cluster::pki::{
    self, CA_KEY_FILE, NODE_KEY_FILE, new_key_and_csr, node_id_of_certificate, parse_node_dns_name,
};
use ollamamax_io::cluster::token::{IssueError, TOKENS_MAX};
use ollamamax_io::cluster::{
    CheckedCsr, ClusterCa, JoinSecret, JoinToken, NodeIdentity, PkiError, RedeemError,
    TokenParseError, TokenPolicy, TokenStore, node_dns_name,
};
use std::os::unix::fs::PermissionsExt;

const NOW: u64 = 1_800_000_000;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn t10_ca_and_identity_survive_save_and_load_with_private_keys() {
    let directory = tempfile::tempdir().unwrap();
    let ca = ClusterCa::create().unwrap();
    ca.save(directory.path()).unwrap();
    assert_eq!(mode(&directory.path().join(CA_KEY_FILE)), 0o600);
    let loaded = ClusterCa::load(directory.path()).unwrap();
    assert_eq!(loaded.fingerprint(), ca.fingerprint());
    assert!(
        node_id_of_certificate(ca.certificate()).is_err(),
        "the CA names no node"
    );

    // A CA loaded from disk still signs identities that chain to the same certificate.
    let identity = loaded.issue_identity(NodeId(42)).unwrap();
    let node_directory = directory.path().join("node");
    identity.save(&node_directory).unwrap();
    assert_eq!(mode(&node_directory.join(NODE_KEY_FILE)), 0o600);
    let back = NodeIdentity::load(&node_directory).unwrap();
    assert_eq!(back.node(), NodeId(42));
    assert_eq!(back.certificate(), identity.certificate());
    assert_eq!(pki::fingerprint(back.ca_certificate()), ca.fingerprint());
    assert_eq!(
        node_id_of_certificate(back.certificate()).unwrap(),
        NodeId(42)
    );

    // Missing and mangled files are errors whose text holds no path.
    let empty = tempfile::tempdir().unwrap();
    let error = ClusterCa::load(empty.path()).unwrap_err();
    assert!(matches!(error, PkiError::Io { .. }));
    assert!(!error.to_string().contains(&*empty.path().to_string_lossy()));
    std::fs::write(node_directory.join(NODE_KEY_FILE), "not a key").unwrap();
    assert!(matches!(
        NodeIdentity::load(&node_directory),
        Err(PkiError::Malformed(NODE_KEY_FILE))
    ));
}

#[test]
fn t10_node_names_are_canonical() {
    assert_eq!(node_dns_name(NodeId(7)), "node-7.ollamamax");
    assert_eq!(parse_node_dns_name("node-7.ollamamax"), Some(NodeId(7)));
    assert_eq!(parse_node_dns_name("node-0.ollamamax"), Some(NodeId(0)));
    assert_eq!(
        parse_node_dns_name(&node_dns_name(NodeId(u64::MAX))),
        Some(NodeId(u64::MAX))
    );
    for bad in [
        "node-07.ollamamax",
        "node-.ollamamax",
        "node-+7.ollamamax",
        "node-7.ollamamax.evil",
        "node-18446744073709551616.ollamamax",
        "NODE-7.ollamamax",
        "node-7",
    ] {
        assert_eq!(parse_node_dns_name(bad), None, "{bad}");
    }
}

#[test]
fn t10_a_csr_is_signed_for_the_assigned_node_and_bound_to_its_key() {
    let ca = ClusterCa::create().unwrap();
    let (key, csr) = new_key_and_csr().unwrap();
    let checked = CheckedCsr::parse(&csr).unwrap();
    let certificate = ca.sign_csr(NodeId(9), &checked).unwrap();
    let identity =
        NodeIdentity::from_parts(key, certificate.clone(), ca.certificate().clone()).unwrap();
    assert_eq!(identity.node(), NodeId(9));

    // The certificate is useless with another key.
    let (other_key, _) = new_key_and_csr().unwrap();
    assert!(NodeIdentity::from_parts(other_key, certificate, ca.certificate().clone()).is_err());

    // Garbage, a flipped signature byte and an oversized request are refused.
    assert!(matches!(
        CheckedCsr::parse(b"garbage"),
        Err(PkiError::InvalidCsr)
    ));
    let mut tampered = csr.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(matches!(
        CheckedCsr::parse(&tampered),
        Err(PkiError::InvalidCsr)
    ));
    assert!(matches!(
        CheckedCsr::parse(&vec![0; 1 << 20]),
        Err(PkiError::InvalidCsr)
    ));
}

#[test]
fn t10_tokens_print_and_parse_with_clear_errors() {
    let token = JoinToken {
        ca_fingerprint: [0xab; 32],
        secret: JoinSecret([0x01; 32]),
    };
    let text = token.to_string();
    assert_eq!(
        text,
        format!("OMX1.{}.{}", "ab".repeat(32), "01".repeat(32))
    );
    assert_eq!(text.parse::<JoinToken>().unwrap(), token);
    assert_eq!(format!(" {text}\n").parse::<JoinToken>().unwrap(), token);
    assert!(
        !format!("{token:?}").contains(&"01".repeat(32)),
        "Debug shows no secret"
    );

    let fingerprint = "ab".repeat(32);
    let secret = "01".repeat(32);
    let cases = [
        (
            format!("K10{fingerprint}::server:{secret}"),
            TokenParseError::Version,
        ),
        (
            format!("OMX2.{fingerprint}.{secret}"),
            TokenParseError::Version,
        ),
        (format!("OMX1.{fingerprint}"), TokenParseError::Format),
        (
            format!("OMX1.{fingerprint}.{secret}.1"),
            TokenParseError::Format,
        ),
        (
            format!("OMX1.{}.{secret}", fingerprint.to_uppercase()),
            TokenParseError::Fingerprint,
        ),
        (
            format!("OMX1.{}.{secret}", &fingerprint[2..]),
            TokenParseError::Fingerprint,
        ),
        (
            format!("OMX1.{fingerprint}.{}", &secret[..62]),
            TokenParseError::Secret,
        ),
        (
            format!("OMX1.{fingerprint}.{}zz", &secret[..62]),
            TokenParseError::Secret,
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(text.parse::<JoinToken>().unwrap_err(), expected, "{text}");
    }
}

#[test]
fn t10_the_token_store_enforces_expiry_single_use_and_its_bound() {
    let mut store = TokenStore::new();
    let fingerprint = [1; 32];
    let forever = TokenPolicy {
        expires_at_unix_s: None,
        single_use: false,
    };
    let once = TokenPolicy {
        expires_at_unix_s: None,
        single_use: true,
    };
    let minute = TokenPolicy {
        expires_at_unix_s: Some(NOW + 60),
        single_use: false,
    };
    let reusable = store.issue(fingerprint, forever, NOW).unwrap();
    let single = store.issue(fingerprint, once, NOW).unwrap();
    let expiring = store.issue(fingerprint, minute, NOW).unwrap();
    assert_ne!(reusable.secret, single.secret);

    for _ in 0..3 {
        assert_eq!(store.redeem(&reusable.secret, NOW), Ok(()));
    }
    assert_eq!(store.redeem(&single.secret, NOW), Ok(()));
    assert_eq!(store.redeem(&single.secret, NOW), Err(RedeemError::Used));
    assert_eq!(store.redeem(&expiring.secret, NOW + 59), Ok(()));
    assert_eq!(
        store.redeem(&expiring.secret, NOW + 60),
        Err(RedeemError::Expired)
    );
    assert_eq!(
        store.redeem(&JoinSecret([0; 32]), NOW),
        Err(RedeemError::Unknown)
    );

    assert!(store.revoke(&reusable.secret));
    assert_eq!(
        store.redeem(&reusable.secret, NOW),
        Err(RedeemError::Unknown)
    );
    assert!(!store.revoke(&reusable.secret));

    // Full at TOKENS_MAX live tokens; used and expired ones make room.
    let mut full = TokenStore::new();
    for _ in 0..TOKENS_MAX {
        full.issue(fingerprint, minute, NOW).unwrap();
    }
    assert_eq!(full.issue(fingerprint, forever, NOW), Err(IssueError::Full));
    assert!(full.issue(fingerprint, forever, NOW + 60).is_ok());
    assert_eq!(full.len(), 1);
}
