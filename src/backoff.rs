//! The one retry policy of the engine: exponential backoff with jitter, capped, reset after a
//! period of success.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

/// Exponential backoff state for one retried activity (a link, a connection).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    healthy_after: Duration,
    started: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Delays start at `initial` and double up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
            healthy_after: Duration::from_secs(60),
            started: None,
        }
    }

    /// Call when an attempt starts.
    pub fn attempt_started(&mut self) {
        self.started = Some(Instant::now());
    }

    /// The delay before the next attempt after a failure. An attempt that ran healthily for a
    /// minute resets the delay to the initial one.
    pub fn failed(&mut self) -> Duration {
        if self
            .started
            .is_some_and(|s| s.elapsed() >= self.healthy_after)
        {
            self.next = self.initial;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        // Up to 25% jitter so that many links do not retry in lockstep.
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let jitter = random % (nanos / 4 + 1);
        delay + Duration::from_nanos(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<Duration> = (0..5).map(|_| backoff.failed()).collect();
        let floors = [100, 200, 400, 500, 500].map(Duration::from_millis);
        for (delay, floor) in delays.iter().zip(floors) {
            assert!(*delay >= floor && *delay <= floor + floor / 4, "{delays:?}");
        }
    }
}
