use super::*;
use crate::node::requests::{RequestReport, Stage};

fn load() -> Load {
    Load {
        running: 1,
        queued: 2,
        slots: 4,
        loaded: vec!["smollm2:latest".into()],
        requests: vec![RequestReport {
            id: "r1".into(),
            model: "smollm2:latest".into(),
            accepted_by: None,
            stage: Stage::Generating,
            tokens: 3,
            decode_ms: 10,
            age_ms: 20,
        }],
        requests_total: 1,
    }
}

/// What a version-1 binary reads: its envelope, with its own types.
#[derive(Deserialize)]
struct EnvelopeV1<T> {
    version: u16,
    body: T,
}

#[test]
fn a_version_1_heartbeat_is_read_as_one_without_live_requests() {
    // Encoded exactly as a version-1 node encodes it.
    let old = LoadV1::from(load());
    let bytes = encode_in(1, ControlV1::Heartbeat(old));
    let (control, version) = decode_control(&bytes).unwrap();
    assert_eq!(version, 1);
    let Control::Heartbeat(read) = control else {
        panic!("not a heartbeat: {control:?}");
    };
    assert_eq!(
        read,
        Load {
            requests: Vec::new(),
            requests_total: 0,
            ..load()
        }
    );
}

#[test]
fn a_version_1_node_reads_what_this_node_sends_it() {
    let bytes = encode_control(Control::Heartbeat(load()), 1).unwrap();
    let envelope: EnvelopeV1<ControlV1> = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(envelope.version, 1);
    let ControlV1::Heartbeat(read) = envelope.body else {
        panic!("not a heartbeat");
    };
    assert_eq!((read.running, read.queued, read.slots), (1, 2, 4));
    assert_eq!(read.loaded, load().loaded);
    let reply = encode_reply(ControlReply::Heartbeat(load()), 1);
    let envelope: EnvelopeV1<ControlReplyV1> = postcard::from_bytes(&reply).unwrap();
    assert_eq!(envelope.version, 1);
    assert!(matches!(envelope.body, ControlReplyV1::Heartbeat(_)));
}

#[test]
fn replies_of_both_versions_are_read() {
    let (reply, version) = decode_reply(&encode_in(1, ControlReplyV1::Done)).unwrap();
    assert_eq!(version, 1);
    assert!(matches!(reply, ControlReply::Done));
    let current = encode_reply(ControlReply::Heartbeat(load()), CONTROL_VERSION);
    let (reply, version) = decode_reply(&current).unwrap();
    assert_eq!(version, CONTROL_VERSION);
    assert!(matches!(reply, ControlReply::Heartbeat(read) if read == load()));
}

#[test]
fn the_current_version_round_trips() {
    let bytes = encode_control(Control::Heartbeat(load()), CONTROL_VERSION).unwrap();
    let (control, version) = decode_control(&bytes).unwrap();
    assert_eq!(version, CONTROL_VERSION);
    assert!(matches!(control, Control::Heartbeat(read) if read == load()));
}

#[test]
fn older_and_newer_versions_are_refused_with_both_versions_named() {
    for version in [0, CONTROL_VERSION + 1] {
        let bytes = encode_in(
            version,
            ControlV1::DropReplica {
                digest: Digest::from_bytes([1; 32]),
            },
        );
        let error = decode_control(&bytes).unwrap_err();
        assert!(
            error.contains(&format!("control protocol version {version}")),
            "{error}"
        );
        assert!(error.contains("this node speaks 1 to 2"), "{error}");
        assert!(decode_reply(&bytes).is_err());
    }
}

#[test]
fn a_removal_is_not_sent_to_a_version_1_node() {
    let remove = Control::RemoveMember {
        node: NodeId(7),
        force: false,
    };
    let error = encode_control(remove, 1).unwrap_err();
    assert!(error.contains("version 1"), "{error}");
}

#[test]
fn a_peer_is_spoken_to_in_the_version_it_last_spoke() {
    let peer = NodeId(0xfeed_0001);
    assert_eq!(peer_version(peer), CONTROL_VERSION);
    heard_version(peer, 1);
    assert_eq!(peer_version(peer), 1);
    heard_version(peer, CONTROL_VERSION);
    assert_eq!(peer_version(peer), CONTROL_VERSION);
}
