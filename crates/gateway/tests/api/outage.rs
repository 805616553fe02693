//! A database that cannot take the write answers 503 with Retry-After, changes nothing,
//! and the client's token still works once the database is back.

use std::str::FromStr;

use serde_json::json;
use sqlx::Connection;

use crate::helpers::{assert_error, spawn_app_with, Backend, TestApp};

pub(crate) async fn with_lock_held(app: &TestApp, backend: Backend) -> Locked {
    match backend {
        Backend::Sqlite => {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(&app.database_url).unwrap();
            let mut conn = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
            // In WAL mode this takes the write lock: readers go on, writers wait.
            sqlx::query("BEGIN EXCLUSIVE").execute(&mut conn).await.unwrap();
            Locked::Sqlite(conn)
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&app.database_url).await.unwrap();
            sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
            sqlx::query("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
                .execute(&mut conn)
                .await
                .unwrap();
            Locked::Postgres(conn)
        }
    }
}

pub(crate) enum Locked {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Locked {
    pub(crate) async fn release(self) {
        match self {
            Locked::Sqlite(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
            }
            Locked::Postgres(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
            }
        }
    }
}

async fn a_locked_database_answers_503_and_loses_nothing(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| s.database_busy_timeout_ms = 300).await else {
        return;
    };
    let tenant = app.create_app(json!({"name": "outage", "reuse_grace": 0})).await;
    let signed = app.sign(&tenant, "pat").await;

    let lock = with_lock_held(&app, backend).await;
    let response = app
        .request(reqwest::Method::POST, &format!("/app/{}/renew", tenant.app_id))
        .header("Authorization", &tenant.app_key)
        .json(&json!({"refresh_token": signed["refresh_token"], "ip": "1.1.1.1", "useragent": "test-agent"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    let (status, body) = crate::helpers::parts(response).await;
    assert_error(status, &body, 503, "unavailable");
    let body = json!({"sub": "quinn", "ip": "1.1.1.1", "useragent": "ua"});
    let (status, answer) = app.app_post(&tenant, "sign", &body).await;
    assert_error(status, &answer, 503, "unavailable");
    lock.release().await;

    // With reuse_grace 0 a consumed token would now be reuse: it was not consumed.
    let (status, renewed) = app.renew(&tenant, &signed["refresh_token"]).await;
    assert_eq!(status, 200, "{renewed}");
    assert!(app.verified(&tenant, &renewed["auth_token"]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    a_locked_database_answers_503_and_loses_nothing(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    a_locked_database_answers_503_and_loses_nothing(Backend::Postgres).await;
}
