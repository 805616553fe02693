//! Sessions: refresh-token families.
//!
//! `sign` opens a session and issues an auth token and a refresh token. `renew` trades the
//! session's current refresh token for a new pair by a compare-and-swap on `current_jid`:
//! of N concurrent renews of one token exactly one rotates. The previous token, presented
//! again within the app's `reuse_grace` by the same user agent, is an idempotent retry;
//! any other replay is reuse, and revokes the session (or the subject's sessions).
//!
//! Crypto never runs inside a transaction: a renew is one compare-and-swap statement that
//! returns the rotated session, then the tokens are signed. Nothing is answered before the
//! commit, and a rotation whose tokens could not be issued is undone, so a failure on our
//! side never consumes a client's token.

mod answers;
mod claims;
pub mod dpop;
mod error;
mod ids;
mod input;
mod issue;
mod model;
mod service;
mod store;
mod verdict;

pub use answers::{Introspected, Issued, RenewMode, RenewOutcome, Renewed, Verified};
pub use claims::{AuthClaims, Cnf, RefreshClaims, RESERVED_CLAIMS};
pub use error::{Rejection, SessionError};
pub use ids::{Jid, SessionId};
pub use input::{token_field, RenewInput, SignInput, MAX_CUSTOM_CLAIMS, MAX_SUB, MAX_USERAGENT};
pub use model::{Session, SessionView, TokenDigest};
pub use service::{Sessions, JANITOR_REVOKED_RETENTION};
pub use store::{session_store, Restore, RevokeScope, Rotation, SessionStore};
