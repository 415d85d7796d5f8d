use super::*;
use crate::cluster::health::Load;
use crate::node::requests::RequestReport;

fn busy_load() -> Load {
    Load {
        running: 2,
        queued: 3,
        slots: 4,
        loaded: vec!["smollm2:latest".into()],
        requests: vec![
            RequestReport {
                id: "abc".into(),
                model: "smollm2:latest".into(),
                accepted_by: None,
                stage: Stage::Generating,
                tokens: 11,
                decode_ms: 500,
                age_ms: 900,
            },
            RequestReport {
                id: "def".into(),
                model: "smollm2:latest".into(),
                accepted_by: Some(9),
                stage: Stage::Queued,
                tokens: 0,
                decode_ms: 0,
                age_ms: 10,
            },
        ],
        requests_total: 5,
    }
}

fn peer(liveness: Liveness, silent_ms: u64) -> Peer {
    Peer {
        liveness,
        load: busy_load(),
        silent_ms,
        reports: 12,
    }
}

fn member(id: u64, health: &str, load: MemberLoad) -> MemberStatus {
    MemberStatus {
        id,
        role: "voter".into(),
        api_address: "127.0.0.1:1".into(),
        cluster_address: "127.0.0.1:2".into(),
        status: "active".into(),
        leader: false,
        health: health.into(),
        load,
    }
}

#[test]
fn an_alive_member_shows_its_last_report() {
    let load = member_load(NodeId(4), Some(&peer(Liveness::Alive, 100)));
    assert_eq!(
        (load.running, load.queued, load.slots),
        (Some(2), Some(3), Some(4))
    );
    assert_eq!(load.loaded, Some(vec!["smollm2:latest".to_string()]));
    assert_eq!(load.requests_total, Some(5));
    assert_eq!(load.report_age_ms, Some(100));
    assert_eq!(
        load.requests,
        Some(vec![
            RequestStatus {
                id: "abc".into(),
                model: "smollm2:latest".into(),
                accepted_by: 4,
                state: Stage::Generating,
                tokens: 11,
                tokens_per_s: Some(20.0),
                age_ms: 1000,
            },
            RequestStatus {
                id: "def".into(),
                model: "smollm2:latest".into(),
                accepted_by: 9,
                state: Stage::Queued,
                tokens: 0,
                tokens_per_s: None,
                age_ms: 110,
            },
        ])
    );
}

#[test]
fn a_suspect_or_dead_member_shows_only_the_age_of_its_last_report() {
    for liveness in [Liveness::Suspect, Liveness::Dead] {
        let load = member_load(NodeId(4), Some(&peer(liveness, 6_000)));
        assert_eq!(
            load,
            MemberLoad {
                report_age_ms: Some(6_000),
                ..MemberLoad::default()
            },
            "{liveness:?}"
        );
    }
}

#[test]
fn a_member_without_a_report_shows_nothing() {
    assert_eq!(member_load(NodeId(4), None), MemberLoad::default());
    let silent = Peer {
        reports: 0,
        load: Load::default(),
        ..peer(Liveness::Alive, 0)
    };
    assert_eq!(member_load(NodeId(4), Some(&silent)), MemberLoad::default());
}

#[test]
fn the_table_shows_a_dead_members_load_as_unknown_and_the_live_requests() {
    let status = ClusterStatus {
        node: 1,
        leader: Some(1),
        term: 3,
        replication: 2,
        members: vec![
            member(
                1,
                "alive",
                member_load(NodeId(1), Some(&peer(Liveness::Alive, 0))),
            ),
            member(
                2,
                "dead",
                member_load(NodeId(2), Some(&peer(Liveness::Dead, 7_300))),
            ),
        ],
        models: Vec::new(),
    };
    let table = render(&status);
    let dead = table.lines().find(|line| line.starts_with("2 ")).unwrap();
    assert!(dead.contains("- (last report 7.3s ago)"), "{table}");
    assert!(
        !dead.contains("5/4") && !dead.contains("smollm2"),
        "{table}"
    );
    let alive = table.lines().find(|line| line.starts_with("1 ")).unwrap();
    assert!(
        alive.contains("5/4") && alive.contains("smollm2:latest"),
        "{table}"
    );
    let abc = table.lines().find(|line| line.starts_with("abc ")).unwrap();
    assert!(
        abc.contains("generating") && abc.contains("20.0"),
        "{table}"
    );
    assert!(table.contains("... and 3 more on 1"), "{table}");
    // Only the live member's requests are listed (two, both on node 1).
    assert_eq!(
        table
            .lines()
            .filter(|line| line.contains("smollm2:latest  "))
            .count(),
        2
    );
}

#[test]
fn the_json_has_nulls_for_a_dead_members_load_and_reads_back() {
    let dead = member(
        2,
        "dead",
        member_load(NodeId(2), Some(&peer(Liveness::Dead, 7_000))),
    );
    let json = serde_json::to_value(&dead).unwrap();
    assert_eq!(json["running"], serde_json::Value::Null);
    assert_eq!(json["loaded"], serde_json::Value::Null);
    assert_eq!(json["requests"], serde_json::Value::Null);
    assert_eq!(json["report_age_ms"], 7_000);
    let back: MemberStatus = serde_json::from_value(json).unwrap();
    assert_eq!(back.load, dead.load);
}
