//! Token buckets: a capacity of tokens that refills at a steady rate; each request takes one,
//! and an empty bucket says how long until the next token. Small and generic, so that every
//! limit of the hub (HTTP requests per principal, login attempts) can share it.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A bucket of `capacity` tokens refilled at `refill_per_s` tokens a second; starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    refill_per_s: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket as of `now`. A capacity below one token is raised to one, so that a
    /// bucket always lets something through eventually.
    pub fn new(capacity: u32, refill_per_s: f64, now: Instant) -> TokenBucket {
        let capacity = f64::from(capacity.max(1));
        TokenBucket {
            capacity,
            refill_per_s: refill_per_s.max(0.0),
            tokens: capacity,
            last: now,
        }
    }

    /// Takes one token, or says how long to wait until one is there (`Duration::MAX` for a
    /// bucket that never refills).
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if self.refill_per_s <= 0.0 {
            return Err(Duration::MAX);
        }
        Err(Duration::from_secs_f64(
            (1.0 - self.tokens) / self.refill_per_s,
        ))
    }

    /// Whether the bucket is full as of `now`: a full bucket can be forgotten, since a new one
    /// would behave the same.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }

    /// Returns a token taken for an attempt that turned out legitimate or was not made.
    pub fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.capacity);
    }

    fn refill(&mut self, now: Instant) {
        // A clock read earlier than the last one (callers racing) adds nothing.
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.refill_per_s).min(self.capacity);
        self.last = self.last.max(now);
    }
}

/// One [`TokenBucket`] per key (a principal, a source address), at most `max_keys` of them:
/// a full bucket behaves as none, so full ones are forgotten when the table is full, and a
/// new key waits while every bucket is in use.
#[derive(Debug)]
pub struct TokenBuckets<K> {
    capacity: u32,
    refill_per_s: f64,
    max_keys: usize,
    buckets: HashMap<K, TokenBucket>,
}

impl<K: Hash + Eq + Clone> TokenBuckets<K> {
    pub fn new(capacity: u32, refill_per_s: f64, max_keys: usize) -> TokenBuckets<K> {
        TokenBuckets {
            capacity,
            refill_per_s,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token of `key`'s bucket, or says how long until one is there.
    pub fn take(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            self.buckets.retain(|_, b| !b.is_full(now));
            if self.buckets.len() >= self.max_keys {
                return Err(Duration::from_secs(1));
            }
        }
        let (capacity, refill_per_s) = (self.capacity, self.refill_per_s);
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(capacity, refill_per_s, now))
            .try_take(now)
    }

    /// Returns a token of `key`'s bucket (see [`TokenBucket::give_back`]).
    pub fn give_back(&mut self, key: &K) {
        if let Some(bucket) = self.buckets.get_mut(key) {
            bucket.give_back();
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_wait_is_the_time_to_the_next_token() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3, 2.0, start);
        for _ in 0..3 {
            assert_eq!(bucket.try_take(start), Ok(()));
        }
        let wait = bucket.try_take(start).expect_err("empty");
        assert_eq!(wait, Duration::from_millis(500));
        let later = start + Duration::from_millis(500);
        assert_eq!(bucket.try_take(later), Ok(()));
        assert!(bucket.try_take(later).is_err());
    }

    #[test]
    fn refill_stops_at_capacity_and_a_bucket_without_refill_waits_for_ever() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2, 1.0, start);
        let much_later = start + Duration::from_secs(3600);
        assert!(bucket.is_full(much_later));
        assert_eq!(bucket.try_take(much_later), Ok(()));
        assert_eq!(bucket.try_take(much_later), Ok(()));
        assert!(bucket.try_take(much_later).is_err());

        let mut never = TokenBucket::new(1, 0.0, start);
        assert_eq!(never.try_take(start), Ok(()));
        assert_eq!(never.try_take(much_later), Err(Duration::MAX));
    }

    #[test]
    fn an_earlier_clock_reading_adds_nothing() {
        let start = Instant::now();
        let later = start + Duration::from_secs(1);
        let mut bucket = TokenBucket::new(1, 1.0, later);
        assert_eq!(bucket.try_take(later), Ok(()));
        assert!(bucket.try_take(start).is_err());
    }

    const MAX_KEYS: usize = 1000;

    #[test]
    fn keyed_buckets_allow_their_burst_then_their_rate() {
        let mut buckets = TokenBuckets::new(3, 1.0, MAX_KEYS);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(buckets.take(&"a", t0).is_ok());
        }
        let wait = buckets.take(&"a", t0).expect_err("burst spent");
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert!(buckets.take(&"b", t0).is_ok(), "keys are apart");
        assert!(buckets.take(&"a", t0 + Duration::from_secs(1)).is_ok());
        assert!(buckets.take(&"a", t0 + Duration::from_secs(1)).is_err());
        buckets.give_back(&"a");
        assert!(buckets.take(&"a", t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn refilled_buckets_are_forgotten_when_the_table_is_full() {
        let mut buckets = TokenBuckets::new(1, 1.0, MAX_KEYS);
        let t0 = Instant::now();
        for i in 0..MAX_KEYS {
            assert!(buckets.take(&i, t0).is_ok());
        }
        assert!(buckets.take(&MAX_KEYS, t0).is_err(), "full: new keys wait");
        let later = t0 + Duration::from_secs(2);
        assert!(buckets.take(&MAX_KEYS, later).is_ok());
        assert_eq!(buckets.len(), 1, "only the new key's bucket is not full");
    }
}
