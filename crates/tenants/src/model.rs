use std::fmt;

use keygate_kernel::App;

/// The stored hashes of the app keys an app accepts (keyed, or argon2id for keys made
/// before the keyed form): the current one, and during a
/// rotation grace period, the previous one.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct AppKeyHashes {
    pub current: String,
    pub previous: Option<String>,
    pub previous_expires_at: Option<i64>,
}

impl AppKeyHashes {
    /// The hashes a presented key may match at `now`.
    pub fn accepted(&self, now: i64) -> Vec<&str> {
        let mut hashes = vec![self.current.as_str()];
        if let (Some(prev), Some(until)) = (&self.previous, self.previous_expires_at) {
            if now < until {
                hashes.push(prev);
            }
        }
        hashes
    }
}

impl fmt::Debug for AppKeyHashes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppKeyHashes")
            .field("previous_expires_at", &self.previous_expires_at)
            .finish_non_exhaustive()
    }
}

/// An app with the hashes of its app keys, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRecord {
    pub app: App,
    pub key: AppKeyHashes,
}
