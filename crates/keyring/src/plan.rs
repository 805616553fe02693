//! The key state machine, as pure functions from the current keys to a list of changes.
//!
//! A store applies a plan in one transaction, and each transition only matches a key still
//! in its expected state, so two concurrent plans cannot both apply.

use crate::{KeyId, KeyRecord, KeyState, KeyringError};

/// One step of a plan: a key's transition, or a new key.
pub use keygate_store::signing_keys::KeyChange;

fn the(keys: &[KeyRecord], state: KeyState) -> Result<&KeyRecord, KeyringError> {
    let mut matching = keys.iter().filter(|k| k.state == state);
    match (matching.next(), matching.next()) {
        (Some(key), None) => Ok(key),
        _ => Err(KeyringError::Missing(state)),
    }
}

fn transition(key: &KeyRecord, to: KeyState, at: i64) -> KeyChange {
    KeyChange::Transition { key_id: key.key_id, from: key.state, to, at }
}

/// A planned rotation: the active key retires, `next` becomes active, and `new_next` (a
/// freshly generated key) is published as the next one.
pub fn rotation(
    keys: &[KeyRecord],
    new_next: KeyRecord,
    now: i64,
) -> Result<Vec<KeyChange>, KeyringError> {
    let active = the(keys, KeyState::Active)?;
    let next = the(keys, KeyState::Next)?;
    Ok(vec![
        transition(active, KeyState::Retired, now),
        transition(next, KeyState::Active, now),
        KeyChange::Insert(new_next),
    ])
}

/// Revokes `key_id`. Revoking the active key promotes the already published `next` key at
/// once; revoking `next` replaces it, so that a next key is always published.
pub fn revocation(
    keys: &[KeyRecord],
    key_id: KeyId,
    new_next: KeyRecord,
    now: i64,
) -> Result<Vec<KeyChange>, KeyringError> {
    let key = keys.iter().find(|k| k.key_id == key_id).ok_or(KeyringError::KeyNotFound(key_id))?;
    let revoke = transition(key, KeyState::Revoked, now);
    Ok(match key.state {
        KeyState::Revoked => return Err(KeyringError::AlreadyRevoked(key_id)),
        KeyState::Retired => vec![revoke],
        KeyState::Next => vec![revoke, KeyChange::Insert(new_next)],
        KeyState::Active => {
            let next = the(keys, KeyState::Next)?;
            vec![revoke, transition(next, KeyState::Active, now), KeyChange::Insert(new_next)]
        }
    })
}

/// Whether a scheduled rotation is due at `now`: the active key has signed for a whole
/// `rotation_period`, and the next key has been published for at least `min_published`
/// seconds (the JWKS max-age), so no verifier that caches the JWKS meets an unknown kid.
pub fn rotation_due(
    keys: &[KeyRecord],
    rotation_period: i64,
    min_published: i64,
    now: i64,
) -> bool {
    let (Ok(active), Ok(next)) = (the(keys, KeyState::Active), the(keys, KeyState::Next)) else {
        return false;
    };
    let active_since = active.activated_at.unwrap_or(active.created_at);
    now >= active_since.saturating_add(rotation_period)
        && now >= next.created_at.saturating_add(min_published)
}

