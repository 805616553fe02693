//! The change notification: what a change to cached data names, as written to the change
//! log and announced with `NOTIFY`, and read back by every gateway. The change-log triggers
//! of migration 0006 write the same three forms in SQL.

use std::fmt;
use std::str::FromStr;

use crate::AppId;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// An app: its settings or its app-key hashes (also its deletion). Written `app ID`.
    App(AppId),
    /// An app's signing keys. Written `keys ID`.
    Keys(AppId),
    /// The root key's hash. Written `root`.
    Root,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::App(app_id) => write!(f, "app {app_id}"),
            Self::Keys(app_id) => write!(f, "keys {app_id}"),
            Self::Root => f.write_str("root"),
        }
    }
}

/// A notification that is none of the three forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a change notification: {0:?}")]
pub struct UnknownChange(pub String);

impl FromStr for Change {
    type Err = UnknownChange;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownChange(s.to_owned());
        match s.split_once(' ') {
            None if s == "root" => Ok(Self::Root),
            Some(("app", id)) => Ok(Self::App(id.parse().map_err(|_| unknown())?)),
            Some(("keys", id)) => Ok(Self::Keys(id.parse().map_err(|_| unknown())?)),
            _ => Err(unknown()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_form_reads_back_as_written() {
        let app = AppId::new();
        for change in [Change::App(app), Change::Keys(app), Change::Root] {
            assert_eq!(change.to_string().parse::<Change>(), Ok(change));
        }
        assert_eq!(format!("{}", Change::Keys(app)), format!("keys {app}"));
        for bad in ["", "app", "app x", "keys  ", "root ", "apps 01", "ROOT"] {
            assert!(bad.parse::<Change>().is_err(), "{bad:?}");
        }
    }
}
