//! Stopping the real `keygate serve`: on SIGTERM it stops taking connections, answers the
//! request in flight, stops its background jobs and exits 0.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::ServedBinary;

/// Reads one HTTP/1.1 response with a `Content-Length` body from `stream`.
fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the connection closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if body.len() >= length {
            let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
            return (status, body[..length].to_owned());
        }
    }
}

#[tokio::test]
async fn sigterm_answers_the_request_in_flight_then_exits_0() {
    let root_key = format!("kgr_test_{}", ulid::Ulid::new());
    let mut served = ServedBinary::start(&root_key, |command| {
        command.env("KEYGATE_LOG", "info");
    });
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{}/root/apps", served.address))
        .header("Authorization", &root_key)
        .json(&json!({"name": "drain"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (app_id, app_key) =
        (created["app_id"].as_str().unwrap(), created["app_key"].as_str().unwrap());

    // A connection the server has taken: one request answered on it first.
    let host = served.address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(stream, "GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut stream).0, 200);

    // Then a sign request, of which only half the body has arrived when SIGTERM comes.
    let body =
        json!({"sub": "drained", "ip": "203.0.113.7", "useragent": "test-agent"}).to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    write!(
        stream,
        "POST /app/{app_id}/sign HTTP/1.1\r\nHost: {host}\r\nAuthorization: {app_key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        body.len()
    )
    .unwrap();
    stream.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = served.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());

    // Still running, and waiting for that request: new connections are no longer served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(served.child.try_wait().unwrap().is_none(), "it exited with a request in flight");
    let refused = client.get(format!("{}/healthz", served.address)).timeout(Duration::from_secs(2));
    assert!(refused.send().await.is_err(), "a stopping gateway took a new request");

    stream.write_all(rest.as_bytes()).unwrap();
    let (status, answer) = read_response(&mut stream);
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert!(answer["refresh_token"].is_string(), "{answer}");
    drop(stream);

    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = served.child.try_wait().unwrap() {
            break exit;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "not stopped 20 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    let log = String::from_utf8(served.stop()).unwrap();
    assert!(log.contains("stopping: answering the requests in flight"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}