/// Applies a plan to an in-memory list of keys, exactly as a store does: a transition
/// matches only a key still in its `from` state.
pub fn apply(keys: &mut Vec<KeyRecord>, changes: &[KeyChange]) -> Result<(), KeyringError> {
    for change in changes {
        match change {
            KeyChange::Transition { key_id, from, to, at } => {
                let key = keys
                    .iter_mut()
                    .find(|k| k.key_id == *key_id && k.state == *from)
                    .ok_or(KeyringError::KeyNotFound(*key_id))?;
                key.state = *to;
                match to {
                    KeyState::Active => key.activated_at = Some(*at),
                    KeyState::Retired => key.retired_at = Some(*at),
                    KeyState::Revoked => key.revoked_at = Some(*at),
                    KeyState::Next => {}
                }
            }
            KeyChange::Insert(record) => keys.push(record.clone()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::material::generate;
    use crate::MasterKey;
    use keygate_kernel::AppId;
    use proptest::prelude::*;

    fn new_app(master: &MasterKey) -> (AppId, Vec<KeyRecord>) {
        let app = AppId::new();
        let keys = vec![
            generate(app, KeyState::Active, master, 0).unwrap(),
            generate(app, KeyState::Next, master, 0).unwrap(),
        ];
        (app, keys)
    }

    fn count(keys: &[KeyRecord], state: KeyState) -> usize {
        keys.iter().filter(|k| k.state == state).count()
    }

    #[test]
    fn rotation_promotes_next_and_retires_active() {
        let master = MasterKey::generate();
        let (app, mut keys) = new_app(&master);
        let (old_active, old_next) = (keys[0].key_id, keys[1].key_id);
        let plan =
            rotation(&keys, generate(app, KeyState::Next, &master, 10).unwrap(), 10).unwrap();
        apply(&mut keys, &plan).unwrap();
        assert_eq!(keys[0].state, KeyState::Retired);
        assert_eq!(keys[0].key_id, old_active);
        assert_eq!(keys[1].state, KeyState::Active);
        assert_eq!(keys[1].key_id, old_next);
        assert_eq!(keys[1].activated_at, Some(10));
        assert_eq!(keys[2].state, KeyState::Next);
    }

    #[test]
    fn emergency_revoke_promotes_next_at_once() {
        let master = MasterKey::generate();
        let (app, mut keys) = new_app(&master);
        let active = keys[0].key_id;
        let plan = revocation(&keys, active, generate(app, KeyState::Next, &master, 5).unwrap(), 5)
            .unwrap();
        apply(&mut keys, &plan).unwrap();
        assert_eq!(keys[0].state, KeyState::Revoked);
        assert_eq!(keys[1].state, KeyState::Active);
        assert_eq!(count(&keys, KeyState::Next), 1);
        let again =
            revocation(&keys, active, generate(app, KeyState::Next, &master, 6).unwrap(), 6);
        assert!(matches!(again, Err(KeyringError::AlreadyRevoked(_))));
    }

    #[test]
    fn rotation_waits_for_the_period_and_for_next_to_be_published() {
        let master = MasterKey::generate();
        let app = AppId::new();
        let mut active = generate(app, KeyState::Active, &master, 0).unwrap();
        active.activated_at = Some(0);
        let next = generate(app, KeyState::Next, &master, 950).unwrap();
        let keys = [active, next];
        assert!(!rotation_due(&keys, 1000, 300, 999), "period not over");
        assert!(!rotation_due(&keys, 1000, 300, 1000), "next published only 50 s ago");
        assert!(rotation_due(&keys, 1000, 300, 1250));
    }

    /// A transition changes the key it names, never another key in the same state.
    #[test]
    fn apply_changes_the_named_key_only() {
        let master = MasterKey::generate();
        let (app, mut keys) = new_app(&master);
        for now in [1, 2] {
            let plan = rotation(&keys, generate(app, KeyState::Next, &master, now).unwrap(), now);
            apply(&mut keys, &plan.unwrap()).unwrap();
        }
        assert_eq!((keys[0].state, keys[1].state), (KeyState::Retired, KeyState::Retired));
        let second = keys[1].key_id;
        let plan = revocation(&keys, second, generate(app, KeyState::Next, &master, 3).unwrap(), 3);
        apply(&mut keys, &plan.unwrap()).unwrap();
        assert_eq!((keys[0].state, keys[0].revoked_at), (KeyState::Retired, None));
        assert_eq!((keys[1].state, keys[1].revoked_at), (KeyState::Revoked, Some(3)));
        let stale = [KeyChange::Transition {
            key_id: second,
            from: KeyState::Retired,
            to: KeyState::Revoked,
            at: 4,
        }];
        assert!(matches!(apply(&mut keys, &stale), Err(KeyringError::KeyNotFound(_))));
    }

    /// Due at the first second both conditions hold: `activated_at + rotation_period` and
    /// `next.created_at + min_published` are the first due seconds, not the last ones
    /// before; a key never activated counts from its creation.
    #[test]
    fn rotation_is_due_from_the_first_second_both_times_are_over() {
        let master = MasterKey::generate();
        let app = AppId::new();
        let mut active = generate(app, KeyState::Active, &master, 0).unwrap();
        active.activated_at = Some(100);
        let next = generate(app, KeyState::Next, &master, 500).unwrap();
        let keys = [active.clone(), next.clone()];
        assert!(!rotation_due(&keys, 1000, 300, 1099));
        assert!(rotation_due(&keys, 1000, 300, 1100), "the period ends at activation + period");
        assert!(!rotation_due(&keys, 100, 700, 1199));
        assert!(rotation_due(&keys, 100, 700, 1200), "next is published long enough at 1200");
        active.activated_at = None;
        active.created_at = 50;
        let never_activated = [active, next];
        assert!(!rotation_due(&never_activated, 1000, 300, 1049));
        assert!(rotation_due(&never_activated, 1000, 300, 1050), "from its creation");
        assert!(!rotation_due(&never_activated[..1], 0, 0, 5000), "no next key, no rotation");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Rotate,
        /// Revoke the key at this index (modulo the number of keys).
        Revoke(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![Just(Op::Rotate), any::<usize>().prop_map(Op::Revoke)],
            1..40,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the sequence, an app keeps exactly one active and one next key, and a
        /// revoked key stays revoked.
        #[test]
        fn invariants_hold_over_any_sequence(ops in ops()) {
            let master = MasterKey::generate();
            let (app, mut keys) = new_app(&master);
            let mut revoked = Vec::new();
            for (now, op) in (1..).zip(ops) {
                let fresh = generate(app, KeyState::Next, &master, now).unwrap();
                let plan = match op {
                    Op::Rotate => rotation(&keys, fresh, now),
                    Op::Revoke(i) => revocation(&keys, keys[i % keys.len()].key_id, fresh, now),
                };
                match plan {
                    Ok(plan) => apply(&mut keys, &plan).unwrap(),
                    Err(KeyringError::AlreadyRevoked(_)) => {}
                    Err(other) => panic!("unexpected {other}"),
                }
                revoked.extend(keys.iter().filter(|k| k.state == KeyState::Revoked).map(|k| k.key_id));
                prop_assert_eq!(count(&keys, KeyState::Active), 1);
                prop_assert_eq!(count(&keys, KeyState::Next), 1);
                for id in &revoked {
                    let key = keys.iter().find(|k| k.key_id == *id).unwrap();
                    prop_assert_eq!(key.state, KeyState::Revoked);
                }
            }
        }
    }
}
