//! The decisions of a renew, as pure functions of the token, the session and the time:
//! keep, retry within the grace period, or reuse.

use keygate_kernel::AppSettings;
use keygate_keyring::{jsonwebtoken, VerifyError};

use crate::{RefreshClaims, Session};

/// What a renew that did not rotate makes of a presented token, given its live session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The session's current token, on a renew that does not rotate.
    KeepCurrent,
    /// The token the last rotation replaced, again within the grace and from the same
    /// user agent: an idempotent retry, answered with the current token.
    Retry,
    /// Any other token of the session: it was used already.
    Reuse,
    /// A token of a non-rotating app that is not its session's: issued before the app
    /// stopped rotating. It is refused, and not judged as reuse.
    NotOfSession,
    /// The swap failed, yet the token is current again: a rotation was just undone.
    Undone,
}

/// Judges `presented`, whose renew did not rotate (`rotating`: it was meant to), against
/// its live `session`; `useragent` is the renew's.
pub(crate) fn judge(
    s: &AppSettings,
    rotating: bool,
    presented: &RefreshClaims,
    session: &Session,
    useragent: &str,
    now: i64,
) -> Verdict {
    let current = presented.jid == session.current_jid;
    if !rotating && current {
        return Verdict::KeepCurrent;
    }
    if !s.refresh_rotation {
        return Verdict::NotOfSession;
    }
    if current {
        return Verdict::Undone;
    }
    let retry = within_grace(session.rotated_at, now, s.reuse_grace);
    if Some(presented.jid) == session.prev_jid && retry && useragent == session.useragent {
        Verdict::Retry
    } else {
        Verdict::Reuse
    }
}

/// Whether a renew at `now` comes within `grace` seconds of the rotation at `rotated_at`.
/// Each request reads the clock when it starts, so a renew that lost the swap to a later
/// one can read a time before the rotation: that counts as 0 seconds after it, and with a
/// grace of 0 no renew is ever a retry.
pub(crate) fn within_grace(rotated_at: Option<i64>, now: i64, grace: i64) -> bool {
    rotated_at.is_some_and(|at| now.saturating_sub(at).max(0) < grace)
}

pub(crate) fn reason(err: &VerifyError) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match err {
        VerifyError::TooLarge => "token too large",
        VerifyError::Malformed => "malformed token",
        VerifyError::Header(_) => "unacceptable token header",
        VerifyError::UnknownKey => "unknown signing key",
        VerifyError::Invalid(e) => match e.kind() {
            // mutants: deleting the arms of ExpiredSignature and ImmatureSignature is
            // equivalent: `validation()` turns off jsonwebtoken's `exp` and `nbf` checks
            // (time is a parameter), so it never reports them; `outside_lifetime` names the
            // expired and not-yet-valid tokens instead.
            ErrorKind::ExpiredSignature => "token expired",
            ErrorKind::ImmatureSignature => "token not yet valid",
            ErrorKind::InvalidSignature => "invalid signature",
            ErrorKind::InvalidIssuer => "wrong issuer",
            _ => "invalid token",
        },
        VerifyError::Keyring(_) => "key store unavailable",
    }
}

#[cfg(test)]
mod tests {
    use super::within_grace;

    #[test]
    fn a_grace_of_zero_never_allows_a_retry() {
        for elapsed in [-5, -1, 0, 1, 60] {
            assert!(!within_grace(Some(1_000), 1_000 + elapsed, 0), "elapsed {elapsed}");
        }
    }

    #[test]
    fn a_renew_that_read_the_clock_before_the_rotation_is_at_its_start() {
        assert!(within_grace(Some(1_000), 999, 10));
        assert!(within_grace(Some(1_000), 1_009, 10));
        assert!(!within_grace(Some(1_000), 1_010, 10));
        assert!(!within_grace(None, 1_000, 10), "a session never rotated has no retry");
    }
}
