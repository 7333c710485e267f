//! Resuming after a dropped connection with `Last-Event-ID` (D6).


use sse_gateway_tests::payloads::valid_text;
use sse_gateway_tests::process::{events_in, events_replayed};
use sse_gateway_tests::token::user;
use sse_gateway_tests::process::GatewayProcess;
use sse_gateway_tests::{for_each_binary, Bin, ConfigBuilder, Fixture, SseEvent, WAIT};

const TYPES: [&str; 3] = ["deal.created", "deal.updated", "calculation.added"];

async fn publish_n(fx: &Fixture, n: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    for i in 0..n {
        let kind = TYPES[i % TYPES.len()];
        let body = valid_text(kind);
        fx.publish("deals", kind, &body).await;
        bodies.push(body);
    }
    bodies
}

/// Waits until the gateway took `n` deals events in all: the events published while a client was
/// away are in its buffer before it comes back, so they can only reach it as a replay (not live,
/// which would pass a resume test with the resume broken).
async fn gateway_has(fx: &Fixture, n: usize) {
    fx.gw.wait_metric(&events_in("deals"), n as f64).await;
}

async fn replayed_now(fx: &Fixture) -> f64 {
    fx.gw.metric(&events_replayed("deals")).await.expect("the sample is on /metrics")
}

fn data(events: &[SseEvent]) -> Vec<String> {
    events.iter().map(|e| e.data.clone()).collect()
}

async fn a_reconnect_with_last_event_id_gets_exactly_the_missed_events_then_live_ones(bin: Bin) {
    let fx = Fixture::start(bin, ConfigBuilder::new()).await;
    let alice = user("alice", &[]);
    let mut s = fx.gw.stream("deals", &alice).await;
    let before = publish_n(&fx, 3).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(s.expect_event("an event before the drop").await);
    }
    assert_eq!(data(&seen), before);
    let last_id = s.last_event_id();
    assert_eq!(Some(last_id.as_str()), seen[2].id.as_deref());
    drop(s); // the connection drops

    let missed = publish_n(&fx, 3).await;
    gateway_has(&fx, 6).await;
    let replays_before = replayed_now(&fx).await;
    let mut s = fx.gw.stream_with("deals", &alice, &[("Last-Event-ID", &last_id)]).await;
    let mut replayed = Vec::new();
    for _ in 0..3 {
        let ev = s.next_non_heartbeat(sse_gateway_tests::WAIT).await.expect("a replayed event");
        assert!(ev.id.is_some(), "expected a replayed event, got {ev:?} (no history_gap inside the window)");
        replayed.push(ev);
    }
    assert_eq!(data(&replayed), missed, "exactly the missed events, in order");
    assert_eq!(replayed_now(&fx).await - replays_before, 3.0, "the missed events came as a replay");
    let ids: Vec<_> = seen.iter().chain(&replayed).map(|e| e.id.clone().unwrap()).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "an id came twice: {ids:?}");

    let live = publish_n(&fx, 1).await;
    let ev = s.next_non_heartbeat(sse_gateway_tests::WAIT).await.expect("the live event");
    assert_eq!(ev.data, live[0], "after the replay comes the live event, nothing in between");
    // Nothing trails it: the next event is one published after it.
    let marker = publish_n(&fx, 1).await;
    let ev = s.next_non_heartbeat(sse_gateway_tests::WAIT).await.expect("the marker event");
    assert_eq!(ev.data, marker[0], "a duplicate after the live event: {ev:?}");
}

