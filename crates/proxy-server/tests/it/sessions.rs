//! Sessions: resume with replay, slow clients, expiry, and what upstream
//! faults do to connected clients.

use std::time::Duration;

use discord_sim::Control;

use discord_sim::{GatewayClient, Received};

use super::{Setup, assert_contiguous, marked};

/// Resumes `session` from `last` on a new connection, collecting the
/// replayed markers into `seen` (each `s` one above the one before); returns
/// the client, past RESUMED, and RESUMED's `s`.
pub(super) async fn resumed(
    setup: &Setup,
    session: &str,
    last: u64,
    seen: &mut Vec<(u64, u64)>,
) -> (GatewayClient, u64) {
    let mut client = setup.client("v=10&encoding=json").await;
    client
        .resume(setup.sim.token(), session, last)
        .await
        .unwrap();
    let mut s = last;
    loop {
        let payload = client.payload().await.unwrap();
        let seq = payload["s"].as_u64().unwrap();
        assert_eq!(seq, s + 1, "{payload}");
        s = seq;
        if payload["t"] == "RESUMED" {
            return (client, s);
        }
        if let Some(n) = super::marker(&payload) {
            seen.push((seq, n));
        }
    }
}

/// Asserts that a RESUME of `session` from `seq` is answered with op 9
/// `false`: identify again.
async fn assert_refused(setup: &Setup, session: &str, seq: u64) {
    let mut client = setup.client("v=10&encoding=json").await;
    client
        .resume(setup.sim.token(), session, seq)
        .await
        .unwrap();
    let nine = client.op(9).await.unwrap();
    assert_eq!(nine["d"], false, "{nine}");
}

/// Reads until the server closes, collecting markers into `seen` and the
/// last `s` into `last` (each `s` one above the one before); returns the
/// close code.
pub(super) async fn until_close(
    client: &mut GatewayClient,
    last: &mut u64,
    seen: &mut Vec<(u64, u64)>,
) -> Option<u16> {
    loop {
        match client.recv().await.unwrap() {
            Received::Close(code) => return code,
            Received::Payload(payload) => {
                if let Some(s) = payload["s"].as_u64() {
                    if *last > 0 {
                        assert_eq!(s, *last + 1, "{payload}");
                    }
                    *last = s;
                    if let Some(n) = super::marker(&payload) {
                        seen.push((s, n));
                    }
                }
            }
            _ => unreachable!(),
        }
    }
}

#[tokio::test]
async fn resume_after_a_drop_replays_exactly_the_missed_events() {
    let setup = Setup::new(|c| c.events_per_sec = 500, |_, _| {}).await;
    let (mut client, ready, creates) = setup.identified(0, 1).await;
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let mut seen = marked(&mut client, 1 + creates.len() as u64, 100).await;
    let last_seq = seen.last().unwrap().0;
    drop(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut client, s) = resumed(&setup, &session, last_seq, &mut seen).await;
    assert!(
        seen.len() > 150,
        "about 250 events were missed and replayed: {}",
        seen.len()
    );
    seen.extend(marked(&mut client, s, 100).await);
    assert_contiguous(&seen);
}

#[tokio::test]
async fn a_resume_of_an_unknown_or_ended_session_is_told_to_identify() {
    let setup = Setup::new(|c| c.events_per_sec = 100, |_, _| {}).await;
    assert_refused(&setup, "0123456789abcdef0123456789abcdef", 5).await;

    // A client that closes with 1000 ends its session.
    let (mut client, ready, creates) = setup.identified(0, 1).await;
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let seen = marked(&mut client, 1 + creates.len() as u64, 5).await;
    client.close(1000).await.unwrap();
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_refused(&setup, &session, seen.last().unwrap().0).await;
}

#[tokio::test]
async fn a_session_past_its_ttl_cannot_resume() {
    let setup = Setup::new(
        |c| c.events_per_sec = 100,
        |_, server| server.session_ttl = Duration::from_millis(300),
    )
    .await;
    let (mut client, ready, creates) = setup.identified(0, 1).await;
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let seen = marked(&mut client, 1 + creates.len() as u64, 5).await;
    drop(client);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_refused(&setup, &session, seen.last().unwrap().0).await;
}

