//! Each app's activity over the last hour, for the console's overview: renews and reuse
//! detections counted per minute in this gateway's memory (beside its metrics), and live
//! sessions sampled from the database at most every [`LIVE_SAMPLE_SECONDS`], and only while
//! someone asks.
//!
//! The counts are this gateway's own, since it started: with several gateways each one
//! counts what it served (its `/metrics` do the same). Counting costs one uncontended lock
//! and one hash lookup per renew; memory is one hour of minutes (about 1 KiB) per app that
//! renewed in it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;

use keygate_tenants::AppId;

use crate::metrics::RenewCount;

/// The minutes kept: one hour.
pub const MINUTES: usize = 60;
/// Live sessions are counted again at most this often (one scan of the live sessions).
pub const LIVE_SAMPLE_SECONDS: i64 = 10;

/// One minute of one app.
#[derive(Debug, Default, Clone, Copy)]
struct Minute {
    /// The minute (Unix time / 60) these counts are of.
    minute: i64,
    renews: u32,
    reuse: u32,
    /// The last sample of the app's live sessions in this minute, if one was taken.
    live: Option<u64>,
}

type Hour = [Minute; MINUTES];

/// The activity of every app; see the module's description.
#[derive(Debug, Default)]
pub struct Activity {
    apps: Mutex<HashMap<AppId, Box<Hour>>>,
    /// When live sessions were last counted, and the counts.
    live: tokio::sync::Mutex<Option<(i64, BTreeMap<AppId, u64>)>>,
}

/// One app's last hour, minute by minute, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// Unix time of the first minute.
    pub from: i64,
    /// Renews answered with a token pair (a rotation or a retry within the grace).
    pub renews: Vec<u32>,
    /// Refresh tokens presented again: reuse detected.
    pub reuse_detected: Vec<u32>,
    /// Live sessions, where a sample was taken in that minute.
    pub live_sessions: Vec<Option<u64>>,
}

/// Unix time of the first minute of the hour that ends with the minute of `now`.
pub fn hour_from(now: i64) -> i64 {
    (now.div_euclid(60) - MINUTES as i64 + 1) * 60
}

impl Activity {
    fn apps(&self) -> std::sync::MutexGuard<'_, HashMap<AppId, Box<Hour>>> {
        self.apps.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The app's counts of the minute of `now`, started afresh when it is a new minute.
    fn at(&self, app: AppId, now: i64, update: impl FnOnce(&mut Minute)) {
        let minute = now.div_euclid(60);
        let mut apps = self.apps();
        let hour = apps.entry(app).or_insert_with(|| Box::new([Minute::default(); MINUTES]));
        let slot = &mut hour[minute.rem_euclid(MINUTES as i64) as usize];
        if slot.minute != minute {
            *slot = Minute { minute, ..Minute::default() };
        }
        update(slot);
    }

    /// Counts one renew of `app` at `now`, as the metrics count it.
    pub fn renew(&self, app: AppId, count: RenewCount, now: i64) {
        match count {
            RenewCount::Rotated | RenewCount::GraceRetry => {
                self.at(app, now, |m| m.renews = m.renews.saturating_add(1))
            }
            RenewCount::ReuseDetected => self.at(app, now, |m| m.reuse = m.reuse.saturating_add(1)),
            RenewCount::Invalid | RenewCount::Unavailable => {}
        }
    }

    /// The live sessions of every app: counted by `count` when the last count is older
    /// than [`LIVE_SAMPLE_SECONDS`] (one count at a time; callers meanwhile wait for it and
    /// share it), and recorded in each app's minute of `now`.
    pub async fn live_sessions<F, E>(
        &self,
        now: i64,
        count: impl FnOnce() -> F,
    ) -> Result<(i64, BTreeMap<AppId, u64>), E>
    where
        F: Future<Output = Result<BTreeMap<AppId, u64>, E>>,
    {
        let mut last = self.live.lock().await;
        if let Some((at, counts)) = last.as_ref() {
            if now - *at < LIVE_SAMPLE_SECONDS && *at <= now {
                return Ok((*at, counts.clone()));
            }
        }
        let counts = count().await?;
        for (&app, &live) in &counts {
            self.at(app, now, |m| m.live = Some(live));
        }
        *last = Some((now, counts.clone()));
        Ok((now, counts))
    }

