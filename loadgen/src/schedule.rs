//! [`Schedule`]: the open loop's arrival times, and [`latency_origin`], where a request's latency
//! is counted from.
//!
//! Slot `i` is due at `start + i / rate`, whatever happened to the requests before it. Tasks claim
//! slots in order; a task that claims a slot already due (every task was busy) sends at once, and
//! the time the request spent waiting for a task counts as latency. That is what keeps a slow
//! server from hiding its queueing behind a generator that politely waited (coordinated omission).

use std::time::{Duration, Instant};

/// A fixed-rate arrival schedule.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    rate: f64,
}

impl Schedule {
    /// `rate` requests per second from `start`; the configuration keeps `rate` positive.
    pub fn new(start: Instant, rate: f64) -> Schedule {
        Schedule { start, rate }
    }

    /// When slot `slot` is due.
    pub fn due(&self, slot: u64) -> Instant {
        self.start + self.offset(slot)
    }

    /// Slot `slot`'s offset from the start.
    pub fn offset(&self, slot: u64) -> Duration {
        // f64 is exact enough: at 10^6 requests/s for a day, slot numbers stay below 2^37 and the
        // rounding error is far under a nanosecond per slot.
        Duration::from_secs_f64(slot as f64 / self.rate)
    }

    /// How many slots are due strictly before `time` (the slots of `[start, time)`).
    pub fn slots_before(&self, time: Instant) -> u64 {
        let elapsed = time.saturating_duration_since(self.start).as_secs_f64();
        let slots = (elapsed * self.rate).ceil() as u64;
        // Floating point may put a slot due exactly at `time` on either side; settle it exactly.
        if slots > 0 && self.due(slots - 1) >= time {
            slots - 1
        } else if self.due(slots) < time {
            slots + 1
        } else {
            slots
        }
    }
}

/// How early a task wakes for its slot. Tokio's timer fires on millisecond ticks, rounding a
/// deadline up; waking a tick early and sending right away keeps sends on time on average,
/// instead of up to a millisecond late every time.
pub const TIMER_SLACK: Duration = Duration::from_millis(1);

/// Where a request's latency starts: its due time, or the moment it was actually sent if that
/// was earlier (a task that woke [`TIMER_SLACK`] early must not count the early part as zero
/// latency, nor the server's answer as arriving before the request existed).
pub fn latency_origin(due: Instant, sent: Instant) -> Instant {
    due.min(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_evenly_spaced_at_the_rate() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 500.0);
        assert_eq!(schedule.due(0), start);
        assert_eq!(schedule.offset(1), Duration::from_millis(2));
        assert_eq!(schedule.offset(500), Duration::from_secs(1));
        assert_eq!(schedule.offset(1250), Duration::from_millis(2500));

        let fractional = Schedule::new(start, 0.5);
        assert_eq!(fractional.offset(3), Duration::from_secs(6));
    }

    #[test]
    fn slots_before_counts_the_half_open_window() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 500.0);
        assert_eq!(schedule.slots_before(start), 0);
        // Slot 0 is due at the start itself.
        assert_eq!(schedule.slots_before(start + Duration::from_nanos(1)), 1);
        // Slots 0..=499 are due before 1 s; slot 500 is due exactly at it.
        assert_eq!(schedule.slots_before(start + Duration::from_secs(1)), 500);
        assert_eq!(
            schedule.slots_before(start + Duration::from_secs(1) + Duration::from_nanos(1)),
            501
        );
        // A window [warm-up end, end) holds rate × its length.
        let measured = schedule.slots_before(start + Duration::from_secs(6))
            - schedule.slots_before(start + Duration::from_secs(5));
        assert_eq!(measured, 500);

        let odd = Schedule::new(start, 333.0);
        for millis in [0u64, 1, 3, 999, 1000, 1001, 12_345] {
            let time = start + Duration::from_millis(millis);
            let n = odd.slots_before(time);
            assert!(n == 0 || odd.due(n - 1) < time, "{millis} ms");
            assert!(odd.due(n) >= time, "{millis} ms");
        }
    }

    #[test]
    fn latency_counts_from_the_due_time_when_late() {
        let due = Instant::now();
        let late = due + Duration::from_millis(40);
        // Sent 40 ms late because every task was busy: those 40 ms are the server's queue.
        assert_eq!(latency_origin(due, late), due);
        // Sent a little early: counted from the send, never a negative wait.
        let early = due - Duration::from_micros(300);
        assert_eq!(latency_origin(due, early), early);
    }
}