#[tokio::test]
async fn a_client_that_pauses_catches_up_and_one_that_stays_slow_resumes_losing_nothing() {
    let setup = Setup::new(
        |c| c.events_per_sec = 4000,
        |_, server| server.backpressure = 20,
    )
    .await;
    let (mut client, ready, creates) = setup.identified(0, 1).await;
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let mut seen = marked(&mut client, 1 + creates.len() as u64, 10).await;
    // Stop reading for a while (thousands of events behind), then read:
    // what it missed is read back from the ring, and it catches up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = seen.last().unwrap().0;
    seen.extend(marked(&mut client, after, 12_000).await);
    // Then read at a third of the shard's rate: steadily further behind,
    // it is closed, resumably.
    let mut last = seen.last().unwrap().0;
    let code = loop {
        match client.recv().await.unwrap() {
            Received::Close(code) => break code,
            Received::Payload(payload) => {
                let s = payload["s"].as_u64().unwrap();
                assert_eq!(s, last + 1, "{payload}");
                last = s;
                if let Some(n) = super::marker(&payload) {
                    seen.push((s, n));
                }
                if s % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(8)).await;
                }
            }
            _ => unreachable!(),
        }
    };
    assert_eq!(code, Some(4000), "closed as too slow, resumable");
    let (mut client, s) = resumed(&setup, &session, last, &mut seen).await;
    seen.extend(marked(&mut client, s, 50).await);
    assert_contiguous(&seen);
}

#[tokio::test]
async fn an_upstream_resume_loses_and_repeats_nothing_for_clients() {
    let setup = Setup::new(|c| c.events_per_sec = 500, |_, _| {}).await;
    let (mut client, _, creates) = setup.identified(0, 1).await;
    let mut seen = marked(&mut client, 1 + creates.len() as u64, 50).await;
    for control in [
        Control::Reconnect,
        Control::Cut,
        Control::InvalidSession(true),
    ] {
        assert_eq!(setup.sim.control(0, control), 1);
        let after = seen.last().unwrap().0;
        seen.extend(marked(&mut client, after, 200).await);
    }
    assert_contiguous(&seen);
}

#[tokio::test]
async fn an_upstream_reidentify_tells_clients_to_identify_again() {
    let setup = Setup::new(|c| c.events_per_sec = 200, |_, _| {}).await;
    let (mut client, _, creates) = setup.identified(0, 1).await;
    marked(&mut client, 1 + creates.len() as u64, 10).await;
    assert_eq!(setup.sim.control(0, Control::InvalidSession(false)), 1);
    let nine = client.op(9).await.unwrap();
    assert_eq!(nine["d"], false, "the documented reset");
    // Identifying again on the same connection gets the new state.
    client.identify(setup.sim.token(), [0, 1], 1).await.unwrap();
    let ready = client.dispatch("READY").await.unwrap();
    assert_eq!(ready["s"], 1);
}

#[tokio::test]
async fn shutdown_closes_clients_with_going_away_and_ends_upstream_sessions() {
    let setup = Setup::new(|c| c.events_per_sec = 100, |_, _| {}).await;
    let (mut client, _, creates) = setup.identified(0, 1).await;
    marked(&mut client, 1 + creates.len() as u64, 5).await;
    let super::Setup { sim, proxy } = setup;
    proxy.shutdown().await;
    let code = until_close(&mut client, &mut 0, &mut Vec::new()).await;
    assert_eq!(code, Some(1001));
    let upstream = sim.connections();
    assert!(upstream.iter().all(|c| !c.open), "upstream closed");
    assert!(
        upstream.iter().any(|c| c.close_code == Some(1000)),
        "normally"
    );
}

#[tokio::test]
async fn a_resume_takes_the_session_from_a_connection_not_yet_known_dead() {
    let setup = Setup::new(|c| c.events_per_sec = 500, |_, _| {}).await;
    let (mut old, ready, creates) = setup.identified(0, 1).await;
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let mut seen = marked(&mut old, 1 + creates.len() as u64, 50).await;
    let last = seen.last().unwrap().0;
    // The old connection is still open as far as the proxy knows.
    let (mut client, s) = resumed(&setup, &session, last, &mut seen).await;
    seen.extend(marked(&mut client, s, 100).await);
    assert_contiguous(&seen);
    // And the old connection was let go.
    let code = until_close(&mut old, &mut 0, &mut Vec::new()).await;
    assert_eq!(code, Some(4000));
}

#[tokio::test]
async fn disconnecting_every_client_is_resumable_with_nothing_lost() {
    let setup = Setup::new(|c| c.events_per_sec = 300, |_, _| {}).await;
    let (mut client, ready, creates) = setup.identified(0, 1).await;
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let mut seen = marked(&mut client, 1 + creates.len() as u64, 20).await;
    setup.proxy.disconnect_clients();
    let mut last = seen.last().unwrap().0;
    let code = until_close(&mut client, &mut last, &mut seen).await;
    assert_eq!(code, Some(4000));
    let (mut client, s) = resumed(&setup, &session, last, &mut seen).await;
    seen.extend(marked(&mut client, s, 50).await);
    assert_contiguous(&seen);
}
