//! A token bucket with an explicit clock, shaped like EC2's request and
//! resource buckets: `capacity` tokens, refilled at `refill_per_sec`.

use serde::{Deserialize, Serialize};

use crate::model::Millis;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenBucket {
    capacity: f64,
    refill_per_sec: f64,
    tokens: f64,
    last: Millis,
}

impl TokenBucket {
    /// A full bucket at time `now`.
    pub fn new(capacity: u32, refill_per_sec: f64, now: Millis) -> Self {
        TokenBucket {
            capacity: capacity as f64,
            refill_per_sec,
            tokens: capacity as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Millis) {
        if now > self.last {
            let add = (now - self.last) as f64 / 1000.0 * self.refill_per_sec;
            self.tokens = (self.tokens + add).min(self.capacity);
            self.last = now;
        }
    }

    /// Takes `n` tokens if there are that many.
    pub fn try_take(&mut self, n: u32, now: Millis) -> bool {
        self.refill(now);
        if self.tokens + 1e-9 >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }

    /// Whole tokens available at `now`.
    pub fn available(&mut self, now: Millis) -> u32 {
        self.refill(now);
        (self.tokens + 1e-9).floor() as u32
    }

    /// The earliest time at which `n` tokens will be there (`now` if they are).
    pub fn ready_at(&mut self, n: u32, now: Millis) -> Millis {
        self.refill(now);
        let missing = n as f64 - self.tokens;
        if missing <= 1e-9 || self.refill_per_sec <= 0.0 {
            return now;
        }
        now + (missing / self.refill_per_sec * 1000.0).ceil() as Millis
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_rate() {
        let mut b = TokenBucket::new(5, 2.0, 0);
        for _ in 0..5 {
            assert!(b.try_take(1, 0));
        }
        assert!(!b.try_take(1, 0));
        assert_eq!(b.ready_at(1, 0), 500);
        assert!(!b.try_take(1, 499));
        assert!(b.try_take(1, 500));
        // never above capacity
        assert_eq!(b.available(1_000_000), 5);
    }

    #[test]
    fn calls_over_a_minute_match_the_rate() {
        let mut b = TokenBucket::new(5, 2.0, 0);
        let mut ok = 0;
        for t in (0..60_000).step_by(10) {
            if b.try_take(1, t) {
                ok += 1;
            }
        }
        // 5 burst + 2/s * 60 s (the last refill lands at 59.99 s)
        assert!((123..=125).contains(&ok), "{ok}");
    }
}
