//! The background jobs of a running gateway, owned by its [`crate::Application`]: the cache
//! coherence listener, poller and warm-up, the maintenance pass, webhook delivery and the
//! sweeper of the failed-authentication limiter.
//!
//! Each job runs in one [`JoinSet`] until it ends or the gateway stops ([`Jobs::stop`]
//! cancels them all and waits for them). A job that panics is not lost silently: the
//! application sees it ([`Jobs::failed`]) and stops the process with an error, so that the
//! supervisor (systemd, Kubernetes) starts a whole gateway again.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// The jobs of one application.
#[derive(Debug, Default)]
pub struct Jobs {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    stop: CancellationToken,
}

impl Jobs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `job` until it ends or the jobs are stopped, whichever comes first.
    pub fn spawn(&mut self, name: &'static str, job: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        let handle = self.set.spawn(async move {
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                () = job => {}
            }
        });
        self.names.insert(handle.id(), name);
    }

    /// How many jobs are still running.
    pub fn running(&self) -> usize {
        self.set.len()
    }

    /// Waits until a job fails, and answers its name and why. A job that ends by itself
    /// (the warm-up, or a listener that has nothing to listen to) is not a failure. Never
    /// answers when no job fails.
    pub async fn failed(&mut self) -> (&'static str, String) {
        loop {
            match self.set.join_next_with_id().await {
                None => std::future::pending::<()>().await,
                Some(Ok((id, ()))) => {
                    let name = self.names.remove(&id).unwrap_or("a job");
                    tracing::debug!(job = name, "background job ended");
                }
                Some(Err(error)) => {
                    let name = self.names.remove(&error.id()).unwrap_or("a job");
                    return (name, error.to_string());
                }
            }
        }
    }

    /// Cancels every job and waits for them, at most `limit`; a job still running then is
    /// aborted. Answers how many had to be aborted.
    pub async fn stop(mut self, limit: Duration) -> usize {
        self.stop.cancel();
        let joined = tokio::time::timeout(limit, async {
            while let Some(joined) = self.set.join_next_with_id().await {
                if let Err(error) = joined {
                    let name = self.names.get(&error.id()).copied().unwrap_or("a job");
                    tracing::warn!(job = name, %error, "background job failed while stopping");
                }
            }
        })
        .await;
        match joined {
            Ok(()) => 0,
            Err(_) => {
                let left = self.set.len();
                self.set.abort_all();
                while self.set.join_next().await.is_some() {}
                left
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stopping_cancels_every_job_and_waits_for_it() {
        let mut jobs = Jobs::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        jobs.spawn("forever", async move {
            let _alive = tx;
            std::future::pending::<()>().await;
        });
        jobs.spawn("done at once", async {});
        assert_eq!(jobs.stop(Duration::from_secs(5)).await, 0);
        // The job's future was dropped: its sender is gone.
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_job_that_panics_is_reported_by_name() {
        let mut jobs = Jobs::new();
        jobs.spawn("ends", async {});
        jobs.spawn("forever", std::future::pending());
        jobs.spawn("breaks", async {
            tokio::task::yield_now().await;
            panic!("broken on purpose");
        });
        let (name, why) =
            tokio::time::timeout(Duration::from_secs(5), jobs.failed()).await.unwrap();
        assert_eq!(name, "breaks");
        assert!(why.contains("panic"), "{why}");
        assert_eq!(jobs.running(), 1, "only the endless job is left");
    }

    #[tokio::test]
    async fn a_job_that_ends_by_itself_is_no_failure() {
        let mut jobs = Jobs::new();
        jobs.spawn("ends", async {});
        let waited = tokio::time::timeout(Duration::from_millis(200), jobs.failed()).await;
        assert!(waited.is_err(), "failed() must not answer when no job failed");
    }
}