    /// The app's hour up to the minute of `now`.
    pub fn series(&self, app: AppId, now: i64) -> Series {
        let (first, last) = (hour_from(now) / 60, now.div_euclid(60));
        let apps = self.apps();
        let hour = apps.get(&app);
        let mut series = Series {
            from: first * 60,
            renews: Vec::with_capacity(MINUTES),
            reuse_detected: Vec::with_capacity(MINUTES),
            live_sessions: Vec::with_capacity(MINUTES),
        };
        for minute in first..=last {
            let slot = hour
                .map(|h| h[minute.rem_euclid(MINUTES as i64) as usize])
                .filter(|m| m.minute == minute)
                .unwrap_or_default();
            series.renews.push(slot.renews);
            series.reuse_detected.push(slot.reuse);
            series.live_sessions.push(slot.live);
        }
        series
    }

    /// Forgets every app for which `keep` is false (deleted apps).
    pub fn retain(&self, keep: impl Fn(&AppId) -> bool) {
        self.apps().retain(|app, _| keep(app));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(n: u8) -> AppId {
        format!("01J{:0>23}", n).parse().unwrap()
    }

    #[test]
    fn renews_land_in_their_minute_and_an_hour_later_are_gone() {
        let activity = Activity::default();
        let t = 1_800_000_000; // the start of a minute (a multiple of 60)
        activity.renew(app(1), RenewCount::Rotated, t);
        activity.renew(app(1), RenewCount::GraceRetry, t + 59);
        activity.renew(app(1), RenewCount::ReuseDetected, t + 59);
        activity.renew(app(1), RenewCount::Invalid, t + 59);
        activity.renew(app(1), RenewCount::Rotated, t + 60);
        activity.renew(app(2), RenewCount::Rotated, t);

        let series = activity.series(app(1), t + 60);
        assert_eq!(series.from, t + 60 - 59 * 60);
        assert_eq!(series.renews.len(), MINUTES);
        assert_eq!(&series.renews[MINUTES - 2..], &[2, 1]);
        assert_eq!(&series.reuse_detected[MINUTES - 2..], &[1, 0]);
        assert_eq!(series.renews.iter().sum::<u32>(), 3, "app 2's renew is its own");

        // 59 minutes later the first minute is the oldest shown; 60 later it is gone,
        // and a new renew in its slot starts from zero.
        assert_eq!(activity.series(app(1), t + 59 * 60).renews[0], 2);
        assert_eq!(activity.series(app(1), t + 60 * 60).renews.iter().sum::<u32>(), 1);
        activity.renew(app(1), RenewCount::Rotated, t + 60 * 60);
        let later = activity.series(app(1), t + 60 * 60);
        assert_eq!(later.renews[MINUTES - 1], 1, "the reused slot restarted");
        assert_eq!(later.reuse_detected.iter().sum::<u32>(), 0);
    }

    #[tokio::test]
    async fn live_sessions_are_counted_at_most_every_ten_seconds() {
        let activity = Activity::default();
        let t = 1_800_000_000;
        let counts = |n: u64| BTreeMap::from([(app(1), n)]);
        let calls = std::cell::Cell::new(0);
        let count = |n: u64| {
            calls.set(calls.get() + 1);
            async move { Ok::<_, ()>(counts(n)) }
        };
        assert_eq!(activity.live_sessions(t, || count(5)).await, Ok((t, counts(5))));
        assert_eq!(activity.live_sessions(t + 9, || count(6)).await, Ok((t, counts(5))));
        assert_eq!(calls.get(), 1, "the second view shares the first count");
        assert_eq!(activity.live_sessions(t + 10, || count(7)).await, Ok((t + 10, counts(7))));
        assert_eq!(calls.get(), 2);
        let series = activity.series(app(1), t + 70);
        assert_eq!(&series.live_sessions[MINUTES - 2..], &[Some(7), None]);

        // A failed count is the caller's error, and the last good count stays.
        let failed =
            activity.live_sessions(t + 30, || async { Err::<BTreeMap<AppId, u64>, _>("down") });
        assert_eq!(failed.await, Err("down"));
        activity.retain(|a| *a != app(1));
        assert_eq!(activity.series(app(1), t + 70).live_sessions[MINUTES - 2], None);
    }
}