async fn the_last_event_id_query_parameter_resumes_a_first_connect(bin: Bin) {
    let fx = Fixture::start(bin, ConfigBuilder::new()).await;
    let alice = user("alice", &[]);
    let mut s = fx.gw.stream("deals", &alice).await;
    publish_n(&fx, 1).await;
    let first = s.expect_event("the first event").await;
    drop(s);
    let missed = publish_n(&fx, 2).await;
    gateway_has(&fx, 3).await;
    let replays_before = replayed_now(&fx).await;
    let auth = format!("Bearer {alice}");
    let path = format!("/api/v1/streams/deals?last_event_id={}", first.id.unwrap());
    let mut s = fx.gw.open(&path, &[("Authorization", &auth)]).await;
    assert_eq!(s.status, 200);
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(s.next_non_heartbeat(sse_gateway_tests::WAIT).await.expect("a replayed event"));
    }
    assert_eq!(data(&got), missed);
    assert_eq!(replayed_now(&fx).await - replays_before, 2.0, "the missed events came as a replay");
    // Then live, nothing replayed twice: a marker is next.
    let marker = publish_n(&fx, 1).await;
    let next = s.next_non_heartbeat(sse_gateway_tests::WAIT).await.expect("the marker");
    assert_eq!(data(&[next]), marker, "the marker right after the replay");
}

async fn an_unknown_last_event_id_gets_history_gap_first_then_live_events(bin: Bin) {
    let fx = Fixture::start(bin, ConfigBuilder::new()).await;
    let mut s = fx.gw.stream("deals", &user("alice", &[])).await;
    publish_n(&fx, 2).await;
    s.expect_event("a first event").await;
    let real = s.expect_event("a second event").await.id.unwrap();
    drop(s);
    let mut stale = vec!["garbage".to_string(), format!("{real}-7")];
    let (epoch, seq) = real
        .split_once('-')
        .and_then(|(e, s)| Some((e.parse::<u64>().ok()?, s.parse::<u64>().ok()?)))
        .unwrap_or_else(|| panic!("an id of the in-process source is <epoch>-<seq>: {real}"));
    stale.push(format!("{}-{seq}", epoch.saturating_sub(1))); // an earlier epoch
    stale.push(format!("{epoch}-{}", seq + 1_000_000)); // never issued
    for id in &stale {
        let mut s = fx.gw.stream_with("deals", &user("alice", &[]), &[("Last-Event-ID", id)]).await;
        let ev = s.next_non_heartbeat(sse_gateway_tests::WAIT).await.expect("a first frame");
        assert_eq!(ev.event, "warning", "Last-Event-ID {id:?}: {ev:?}");
        assert_eq!(ev.json(), serde_json::json!({"code": "history_gap", "channel": "deals"}));
        assert_eq!(ev.id, None);
        let live = publish_n(&fx, 1).await;
        assert_eq!(s.expect_event("a live event after the gap").await.data, live[0], "{id:?}");
    }
    let gaps = fx.gw.metric("sse_gateway_history_gaps_total").await.expect("the sample is on /metrics");
    assert_eq!(gaps, stale.len() as f64, "history_gaps_total: one per stale id");
}

async fn an_id_older_than_the_buffer_gets_history_gap_and_then_only_live_events(bin: Bin) {
    let cfg = ConfigBuilder::new().raw("channels.deals", "buffer_events", "2");
    let fx = Fixture::start(bin, cfg).await;
    let alice = user("alice", &[]);
    let mut s = fx.gw.stream("deals", &alice).await;
    publish_n(&fx, 1).await;
    let first = s.expect_event("the first event").await;
    drop(s);
    publish_n(&fx, 5).await; // the buffer keeps only the last 2: `first`'s successors are gone
    gateway_has(&fx, 6).await;
    let mut s = fx.gw.stream_with("deals", &alice, &[("Last-Event-ID", first.id.as_deref().unwrap())]).await;
    let ev = s.next_non_heartbeat(sse_gateway_tests::WAIT).await.expect("a first frame");
    assert_eq!(ev.event, "warning", "{ev:?}");
    assert_eq!(ev.json(), serde_json::json!({"code": "history_gap", "channel": "deals"}));
    let live = publish_n(&fx, 1).await;
    assert_eq!(s.expect_event("the live event").await.data, live[0], "no partial replay after a gap");
}

/// Publishes one valid `deal.created` through the in-process source's endpoint; its event id.
async fn publish_in_process(gw: &GatewayProcess, publisher: &str) -> String {
    publish_to(gw, publisher, "deals", "deal.created").await
}

