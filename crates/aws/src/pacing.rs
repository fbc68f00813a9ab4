//! Client-side pacing and retry.
//!
//! EC2 throttles each account and region with token buckets, one per API
//! class (RunInstances: 5 burst, 2 per second; TerminateInstances: 100, 5;
//! non-mutating Describe*: 100, 20). [`Pacer`] holds the same buckets on this
//! side, per account session, and makes a call wait for a token before it is
//! sent, so a burst is spread out here instead of being rejected there. The
//! buckets are [`runfleet_core::bucket::TokenBucket`]s read with a monotonic
//! clock ([`Clock`]).
//!
//! Other clients of the same account share AWS's buckets, so a throttled
//! answer can still come back: [`RetryPolicy`] retries it after a jittered
//! exponential backoff, within a bounded time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use rand::Rng;
use runfleet_core::bucket::TokenBucket;
use runfleet_core::model::{ErrorKind, Millis};
use runfleet_engine::ports::PortError;

/// The bucket classes runfleet's calls fall into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    /// `RunInstances` (EC2 request bucket 5 / 2 per s).
    RunInstances,
    /// `TerminateInstances` (100 / 5 per s).
    TerminateInstances,
    /// Non-mutating EC2 calls, `Describe*` (100 / 20 per s).
    Describe,
    /// SSM `PutParameter` and `DeleteParameter`.
    SsmWrite,
    /// SSM `GetParametersByPath`.
    SsmRead,
    /// STS `AssumeRole`, `GetCallerIdentity`.
    Sts,
}

/// A token bucket's shape: `capacity` tokens, refilled at `refill_per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketShape {
    pub capacity: u32,
    pub refill_per_sec: f64,
}

impl BucketShape {
    pub const fn new(capacity: u32, refill_per_sec: f64) -> Self {
        BucketShape {
            capacity,
            refill_per_sec,
        }
    }
}

/// The bucket shape of every [`Api`] class. The defaults are EC2's documented
/// request buckets; SSM's and STS's are conservative guesses below their
/// default throughput (SSM's standard throughput is shared by all readers and
/// writers of the account).
#[derive(Debug, Clone, PartialEq)]
pub struct Pacing {
    pub run_instances: BucketShape,
    pub terminate_instances: BucketShape,
    pub describe: BucketShape,
    pub ssm_write: BucketShape,
    pub ssm_read: BucketShape,
    pub sts: BucketShape,
    /// The adapter's buckets refill at this fraction of the shapes above.
    /// Requests reach AWS with varying latency (the first of a burst open
    /// connections, later ones reuse them), so a client bucket exactly as
    /// fast as EC2's gets the odd request rejected; 0.9 absorbs that.
    pub headroom: f64,
    /// A call that would wait longer than this for a token fails as
    /// `Throttled` (with `retry_after_ms`) instead of waiting.
    pub max_wait: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            run_instances: BucketShape::new(5, 2.0),
            terminate_instances: BucketShape::new(100, 5.0),
            describe: BucketShape::new(100, 20.0),
            ssm_write: BucketShape::new(20, 10.0),
            ssm_read: BucketShape::new(20, 10.0),
            sts: BucketShape::new(10, 5.0),
            headroom: 0.9,
            max_wait: Duration::from_secs(60),
        }
    }
}

impl Pacing {
    pub fn shape(&self, api: Api) -> BucketShape {
        match api {
            Api::RunInstances => self.run_instances,
            Api::TerminateInstances => self.terminate_instances,
            Api::Describe => self.describe,
            Api::SsmWrite => self.ssm_write,
            Api::SsmRead => self.ssm_read,
            Api::Sts => self.sts,
        }
    }
}

