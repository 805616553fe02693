//! The DPoP proofs accepted (RFC 9449 §11.1): each proof's `jti` is accepted once, until the
//! proof is too old to be accepted anyway. On SQLite one gateway owns the database, so the
//! ledger is that gateway's memory (no write, no fsync per proof); on PostgreSQL it is the
//! unlogged table `dpop_proofs`, so that a proof one gateway accepted is a replay at every
//! other. Served renews spend their proofs through the Postgres batcher
//! ([`crate::sessions::SessionTable::spend_proof`]); this statement is for a store without
//! one.

use std::collections::HashMap;
use std::sync::Mutex;

use keygate_kernel::AppId;

use crate::{Backend, Kind, Sql, StoreError};

const SPEND: &str = "INSERT INTO dpop_proofs (app_id, jti_digest, expires_at) VALUES ($1, $2, $3) \
    ON CONFLICT (app_id, jti_digest) DO NOTHING";
const PURGE: &str = "DELETE FROM dpop_proofs WHERE expires_at <= $1";
const FORGET: &str = "DELETE FROM dpop_proofs WHERE app_id = $1 AND jti_digest = $2";

/// The statement that records a proof on Postgres; it changes one row if the proof is new.
pub(crate) fn spend_statement(app_id: AppId, jti_digest: [u8; 32], expires_at: i64) -> Sql {
    Sql::new(SPEND).bind(app_id).bind(jti_digest.to_vec()).bind(expires_at)
}

/// Seconds between two sweeps of the in-memory ledger.
const SWEEP_EVERY: i64 = 10;

/// Where accepted proofs are remembered.
#[derive(Debug)]
pub(crate) struct ProofLedger {
    db: Backend,
    /// On SQLite: the proofs of this gateway, until their expiry.
    memory: Option<Mutex<Memory>>,
}

#[derive(Debug, Default)]
struct Memory {
    seen: HashMap<(AppId, [u8; 32]), i64>,
    next_sweep: i64,
}

impl ProofLedger {
    pub fn open(db: &Backend) -> Self {
        let memory = (db.kind() == Kind::Sqlite).then(|| Mutex::new(Memory::default()));
        Self { db: db.clone(), memory }
    }

    /// Records the proof of `app_id` whose `jti` has the SHA-256 `jti_digest`, until
    /// `expires_at`: false when it was already recorded (a replay). Nothing else is written.
    pub async fn spend(
        &self,
        app_id: AppId,
        jti_digest: [u8; 32],
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        if let Some(memory) = &self.memory {
            let mut memory = memory.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if now >= memory.next_sweep {
                memory.seen.retain(|_, expiry| *expiry > now);
                memory.next_sweep = now + SWEEP_EVERY;
            }
            return Ok(match memory.seen.get(&(app_id, jti_digest)) {
                Some(&expiry) if expiry > now => false,
                _ => {
                    memory.seen.insert((app_id, jti_digest), expires_at);
                    true
                }
            });
        }
        let sql = spend_statement(app_id, jti_digest, expires_at);
        Ok(self.db.write(sql).execute().await? == 1)
    }

    /// Forgets one proof, spent for a swap that did not happen.
    pub async fn forget(&self, app_id: AppId, jti_digest: [u8; 32]) -> Result<(), StoreError> {
        if let Some(memory) = &self.memory {
            let mut memory = memory.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            memory.seen.remove(&(app_id, jti_digest));
            return Ok(());
        }
        let sql = Sql::new(FORGET).bind(app_id).bind(jti_digest.to_vec());
        self.db.write(sql).execute().await.map(drop)
    }

    /// Forgets the proofs that expired at `now`; returns how many were in the table.
    pub async fn purge(&self, now: i64) -> Result<u64, StoreError> {
        if let Some(memory) = &self.memory {
            let mut memory = memory.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            memory.seen.retain(|_, expiry| *expiry > now);
            return Ok(0);
        }
        self.db.write(Sql::new(PURGE).bind(now)).execute().await
    }
}
