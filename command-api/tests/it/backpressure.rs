//! A slow broker: writes past MAX_IN_FLIGHT_WRITES are shed with 503 at once instead of
//! queueing, and the writes that were admitted are acknowledged once the broker answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::OwnBroker;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::{Req, TestApp, config, read_record, spawn_app_with};

const BOUND: usize = 3;

fn sign_up(key: &str) -> Req {
    Req::new(Method::POST, "/v1/users")
        .json(json!({"display_name": "Ada"}))
        .header("idempotency-key", key)
}

/// The value of an unlabelled series in the app's `/metrics`.
async fn metric(app: &TestApp, name: &str) -> Option<f64> {
    let text = app.get("/metrics").await.text;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until `count` writes hold a permit, as the gauge says. The requests in flight give no
/// other signal that they got past admission, so this polls, with a bound.
async fn wait_for_in_flight(app: &TestApp, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let in_flight = metric(app, "command_writes_in_flight").await;
        if in_flight == Some(count as f64) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} writes never were in flight (gauge: {in_flight:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_write_past_the_bound_is_shed_at_once_and_the_admitted_ones_land_once_the_broker_answers()
{
    let mut broker = OwnBroker::start().await;
    let mut config = config(
        &broker.brokers(),
        &test_support::unique_topic("command-api-backpressure"),
    );
    config.max_in_flight_writes = BOUND as u32;
    // Far longer than the broker stays paused: the admitted writes must be acknowledged when
    // it goes on, not time out (which would also retire the producer, see appender.rs).
    config.append_timeout_ms = 60_000;
    let app = Arc::new(spawn_app_with(config).await);

    // The producer gets its id from a broker that answers; then the broker stops answering.
    app.send(sign_up("before")).await.accepted();
    let before = app.end_offset_sum().await;
    broker.pause();

    let held: Vec<_> = (0..BOUND)
        .map(|i| {
            let app = Arc::clone(&app);
            tokio::spawn(async move { app.send(sign_up(&format!("held-{i}"))).await })
        })
        .collect();
    wait_for_in_flight(&app, BOUND).await;

    // Answered while the broker is still paused, so it cannot have waited for it. The bound is
    // against a hang (far below the append timeout), not a timing assertion.
    let shed = tokio::time::timeout(Duration::from_secs(10), app.send(sign_up("shed")))
        .await
        .expect("the write past the bound is answered at once, not held");
    let body = shed.problem(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["type"], "/problems/overloaded", "{body}");
    let retry_after: u64 = shed
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    assert_eq!(metric(&app, "command_writes_shed_total").await, Some(1.0));
    assert_eq!(
        metric(&app, "command_writes_in_flight").await,
        Some(BOUND as f64)
    );

    broker.unpause();
    let mut accepted = Vec::new();
    for write in held {
        accepted.push(write.await.expect("the request task ends").accepted());
    }
    // Each admitted write is in the log exactly once, where its token says, and nothing else
    // is: the shed write appended nothing.
    assert_eq!(app.end_offset_sum().await, before + BOUND as i64);
    for write in &accepted {
        let record = read_record(&app.brokers, &app.topic, write.token).await;
        assert_eq!(record.envelope.command_id, write.command_id);
    }
    let mut commands: Vec<_> = accepted.iter().map(|a| a.command_id).collect();
    commands.sort();
    commands.dedup();
    assert_eq!(commands.len(), BOUND);
    // The permits came back with the acknowledgements.
    assert_eq!(metric(&app, "command_writes_in_flight").await, Some(0.0));
    app.send(sign_up("after")).await.accepted();
    broker.stop().await;
}

/// Sends a sign-up over a connection of its own and returns the connection without reading
/// the answer, so that the test can hang up on it.
async fn sign_up_and_leave_open(app: &TestApp, key: &str) -> TcpStream {
    let address = app.address.trim_start_matches("http://");
    let body = json!({"display_name": "Ada"}).to_string();
    let request = format!(
        "POST /v1/users HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Idempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(address).await.expect("connects");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("the request is sent");
    stream
}

/// How many of the server's sockets on `server_port` still talk to one of `client_ports`, from
/// /proc/net/tcp (IPv4: the service listens on 127.0.0.1).
fn server_sockets_of(server_port: u16, client_ports: &[u16]) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port_of = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|hex| u16::from_str_radix(hex, 16).ok())
    };
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let (local, remote) = (
                fields.next().and_then(port_of),
                fields.next().and_then(port_of),
            );
            local == Some(server_port) && remote.is_some_and(|p| client_ports.contains(&p))
        })
        .count()
}

#[tokio::test]
async fn a_write_whose_client_hung_up_still_counts_until_the_broker_answers_it() {
    let mut broker = OwnBroker::start().await;
    let mut config = config(
        &broker.brokers(),
        &test_support::unique_topic("command-api-backpressure-gone"),
    );
    config.max_in_flight_writes = BOUND as u32;
    config.append_timeout_ms = 60_000;
    let app = spawn_app_with(config).await;
    app.send(sign_up("before")).await.accepted();
    let before = app.end_offset_sum().await;
    broker.pause();

    let mut streams = Vec::new();
    for i in 0..BOUND {
        streams.push(sign_up_and_leave_open(&app, &format!("gone-{i}")).await);
    }
    wait_for_in_flight(&app, BOUND).await;
    let client_ports: Vec<u16> = streams
        .iter()
        .map(|s| s.local_addr().expect("a local address").port())
        .collect();
    // Hanging up sends each connection's FIN now; the server closes its end only once it has
    // dropped the request, handler and all. Its sockets going away is that signal (polled,
    // with a bound: there is no other).
    drop(streams);
    let server_port: u16 = app
        .address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port");
    let deadline = Instant::now() + Duration::from_secs(30);
    while server_sockets_of(server_port, &client_ports) > 0 {
        assert!(
            Instant::now() < deadline,
            "the server never closed the connections its clients left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The records are still in the producer's queue, so their writes still count.
    assert_eq!(
        metric(&app, "command_writes_in_flight").await,
        Some(BOUND as f64)
    );
    let shed = tokio::time::timeout(Duration::from_secs(10), app.send(sign_up("shed")))
        .await
        .expect("the write past the bound is answered at once, not held");
    assert_eq!(
        shed.problem(StatusCode::SERVICE_UNAVAILABLE)["type"],
        "/problems/overloaded"
    );

    // Once the broker answers, the abandoned writes are acknowledged (nobody hears it) and
    // their permits come back.
    broker.unpause();
    wait_for_in_flight(&app, 0).await;
    assert_eq!(app.end_offset_sum().await, before + BOUND as i64);
    app.send(sign_up("after")).await.accepted();
    broker.stop().await;
}
