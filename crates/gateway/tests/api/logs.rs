//! The log of the real binary: `--log-format json` writes one JSON object per line, and
//! every line written for a request carries its request id, which is answered in
//! `X-Request-Id`. No token reaches the log.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{parts, ServedBinary};

const ROOT_KEY: &str = "kgr_logs_test_root_key_00000000000000001";

#[tokio::test]
async fn json_logs_carry_the_request_id_and_no_token() {
    let served = ServedBinary::start(ROOT_KEY, |command| {
        command.args(["--log-format", "json"]).env("KEYGATE_LOG", "info");
    });
    let address = served.address.clone();

    let client = reqwest::Client::new();
    let (status, created) = parts(
        client
            .post(format!("{address}/root/apps"))
            .header("Authorization", ROOT_KEY)
            .json(&json!({"name": "logs", "reuse_grace": 0}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (app_id, app_key) =
        (created["app_id"].as_str().unwrap(), created["app_key"].as_str().unwrap());
    let post = |path: &str, id: Option<&str>, body: Value| {
        let mut request = client
            .request(Method::POST, format!("{address}/app/{app_id}/{path}"))
            .header("Authorization", app_key)
            .json(&body);
        if let Some(id) = id {
            request = request.header("X-Request-Id", id);
        }
        request.send()
    };
    let signed =
        post("sign", None, json!({"sub": "alice", "ip": "203.0.113.9", "useragent": "ua"}))
            .await
            .unwrap();
    let generated = signed.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(generated.parse::<ulid::Ulid>().is_ok(), "a new ULID when none is sent: {generated}");
    let signed: Value = signed.json().await.unwrap();
    let renew =
        json!({"refresh_token": signed["refresh_token"], "ip": "203.0.113.9", "useragent": "ua"});
    let renewed = post("renew", Some("trace-42"), renew.clone()).await.unwrap();
    assert_eq!(renewed.headers()["x-request-id"], "trace-42", "a well-formed id is kept");
    let renewed: Value = renewed.json().await.unwrap();
    // The replay is reuse: a warning written inside the request.
    let replay = post("renew", Some("trace-43"), renew).await.unwrap();
    assert_eq!(replay.status(), 401);
    let odd = post("verify", Some("bad id\twith spaces"), json!({"token": "x"})).await.unwrap();
    let replaced = odd.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(replaced.parse::<ulid::Ulid>().is_ok(), "a malformed id is replaced: {replaced}");

    // Stopped cleanly, it has written every line of those requests.
    let (status, log) = served.terminate();
    assert!(status.success(), "{status:?}");
    let log = String::from_utf8(log).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let reuse = lines
        .iter()
        .find(|l| l["fields"]["message"] == "refresh token reuse detected")
        .unwrap_or_else(|| panic!("no reuse warning in {log}"));
    assert_eq!(reuse["level"], "WARN");
    assert_eq!(reuse["span"]["id"], "trace-43", "{reuse}");
    let access = |id: &str| {
        lines.iter().any(|l| {
            let message = l["fields"]["message"].as_str().unwrap_or_default();
            message.contains("/renew") && message.ends_with(&format!("request_id={id}"))
        })
    };
    assert!(access("trace-42") && access("trace-43"), "access log lines carry the id: {log}");
    assert!(!log.contains("bad id"), "a malformed id is never logged");
    for token in [&signed["refresh_token"], &signed["auth_token"], &renewed["refresh_token"]] {
        assert!(!log.contains(token.as_str().unwrap()), "a token reached the log");
    }
    assert!(!log.contains(app_key) && !log.contains(ROOT_KEY), "a secret reached the log");
}
