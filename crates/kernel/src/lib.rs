//! The kernel of keygate: the types every other crate shares, with no storage and no I/O.
//!
//! - [`ids`]: ULID newtypes ([`AppId`], [`KeyId`], [`SessionId`], [`Jid`], [`EventId`]);
//! - [`settings`] and [`app`]: an app and its validated settings, with their state enums
//!   ([`OnReuse`], [`AccessTokenProfile`]);
//! - [`key_state`]: the life of a signing key ([`KeyState`]);
//! - [`audit`]: the kinds of audit event, who acts, and the [`AuditSink`] domain code reports to;
//! - [`change`]: the change notification of cached data ([`Change`]);
//! - [`digest`]: the one HMAC.
//!
//! The store binds and returns these types; `tenants`, `keyring` and `sessions` build on
//! them without depending on each other for a type.

pub mod app;
pub mod audit;
pub mod change;
#[cfg(feature = "sqlx")]
mod column;
pub mod digest;
pub mod ids;
pub mod key_state;
pub mod settings;

pub use app::App;
pub use audit::{Actor, AuditSink, EventKind, NewEvent, UnknownEventKind};
pub use change::{Change, UnknownChange};
pub use digest::hmac_sha256;
pub(crate) use ids::__private;
pub use ids::{AppId, EventId, Jid, KeyId, ParseIdError, SessionId};
pub use key_state::{KeyState, UnknownState};
pub use settings::{AccessTokenProfile, AppSettings, DpopMode, FieldError, OnReuse, SettingsPatch};
