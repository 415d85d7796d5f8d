use std::time::Duration;

use futures::StreamExt;

use super::*;

fn origin(id: &str, accepted_by: Option<u64>) -> Origin {
    Origin {
        id: id.to_string(),
        accepted_by,
    }
}

#[test]
fn an_entry_follows_its_request_from_queue_to_tokens() {
    let registry = LiveRequests::default();
    let start = Instant::now();
    let tracked = registry.track(origin("r1", Some(7)), "smollm2:latest", start);
    let (reports, total) = registry.reports(start + Duration::from_millis(5), 32);
    assert_eq!(total, 1);
    assert_eq!(
        reports,
        vec![RequestReport {
            id: "r1".into(),
            model: "smollm2:latest".into(),
            accepted_by: Some(7),
            stage: Stage::Queued,
            tokens: 0,
            decode_ms: 0,
            age_ms: 5,
        }]
    );
    assert_eq!(reports[0].tokens_per_s(), None);

    tracked.slot_taken();
    assert_eq!(registry.reports(start, 32).0[0].stage, Stage::PromptEval);

    tracked.token(start + Duration::from_millis(100));
    let first = registry.reports(start + Duration::from_millis(100), 32).0;
    assert_eq!((first[0].stage, first[0].tokens), (Stage::Generating, 1));
    assert_eq!(first[0].tokens_per_s(), None, "one piece has no rate yet");

    tracked.token(start + Duration::from_millis(200));
    tracked.token(start + Duration::from_millis(300));
    let later = registry.reports(start + Duration::from_millis(400), 32).0;
    assert_eq!(later[0].tokens, 3);
    assert_eq!(later[0].decode_ms, 200);
    assert_eq!(later[0].age_ms, 400);
    assert_eq!(later[0].tokens_per_s(), Some(10.0));

    drop(tracked);
    assert_eq!(registry.reports(start, 32), (Vec::new(), 0));
    assert_eq!(registry.count(), 0);
}

#[test]
fn reports_are_the_oldest_and_count_the_rest() {
    let registry = LiveRequests::default();
    let now = Instant::now();
    let guards: Vec<Tracked> = (0..40)
        .map(|n| registry.track(origin(&format!("r{n}"), None), "m", now))
        .collect();
    let (reports, total) = registry.reports(now, REQUESTS_REPORTED_MAX);
    assert_eq!(reports.len(), REQUESTS_REPORTED_MAX);
    assert_eq!(total, 40);
    assert_eq!(reports[0].id, "r0");
    assert_eq!(reports[REQUESTS_REPORTED_MAX - 1].id, "r31");
    drop(guards);
    assert_eq!(registry.count(), 0);
}

#[test]
fn a_full_registry_counts_instead_of_growing() {
    let registry = LiveRequests::default();
    let now = Instant::now();
    let mut guards: Vec<Tracked> = (0..LIVE_REQUESTS_MAX + 5)
        .map(|_| registry.track(Origin::default(), "m", now))
        .collect();
    assert_eq!(registry.lock().entries.len(), LIVE_REQUESTS_MAX);
    assert_eq!(registry.count(), (LIVE_REQUESTS_MAX + 5) as u32);
    // An untracked request's updates go nowhere.
    let untracked = guards.pop().unwrap();
    untracked.token(now);
    drop(untracked);
    assert_eq!(registry.count(), (LIVE_REQUESTS_MAX + 4) as u32);
    guards.clear();
    assert_eq!(registry.count(), 0);
    assert!(registry.lock().entries.is_empty());
    assert_eq!(registry.lock().untracked, 0);
}

#[test]
fn long_ids_and_names_are_cut_on_a_character_boundary() {
    let registry = LiveRequests::default();
    let now = Instant::now();
    let _tracked = registry.track(origin(&"é".repeat(40), None), &"x".repeat(500), now);
    let report = &registry.reports(now, 1).0[0];
    assert_eq!(report.id, "é".repeat(32));
    assert_eq!(report.model.len(), MODEL_NAME_BYTES_MAX);
}

/// A client that leaves drops the answer's stream mid-way: the guard inside goes with it.
#[tokio::test]
async fn a_dropped_stream_removes_its_entry() {
    let registry = LiveRequests::default();
    let tracked = registry.track(origin("gone", None), "m", Instant::now());
    let mut stream = Box::pin(async_stream::stream! {
        let tracked = tracked;
        for _ in 0..1_000 {
            tracked.token(Instant::now());
            yield ();
        }
    });
    stream.next().await;
    stream.next().await;
    assert_eq!(registry.reports(Instant::now(), 32).0[0].tokens, 2);
    drop(stream);
    assert_eq!(registry.count(), 0);
}

#[tokio::test]
async fn the_origin_is_readable_inside_its_scope_only() {
    assert_eq!(current_origin(), Origin::default());
    let inside = with_origin(origin("abc", Some(3)), async {
        tokio::task::yield_now().await;
        current_origin()
    })
    .await;
    assert_eq!(inside, origin("abc", Some(3)));
    assert_eq!(current_origin(), Origin::default());
}
