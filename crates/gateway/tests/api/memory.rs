//! The memory of the real binary: key checks that miss the cache run argon2, 19 MiB each,
//! and that memory leaves the process when the check ends. Before the allocator was tuned,
//! each worker thread that had run argon2 kept its 19 MiB for the life of the process
//! (40 MiB of a 100 MiB peak under load).

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use serde_json::json;

use crate::helpers::{parts, ServedBinary};

const ROOT_KEY: &str = "kgr_memory_test_root_key_00000000000001";

fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

#[tokio::test]
async fn argon2_memory_is_returned_after_key_checks() {
    let served = ServedBinary::start(ROOT_KEY, |command| {
        command.env("KEYGATE_LOG", "warn");
    });
    let pid = served.child.id();
    let client = reqwest::Client::new();
    let before = resident_mib(pid);
    // Each round runs argon2 twice: hashing the new app key, and checking it on the first
    // of two concurrent signs (the other waits for that check).
    for round in 0..3 {
        let (status, created) = parts(
            client
                .post(format!("{}/root/apps", served.address))
                .header("Authorization", ROOT_KEY)
                .json(&json!({"name": format!("memory-{round}")}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let sign = |sub: &'static str| {
            client
                .post(format!(
                    "{}/app/{}/sign",
                    served.address,
                    created["app_id"].as_str().unwrap()
                ))
                .header("Authorization", created["app_key"].as_str().unwrap())
                .json(&json!({"sub": sub, "ip": "203.0.113.1", "useragent": "ua"}))
                .send()
        };
        let (a, b) = tokio::join!(sign("alice"), sign("bob"));
        assert_eq!(a.unwrap().status(), 200);
        assert_eq!(b.unwrap().status(), 200);
    }
    let grown = resident_mib(pid) - before;
    assert!(
        grown < 12.0,
        "after argon2 runs of 19 MiB each the resident set grew by {grown:.1} MiB"
    );
    served.stop();
}
