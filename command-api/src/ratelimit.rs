//! Per-client write rate limits: a token bucket per client, 429 with `Retry-After` past it.
//!
//! A client is the authenticated user for every write but sign-up, and the peer IP for
//! sign-ups (they have no user yet). Each bucket holds up to `burst` tokens and gains `rate`
//! a second; a write takes one, and a write that finds less than one is refused with the
//! whole seconds until one is there (at least 1). A refused write takes nothing, so a client
//! that keeps hammering gets in again as soon as it waits as told.
//!
//! The clock is a parameter (`now`) of every call, so the tests drive time by hand.
//!
//! Memory: a bucket that has refilled to `burst` is the same as no bucket, so it can be
//! dropped without changing any answer. The map is swept of such buckets whenever it reaches
//! twice its size after the last sweep (amortised O(1) a write); what stays is clients that
//! wrote within the last `burst / rate` seconds, which the write rate the service can take
//! bounds.
//!
//! One mutex over one map: the critical section is a hash lookup and a little arithmetic,
//! and writes are bound by the broker at hundreds to a few thousand a second, far below what
//! such a lock serialises; shards would be the next step if it ever shows in a profile.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use service_kit::metrics::Metrics;
use uuid::Uuid;

/// Who a bucket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// An authenticated user (the token's `sub`).
    User(Uuid),
    /// A peer address, for sign-ups.
    Ip(IpAddr),
}

/// A write over its client's limit: retry in `retry_after_secs` (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many writes from this client; retry in {retry_after_secs} s")]
pub struct RateLimited {
    pub retry_after_secs: u64,
}

/// The sweep never runs below this many buckets: small maps cost nothing to keep.
const MIN_SWEEP_AT: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
struct Buckets {
    map: HashMap<Client, Bucket>,
    sweep_at: usize,
}

/// The buckets of every client; see the module documentation.
#[derive(Debug)]
pub struct WriteLimits {
    /// Tokens a second; with `burst`, `None` when limits are off.
    settings: Option<(f64, f64)>,
    buckets: Mutex<Buckets>,
    /// Refusals since start, by kind of client; atomics, so the metrics are never locked on the
    /// path of a refused write.
    refused_users: AtomicU64,
    refused_ips: AtomicU64,
}

impl WriteLimits {
    /// `rate` writes a second with bursts of `burst`; either 0 turns limits off. The refusal
    /// counter is registered in `metrics`.
    pub fn new(rate: u32, burst: u32, metrics: &Metrics) -> Arc<WriteLimits> {
        let limits = Arc::new(WriteLimits::unregistered(f64::from(rate), burst));
        // A weak reference, so the metrics never keep dropped limits alive.
        let weak = Arc::downgrade(&limits);
        metrics.sampled_counter(
            "command_writes_rate_limited_total",
            "Writes answered 429 for their client's rate limit (WRITE_RATE_PER_SEC, \
             WRITE_BURST), by client kind: user (the token's subject) or ip (sign-ups).",
            move || {
                weak.upgrade()
                    .map(|l| {
                        vec![
                            (vec![("client", "user".to_owned())], l.refused(true) as f64),
                            (vec![("client", "ip".to_owned())], l.refused(false) as f64),
                        ]
                    })
                    .unwrap_or_default()
            },
        );
        limits
    }

    /// The rate is a float here, although the setting is whole writes a second, so that the
    /// tests can check waits longer than a second (a whole rate never makes one).
    fn unregistered(rate: f64, burst: u32) -> WriteLimits {
        WriteLimits {
            settings: (rate > 0.0 && burst > 0).then_some((rate, f64::from(burst))),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                sweep_at: MIN_SWEEP_AT,
            }),
            refused_users: AtomicU64::new(0),
            refused_ips: AtomicU64::new(0),
        }
    }

    /// Takes a token of `client`'s bucket at `now`, or says how long to wait for one.
    pub fn check(&self, client: Client, now: Instant) -> Result<(), RateLimited> {
        let Some((rate, burst)) = self.settings else {
            return Ok(());
        };
        // A panic elsewhere while holding the lock leaves the map consistent (every update is
        // one assignment), so a poisoned lock is used as is.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.map.len() >= buckets.sweep_at {
            buckets.map.retain(|_, bucket| {
                refilled(bucket.tokens, bucket.updated, now, rate, burst) < burst
            });
            buckets.sweep_at = (buckets.map.len() * 2).max(MIN_SWEEP_AT);
        }
        let bucket = buckets.map.entry(client).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let tokens = refilled(bucket.tokens, bucket.updated, now, rate, burst);
        // `now` may be behind `updated` when callers race to the lock; never move it back.
        bucket.updated = bucket.updated.max(now);
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            return Ok(());
        }
        bucket.tokens = tokens;
        drop(buckets);
        let counter = match client {
            Client::User(_) => &self.refused_users,
            Client::Ip(_) => &self.refused_ips,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Whole seconds, rounded up, so that a client that waits as told finds a token.
        let wait = ((1.0 - tokens) / rate).ceil();
        Err(RateLimited {
            retry_after_secs: (wait as u64).max(1),
        })
    }

    /// Clients with a bucket now (tests and diagnostics).
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }

    /// Refusals since start: of users when `users`, else of IPs.
    pub fn refused(&self, users: bool) -> u64 {
        let counter = if users {
            &self.refused_users
        } else {
            &self.refused_ips
        };
        counter.load(Ordering::Relaxed)
    }
}

