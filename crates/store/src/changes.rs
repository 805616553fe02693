//! The change log: rows that triggers add, in the same transaction, for every change to
//! what gateways cache (apps, their app-key hashes, signing keys, the root key's hash),
//! whoever makes it. A gateway reads what is new every second and drops what it names, so a
//! change made by the CLI (SQLite or Postgres) or by another gateway is seen within about a
//! second, and the caches can keep entries long. On Postgres the `NOTIFY` of each change
//! (`Backend::after_commit`) is still faster; the log catches what a listener missed.

use crate::{Backend, Sql, StoreError};

/// One recorded change: its position in the log, and what it names (`app APP_ID`,
/// `keys APP_ID` or `root`, as a change announcement).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Change {
    pub seq: i64,
    pub subject: String,
}

impl Backend {
    /// The position of the last change recorded (0 when there is none).
    pub async fn last_change(&self) -> Result<i64, StoreError> {
        let row: Option<(i64,)> = self
            .read(Sql::new("SELECT COALESCE(MAX(seq), 0) FROM changes"))
            .fetch_optional()
            .await?;
        Ok(row.map_or(0, |(seq,)| seq))
    }

    /// The changes recorded after `seq`, oldest first, at most `limit`.
    pub async fn changes_after(&self, seq: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
        let sql = Sql::new("SELECT seq, subject FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2");
        self.read(sql.bind(seq).bind(limit)).fetch_all().await
    }

    /// Deletes the changes recorded before `cutoff` (Unix seconds); returns how many.
    pub async fn purge_changes(&self, cutoff: i64) -> Result<u64, StoreError> {
        self.write(Sql::new("DELETE FROM changes WHERE at < $1").bind(cutoff)).execute().await
    }
}
