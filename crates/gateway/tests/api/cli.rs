//! The `keygate` binary as a new user meets it: `serve` on the embedded default in an
//! empty directory, then admin commands from another process on the same data.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// A `keygate serve` child process, killed on drop.
struct Server {
    child: Child,
    address: String,
    stdout: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygate(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(dir).env_remove("KEYGATE_DATABASE_URL").env_remove("KEYGATE_ROOT_KEY");
    command
}

/// Starts `serve` and reads its stdout up to the "listening" line.
fn serve(dir: &Path, extra: &[&str]) -> Server {
    let mut child = keygate(dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut stdout = Vec::new();
    let address = loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "serve exited early: {stdout:?}");
        stdout.push(line.clone());
        if let Some(rest) = line.strip_prefix("keygate listening on ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    Server { child, address, stdout }
}

fn json_of(output: &Output) -> Value {
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|_| panic!("stdout is not one JSON object: {text}"))
}

fn root_key_in(lines: &[String]) -> Option<String> {
    lines.iter().map(|l| l.trim()).find(|l| l.starts_with("kgr_")).map(str::to_owned)
}

#[tokio::test]
async fn a_new_user_serves_creates_an_app_and_fetches_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let root_key = root_key_in(&server.stdout).expect("the first start prints the root key");
    assert!(dir.path().join("keygate-data/keygate.db").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("keygate-data/master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Another process, same data dir: the CLI.
    let output =
        keygate(dir.path()).args(["app", "create", "--name", "demo", "--json"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let created = json_of(&output);
    let (app_id, app_key) =
        (created["app_id"].as_str().unwrap(), created["app_key"].as_str().unwrap());
    assert!(app_key.starts_with("kg_"));
    assert!(created["key_id"].is_string() && created["public_key"].is_string());

    let client = reqwest::Client::new();
    let mut status = 0;
    // The gateway sees an app created by another process within its cache TTL (5 s); a
    // brand-new app is not cached yet, so it is seen at once.
    for _ in 0..50 {
        let response = client
            .get(format!("{}/app/{app_id}/pub-keys", server.address))
            .header("Authorization", app_key)
            .send()
            .await
            .unwrap();
        status = response.status().as_u16();
        if status == 200 {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["keys"][0]["key_id"], created["key_id"]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);

    // Sessions opened over HTTP are listed and revoked by the CLI, and the gateway sees
    // the revocation at once.
    let signed: Value = client
        .post(format!("{}/app/{app_id}/sign", server.address))
        .header("Authorization", app_key)
        .json(&serde_json::json!({"sub": "u1", "ip": "192.0.2.1", "useragent": "cli-test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = json_of(
        &keygate(dir.path())
            .args(["sessions", "list", "demo", "--sub", "u1", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(listed["sessions"][0]["session_id"], signed["session_id"]);
    let table =
        keygate(dir.path()).args(["sessions", "list", "demo", "--sub", "u1"]).output().unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains("cli-test"));
    let none = keygate(dir.path()).args(["sessions", "revoke", "demo"]).output().unwrap();
    assert!(!none.status.success(), "revoke needs --session, --sub or --all");
    let revoked = json_of(
        &keygate(dir.path())
            .args(["sessions", "revoke", "demo", "--sub", "u1", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(revoked["revoked"], 1);
    let response = client
        .post(format!("{}/app/{app_id}/renew", server.address))
        .header("Authorization", app_key)
        .json(&serde_json::json!({"refresh_token": signed["refresh_token"], "ip": "192.0.2.1", "useragent": "cli-test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // The root key works over HTTP.
    let response = client
        .get(format!("{}/root/apps", server.address))
        .header("Authorization", &root_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // A restart does not print the root key again.
    drop(server);
    let again = serve(dir.path(), &[]);
    assert_eq!(root_key_in(&again.stdout), None);
}

#[test]
fn admin_commands_print_json_and_tables() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| keygate(dir.path()).args(args).output().unwrap();

    let created = run(&[
        "app",
        "create",
        "--name",
        "shop",
        "--auth-ttl",
        "5m",
        "--refresh-ttl",
        "7d",
        "--json",
    ]);
    assert!(created.status.success());
    // The one-time root key goes to stderr, so stdout stays one JSON object.
    assert!(String::from_utf8_lossy(&created.stderr).contains("kgr_"));
    let app_id = json_of(&created)["app_id"].as_str().unwrap().to_owned();

    let shown = json_of(&run(&["app", "show", "shop", "--json"]));
    assert_eq!(shown["app"]["token_expire"], 300);
    assert_eq!(shown["app"]["refresh_expire"], 604_800);
    assert_eq!(shown["keys"].as_array().unwrap().len(), 2);

    let listed = run(&["app", "list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.starts_with("APP_ID"), "{text}");
    assert!(text.contains(&app_id) && text.contains("shop") && text.contains("5m"), "{text}");

    let rotation = json_of(&run(&["keys", "rotate", &app_id, "--json"]));
    let active = rotation["active_key_id"].as_str().unwrap().to_owned();
    let revoked = json_of(&run(&["keys", "revoke", &app_id, &active, "--json"]));
    assert_eq!(revoked["previous_status"], "active");
    let keys = json_of(&run(&["keys", "list", &app_id, "--json"]));
    let states: Vec<_> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states.iter().filter(|s| *s == "active").count(), 1);
    assert!(states.contains(&"revoked".to_owned()));

    let rotated = json_of(&run(&["app", "rotate-key", &app_id, "--grace", "10m", "--json"]));
    assert!(rotated["app_key"].as_str().unwrap().starts_with("kg_"));
    assert!(rotated["previous_key_valid_until"].is_i64());

    let updated = json_of(&run(&[
        "app",
        "update",
        &app_id,
        "--reuse-grace",
        "0",
        "--on-reuse",
        "revoke_subject",
        "--requests-per-second",
        "500",
        "--requests-burst",
        "50",
        "--json",
    ]));
    assert_eq!(updated["reuse_grace"], 0);
    assert_eq!(updated["on_reuse"], "revoke_subject");
    assert_eq!(
        (updated["requests_per_second"].as_i64(), updated["requests_burst"].as_i64()),
        (Some(500), Some(50))
    );
    let shown = run(&["app", "show", &app_id]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.lines().any(|l| l.split_whitespace().eq(["requests_per_second", "500"])),
        "{shown}"
    );

    let root = json_of(&run(&["root-key", "rotate", "--json"]));
    assert!(root["root_key"].as_str().unwrap().starts_with("kgr_"));

    // The audit trail, newest first, and paged.
    let events = json_of(&run(&["events", "shop", "--json"]));
    let kinds: Vec<_> =
        events["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["app_updated", "app_key_rotated", "key_revoked", "key_rotated", "app_created"],
        "{events}"
    );
    assert!(events["events"].as_array().unwrap().iter().all(|e| e["actor"] == "cli"));
    let first = json_of(&run(&["events", "shop", "--limit", "2", "--json"]));
    let next = first["next"].as_str().unwrap().to_owned();
    let second = json_of(&run(&["events", "shop", "--limit", "2", "--before", &next, "--json"]));
    assert_eq!(second["events"][0]["kind"], "key_revoked");
    let table = run(&["events", "shop"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("EVENT_ID") && text.contains("app_key_rotated"), "{text}");
    let bad = run(&["events", "shop", "--limit", "0"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("limit"));
    let rotated = json_of(&run(&["events", "shop", "--kind", "key_rotated", "--json"]));
    let kinds: Vec<_> =
        rotated["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["key_rotated"], "{rotated}");
    let bad = run(&["events", "shop", "--kind", "rotated"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("key_rotated"), "the kinds are named");

    // A webhook: the secret is printed once, never shown again.
    let set =
        json_of(&run(&["webhook", "set", "shop", "--url", "https://hooks.example/k", "--json"]));
    let secret = set["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let shown = run(&["webhook", "show", "shop", "--json"]);
    assert_eq!(json_of(&shown)["url"], "https://hooks.example/k");
    assert!(!String::from_utf8_lossy(&shown.stdout).contains(&secret));
    let plain_http = run(&["webhook", "set", "shop", "--url", "http://hooks.example/k"]);
    assert!(!plain_http.status.success());
    assert!(String::from_utf8_lossy(&plain_http.stderr).contains("https"));
    assert!(run(&["webhook", "remove", "shop"]).status.success());
    assert!(!run(&["webhook", "show", "shop"]).status.success());

    let refused = run(&["app", "delete", &app_id]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    let deleted = json_of(&run(&["app", "delete", &app_id, "--yes", "--json"]));
    assert_eq!(deleted["deleted"], app_id.as_str());
    assert_eq!(json_of(&run(&["app", "list", "--json"]))["apps"], serde_json::json!([]));
    // The events of the deleted app are still there, by its id.
    let events = json_of(&run(&["events", &app_id, "--limit", "1", "--json"]));
    assert_eq!(events["events"][0]["kind"], "app_deleted");
}

#[test]
fn compatibility_routes_are_checked_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/compat/seed-002.toml");
    let server = serve(dir.path(), &["--config", example.to_str().unwrap()]);
    assert!(
        server
            .stdout
            .iter()
            .any(|l| l.trim() == "compatibility route seed-002: POST /api/auth/refresh"),
        "{:?}",
        server.stdout
    );
    drop(server);

    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&example).unwrap().replace("body:refreshToken", "cookie:rt");
    std::fs::write(&bad, text).unwrap();
    let output = keygate(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("compat.routes[0].token: must be \"body:FIELD\" or \"header:NAME\""),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"));
}

#[test]
fn bad_arguments_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| keygate(dir.path()).args(args).output().unwrap();

    let bad = run(&["app", "create", "--name", "x", "--refresh-ttl", "100000d"]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("refresh_expire (--refresh-ttl)"), "{stderr}");

    let bad = run(&["app", "create", "--name", "x", "--auth-ttl=-5", "--json"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("negative"));

    let bad = run(&["app", "create", "--name", "x", "--requests-per-second", "2000000"]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("requests_per_second (--requests-per-second)"), "{stderr}");

    let bad = run(&["app", "create", "--name", "x", "--token-expire", "5", "--json"]);
    assert!(!bad.status.success(), "unknown flags are refused");

    let missing = run(&["app", "show", "nope", "--json"]);
    assert!(!missing.status.success());
    assert_eq!(json_of(&missing)["error"], "not_found");

    let bad_url = keygate(dir.path())
        .args(["--database-url", "mysql://u:hunter2@db/x", "app", "list"])
        .output()
        .unwrap();
    assert!(!bad_url.status.success());
    let stderr = String::from_utf8_lossy(&bad_url.stderr);
    assert!(stderr.contains("unsupported database URL") && !stderr.contains("hunter2"), "{stderr}");
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test]
async fn the_cli_works_on_postgres_too() {
    let Some(url) = keygate_store::testing::postgres_url().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let output = keygate(dir.path())
        .args(["--database-url", &url, "app", "create", "--name", "pg-demo", "--json"])
        .env("KEYGATE_ROOT_KEY", "kgr_supplied_root_key_for_the_pg_test_0001")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("kgr_supplied"),
        "a supplied root key is never printed"
    );
    let created = json_of(&output);
    let listed = keygate(dir.path())
        .args(["--database-url", &url, "app", "list", "--json"])
        .output()
        .unwrap();
    assert_eq!(json_of(&listed)["apps"][0]["app_id"], created["app_id"]);
}

/// Runs an admin command with `--json`; its JSON, or the failure's output.
fn admin(dir: &Path, args: &[&str]) -> Result<Value, String> {
    let output = keygate(dir).args(args).arg("--json").output().unwrap();
    if output.status.success() {
        Ok(json_of(&output))
    } else {
        // With --json the error is a JSON object on stdout.
        Err(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Signs once through a gateway; returns the token response.
async fn sign_through(server: &Server, app_id: &str, app_key: &str) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/app/{app_id}/sign", server.address))
        .header("Authorization", app_key)
        .json(&serde_json::json!({"sub": "u1", "ip": "192.0.2.1", "useragent": "cli-test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// docs/operations.md "Rotating the master key", step by step: the new key with the old
/// one still accepted, `master-key rotate`, then the new key alone.
#[tokio::test]
async fn the_master_key_rotates_without_downtime_or_unsealed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let generated = admin(dir.path(), &["master-key", "generate"]).unwrap();
    assert!(!dir.path().join("keygate-data").exists(), "generate creates nothing");
    let old = generated["master_key"].as_str().unwrap().to_owned();
    let new = admin(dir.path(), &["master-key", "generate"]).unwrap();
    let (new, new_id) =
        (new["master_key"].as_str().unwrap(), new["master_key_id"].as_str().unwrap());
    assert_ne!(old, new);
    let config = |name: &str, body: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let old_only = config("old.toml", format!("master_key = \"{old}\"\n"));
    let new_only = config("new.toml", format!("master_key = \"{new}\"\n"));
    let both = config(
        "both.toml",
        format!("master_key = \"{new}\"\nprevious_master_keys = [\"{old}\"]\n"),
    );

    let created =
        admin(dir.path(), &["--config", &old_only, "app", "create", "--name", "m"]).unwrap();
    let (app_id, app_key) =
        (created["app_id"].as_str().unwrap(), created["app_key"].as_str().unwrap());

    // The new key alone cannot open keys sealed with the old one: a clear refusal.
    let refused = admin(dir.path(), &["--config", &new_only, "app", "list"]).unwrap_err();
    assert!(refused.contains("KEYGATE_PREVIOUS_MASTER_KEYS"), "{refused}");

    // New key, old one accepted: the gateway signs with the key sealed under the old one.
    let server = serve(dir.path(), &["--config", &both]);
    let before = sign_through(&server, app_id, app_key).await;
    assert_eq!(before["key_id"], created["key_id"]);
    let report = admin(dir.path(), &["--config", &both, "master-key", "rotate"]).unwrap();
    assert_eq!(report["resealed"], 2, "the active and the next key: {report}");
    assert_eq!(report["master_key_id"], new_id);
    drop(server);

    // The new key alone now serves, signs with the same key, and rotates to the next one.
    let server = serve(dir.path(), &["--config", &new_only]);
    let after = sign_through(&server, app_id, app_key).await;
    assert_eq!(after["key_id"], created["key_id"]);
    assert_eq!(after["public_key"], before["public_key"]);
    admin(dir.path(), &["--config", &new_only, "keys", "rotate", app_id]).unwrap();
    let again = admin(dir.path(), &["--config", &new_only, "master-key", "rotate"]).unwrap();
    assert_eq!((again["resealed"].as_u64(), again["already_current"].as_u64()), (Some(0), Some(3)));
    drop(server);
    let old_refused = admin(dir.path(), &["--config", &old_only, "app", "list"]).unwrap_err();
    assert!(
        old_refused.contains("is not the one"),
        "the old key alone no longer opens: {old_refused}"
    );
}

/// `app import`: hundreds of apps in one run, each line reported; the bad ones by number,
/// and the imported keys work.
#[tokio::test]
async fn many_apps_are_imported_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> =
        (0..300).map(|n| format!(r#"{{"name": "bulk-{n:03}"}}"#)).collect();
    lines.insert(10, r#"{"name": "bad", "token_expire": 1}"#.to_owned());
    lines.insert(20, "{not json".to_owned());
    lines.push(r#"{"name": "bulk-000"}"#.to_owned());
    lines.push(String::new());
    let file = dir.path().join("apps.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();

    let output =
        keygate(dir.path()).args(["app", "import", file.to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success(), "some lines failed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in ["line 11: token_expire", "line 21: not an app's settings", "line 303: name"] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    assert!(stderr.contains("300 of 303 apps created"), "{stderr}");
    let created: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(created.len(), 300);
    assert_eq!(created[0]["name"], "bulk-000");
    assert_eq!(created[0]["line"], 1);
    let listed = admin(dir.path(), &["app", "list"]).unwrap();
    assert_eq!(listed["apps"].as_array().unwrap().len(), 300);

    let server = serve(dir.path(), &[]);
    let last = &created[299];
    let app_key = last["app_key"].as_str().unwrap();
    assert!(app_key.starts_with("kg_"));
    sign_through(&server, last["app_id"].as_str().unwrap(), app_key).await;
}

/// Changes made by the CLI beside a running gateway on SQLite reach it through the change
/// log within about a second, however long its caches keep entries (`cache_ttl` 600 here).
#[tokio::test]
async fn a_running_gateway_sees_cli_changes_through_the_change_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, "cache_ttl = 600\n").unwrap();
    let config = config.to_str().unwrap();
    let created = admin(dir.path(), &["--config", config, "app", "create", "--name", "c"]).unwrap();
    let (app_id, old_key) =
        (created["app_id"].as_str().unwrap(), created["app_key"].as_str().unwrap());
    let server = serve(dir.path(), &["--config", config]);
    sign_through(&server, app_id, old_key).await; // the app and its key check are cached now
    let jwks = || async {
        let url = format!("{}/app/{app_id}/jwks.json", server.address);
        let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        body["keys"].as_array().unwrap().len()
    };
    assert_eq!(jwks().await, 2, "active and next, now cached");

    // The app key rotated without grace, and the signing keys rotated, by another process.
    let rotated = admin(dir.path(), &["--config", config, "app", "rotate-key", app_id]).unwrap();
    admin(dir.path(), &["--config", config, "keys", "rotate", app_id]).unwrap();
    let started = std::time::Instant::now();
    let client = reqwest::Client::new();
    let status = |key: String| {
        let request = client
            .post(format!("{}/app/{app_id}/sign", server.address))
            .header("Authorization", key)
            .json(&serde_json::json!({"sub": "u", "ip": "192.0.2.1", "useragent": "t"}));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    while status(old_key.to_owned()).await == 200 {
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "the old key still works");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(status(rotated["app_key"].as_str().unwrap().to_owned()).await, 200);
    assert_eq!(jwks().await, 3, "the JWKS shows the rotation too (next, active, retired)");
}