/// Publishes one valid event of type `kind` to `channel` through the in-process source's
/// endpoint; its event id.
async fn publish_to(gw: &GatewayProcess, publisher: &str, channel: &str, kind: &str) -> String {
    let body = serde_json::json!({"type": kind, "data": sse_gateway_tests::payloads::valid(kind)}).to_string();
    let auth = format!("Bearer {publisher}");
    let path = format!("/api/v1/publish/{channel}");
    let r = gw.request("POST", &path, &[("Authorization", &auth), ("Content-Type", "application/json")], body.as_bytes()).await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["id"].as_str().expect("the event id").to_string()
}

/// D6: ids carry an epoch, the process's start for the in-process source (and classic queues):
/// after a restart, an id the old process gave gets `history_gap`, never a replay of the new
/// process's events that happen to share its sequence number.
async fn after_a_restart_an_id_of_the_old_process_gets_history_gap_not_a_replay(bin: Bin) {
    let cfg = ConfigBuilder::new().raw("server", "publish_endpoint", "true").render();
    let publisher = user("svc", &["publisher"]);
    let gw = GatewayProcess::start(bin, &cfg).await;
    let old = publish_in_process(&gw, &publisher).await;
    drop(gw);
    let gw = GatewayProcess::start(bin, &cfg).await;
    let new: Vec<String> = publish_n_in_process(&gw, &publisher, 3).await;
    assert_ne!(old.split('-').next(), new[0].split('-').next(), "a new epoch: {old} then {new:?}");
    let mut s = gw.stream_with("deals", &user("alice", &[]), &[("Last-Event-ID", &old)]).await;
    let first = s.next_non_heartbeat(WAIT).await.expect("a first frame");
    assert_eq!(first.json(), serde_json::json!({"code": "history_gap", "channel": "deals"}), "{first:?}");
    let marker = publish_in_process(&gw, &publisher).await;
    let next = s.expect_event("the next live event").await;
    assert_eq!(next.id.as_deref(), Some(marker.as_str()), "nothing replayed before it");
}

/// Ids do not carry their channel's name, but each channel has its own epoch: an id of `tasks`
/// sent to resume `deals` (a page that keeps one remembered id for all its streams) gets
/// `history_gap`, not a replay of deals from the position the tasks id names.
async fn an_id_of_another_channel_gets_history_gap_not_a_replay_from_its_number(bin: Bin) {
    let cfg = ConfigBuilder::new().raw("server", "publish_endpoint", "true").render();
    let publisher = user("svc", &["publisher"]);
    let gw = GatewayProcess::start(bin, &cfg).await;
    let task = publish_to(&gw, &publisher, "tasks", "task.created").await;
    let deals = publish_n_in_process(&gw, &publisher, 4).await;
    let mut s = gw.stream_with("deals", &user("alice", &[]), &[("Last-Event-ID", &task)]).await;
    let first = s.next_non_heartbeat(WAIT).await.expect("a first frame");
    assert_eq!(
        first.json(),
        serde_json::json!({"code": "history_gap", "channel": "deals"}),
        "tasks id {task} on deals ({deals:?}): {first:?}"
    );
    let marker = publish_in_process(&gw, &publisher).await;
    let next = s.expect_event("the next live event").await;
    assert_eq!(next.id.as_deref(), Some(marker.as_str()), "nothing replayed before it");
}

async fn publish_n_in_process(gw: &GatewayProcess, publisher: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(publish_in_process(gw, publisher).await);
    }
    ids
}

for_each_binary!(
    an_id_of_another_channel_gets_history_gap_not_a_replay_from_its_number,
    after_a_restart_an_id_of_the_old_process_gets_history_gap_not_a_replay,
    a_reconnect_with_last_event_id_gets_exactly_the_missed_events_then_live_ones,
    the_last_event_id_query_parameter_resumes_a_first_connect,
    an_unknown_last_event_id_gets_history_gap_first_then_live_events,
    an_id_older_than_the_buffer_gets_history_gap_and_then_only_live_events,
);