/// Milliseconds from a fixed start, never going back.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            start: Instant::now(),
        }
    }
    pub fn now_ms(&self) -> Millis {
        self.start.elapsed().as_millis() as Millis
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The client-side buckets of one account session.
#[derive(Debug)]
pub struct Pacer {
    pacing: Pacing,
    clock: Clock,
    buckets: Mutex<HashMap<Api, TokenBucket>>,
}

impl Pacer {
    pub fn new(pacing: Pacing, clock: Clock) -> Self {
        Pacer {
            pacing,
            clock,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// How long to wait before a token of `api` is available, taking it if
    /// it is there now (`None`).
    fn try_take(&self, api: Api) -> Option<Millis> {
        let now = self.clock.now_ms();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let shape = self.pacing.shape(api);
        let bucket = buckets.entry(api).or_insert_with(|| {
            let rate = shape.refill_per_sec * self.pacing.headroom.clamp(0.1, 1.0);
            TokenBucket::new(shape.capacity, rate, now)
        });
        if bucket.try_take(1, now) {
            None
        } else {
            Some(bucket.ready_at(1, now).saturating_sub(now).max(1))
        }
    }

    /// Waits for a token of `api`. Fails as `Throttled` when the wait would
    /// exceed [`Pacing::max_wait`].
    pub async fn acquire(&self, api: Api, op: &str) -> Result<(), PortError> {
        let started = self.clock.now_ms();
        loop {
            let Some(wait) = self.try_take(api) else {
                return Ok(());
            };
            let waited = self.clock.now_ms().saturating_sub(started);
            if waited + wait > self.pacing.max_wait.as_millis() as Millis {
                let mut e = PortError::new(
                    ErrorKind::Throttled,
                    format!(
                        "{op}: client-side rate limit, no token within {:?}",
                        self.pacing.max_wait
                    ),
                );
                e.retry_after_ms = Some(wait);
                return Err(e);
            }
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
}

/// Retries of throttled and transient answers.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// First backoff; doubles each attempt, up to `cap`.
    pub base: Duration,
    pub cap: Duration,
    /// No retry starts after this much time spent on one call.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
            budget: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (attempt counts from 1): "equal
    /// jitter", half fixed and half random, so retries of a burst spread out
    /// but none comes back immediately.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.cap);
        let half = exp / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }

    /// Whether an error of `kind` is retried.
    pub fn retries(&self, kind: ErrorKind, idempotent: bool) -> bool {
        match kind {
            ErrorKind::Throttled => true,
            ErrorKind::Transient => idempotent,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy::default();
        for attempt in 1..20 {
            let d = p.backoff(attempt);
            let exp = (p.base * (1 << (attempt - 1).min(16))).min(p.cap);
            assert!(d >= exp / 2 && d <= exp, "{attempt}: {d:?}");
        }
        let samples: std::collections::HashSet<_> = (0..50).map(|_| p.backoff(4)).collect();
        assert!(samples.len() > 1, "no jitter");
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_spreads_a_burst_at_the_refill_rate() {
        let pacing = Pacing {
            run_instances: BucketShape::new(5, 2.0),
            headroom: 1.0,
            ..Pacing::default()
        };
        let pacer = Pacer::new(pacing, Clock::new());
        let start = tokio::time::Instant::now();
        for _ in 0..9 {
            pacer
                .acquire(Api::RunInstances, "ec2:RunInstances")
                .await
                .unwrap();
        }
        // 5 at once, then 4 more at 2 per second.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1_900), "{took:?}");
        assert!(took <= Duration::from_millis(2_200), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_gives_up_past_max_wait() {
        let pacing = Pacing {
            run_instances: BucketShape::new(1, 0.01),
            headroom: 1.0,
            max_wait: Duration::from_secs(5),
            ..Pacing::default()
        };
        let pacer = Pacer::new(pacing, Clock::new());
        pacer.acquire(Api::RunInstances, "op").await.unwrap();
        let e = pacer.acquire(Api::RunInstances, "op").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Throttled);
        assert!(e.retry_after_ms.unwrap() > 5_000);
    }
}