/// The tokens of a bucket that held `tokens` at `updated`, at `now`.
fn refilled(tokens: f64, updated: Instant, now: Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(updated);
    (tokens + elapsed.as_secs_f64() * rate).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ADA: Client = Client::User(Uuid::from_u128(1));
    const BOB: Client = Client::User(Uuid::from_u128(2));

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_is_admitted_then_the_next_write_is_refused_and_other_clients_are_not() {
        let limits = WriteLimits::unregistered(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            limits.check(ADA, t0).expect("within the burst");
        }
        assert_eq!(
            limits.check(ADA, t0),
            Err(RateLimited {
                retry_after_secs: 1
            })
        );
        limits.check(BOB, t0).expect("a bucket of its own");
        let ip = Client::Ip("192.0.2.1".parse().expect("ip"));
        limits.check(ip, t0).expect("a bucket of its own");
        assert_eq!(limits.refused(true), 1);
        assert_eq!(limits.refused(false), 0);
    }

    #[test]
    fn tokens_refill_at_the_rate_up_to_the_burst() {
        let limits = WriteLimits::unregistered(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            limits.check(ADA, t0).expect("within the burst");
        }
        // Half a token at 250 ms: not yet.
        assert!(limits.check(ADA, t0 + ms(250)).is_err());
        // One token at 500 ms, and only one.
        limits.check(ADA, t0 + ms(500)).expect("refilled");
        assert!(limits.check(ADA, t0 + ms(500)).is_err());
        // A long idle time refills to the burst, not past it.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            limits.check(ADA, later).expect("a full bucket");
        }
        assert!(limits.check(ADA, later).is_err());
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        // One token every 1/20 s: the wait is 50 ms, answered as 1 s.
        let fast = WriteLimits::unregistered(20.0, 1);
        let t0 = Instant::now();
        fast.check(ADA, t0).expect("the burst");
        assert_eq!(fast.check(ADA, t0).map_err(|e| e.retry_after_secs), Err(1));

        // A rate of 1/s: an empty bucket 300 ms after its last token waits 0.7 s, so 1.
        let slow = WriteLimits::unregistered(1.0, 1);
        slow.check(ADA, t0).expect("the burst");
        assert_eq!(
            slow.check(ADA, t0 + ms(300))
                .map_err(|e| e.retry_after_secs),
            Err(1)
        );
        // Waiting as told finds a token.
        slow.check(ADA, t0 + ms(300) + Duration::from_secs(1))
            .expect("the retry after Retry-After is admitted");

        // One token every 2.5 s: 2.5 s is answered as 3, and 1 s later the wait is 1.5 s, so 2.
        let slower = WriteLimits::unregistered(0.4, 1);
        slower.check(ADA, t0).expect("the burst");
        assert_eq!(
            slower.check(ADA, t0).map_err(|e| e.retry_after_secs),
            Err(3)
        );
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            slower.check(ADA, later).map_err(|e| e.retry_after_secs),
            Err(2)
        );
        slower
            .check(ADA, later + Duration::from_secs(2))
            .expect("the retry after Retry-After is admitted");
    }

    #[test]
    fn zero_turns_limits_off() {
        let t0 = Instant::now();
        for limits in [
            WriteLimits::unregistered(0.0, 40),
            WriteLimits::unregistered(20.0, 0),
        ] {
            for _ in 0..1000 {
                limits.check(ADA, t0).expect("no limit");
            }
            assert_eq!(limits.tracked(), 0);
        }
    }

    #[test]
    fn buckets_of_idle_clients_are_swept_when_the_map_grows() {
        let limits = WriteLimits::unregistered(10.0, 2);
        let t0 = Instant::now();
        limits.check(ADA, t0).expect("first write");
        limits.check(ADA, t0).expect("second write");
        for n in 1..MIN_SWEEP_AT as u128 {
            limits
                .check(Client::User(Uuid::from_u128(n + 100)), t0)
                .expect("first write");
        }
        // Just below the sweep: nobody was dropped, although all are as old.
        assert_eq!(limits.tracked(), MIN_SWEEP_AT);
        // 150 ms later every other client has refilled (1 + 1.5 tokens, capped at 2) and is
        // dropped; Ada (0 + 1.5 tokens) is not, and keeps her state.
        let later = t0 + ms(150);
        limits.check(BOB, later).expect("a new client");
        assert_eq!(limits.tracked(), 2, "Ada and Bob");
        limits.check(ADA, later).expect("1.5 tokens");
        assert!(limits.check(ADA, later).is_err(), "0.5 tokens");
    }

    #[test]
    fn the_counter_is_in_the_metrics() {
        let metrics = Metrics::default();
        let limits = WriteLimits::new(1, 1, &metrics);
        let t0 = Instant::now();
        limits.check(ADA, t0).expect("the burst");
        assert!(limits.check(ADA, t0).is_err());
        let text = metrics.render();
        assert!(
            text.contains(r#"command_writes_rate_limited_total{client="user"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"command_writes_rate_limited_total{client="ip"} 0"#),
            "{text}"
        );
    }
}
