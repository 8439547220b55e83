//! Retry delays: exponential, capped, and jittered. The one backoff of the
//! project: workers reconnecting, the relay and consumers retrying the
//! broker, and the server's accept loop out of file descriptors all use it.

use std::time::Duration;

use rand::Rng;

/// Doubles the delay after each failed attempt, from `initial` up to `max`.
///
/// Each delay is drawn between half and all of the current step ("equal
/// jitter"), so that workers that lost the orchestrator at the same moment do
/// not all come back in the same instant, while none retries much sooner than
/// planned.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        Self { initial, max, step: initial }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        let half = step / 2;
        let jitter = rand::rng().random_range(Duration::ZERO..=step.saturating_sub(half));
        half + jitter
    }

    /// Starts again from `initial`, after a successful connection.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_stay_within_their_step() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let steps = [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000];
        for step in steps {
            let step = Duration::from_millis(step);
            let delay = backoff.next_delay();
            assert!(delay >= step / 2 && delay <= step, "{delay:?} outside {step:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn a_cap_below_the_initial_delay_is_raised_to_it() {
        let mut backoff = Backoff::new(Duration::from_millis(300), Duration::from_millis(10));
        for _ in 0..4 {
            assert!(backoff.next_delay() <= Duration::from_millis(300));
        }
    }
}
