//! Sleeps that end within microseconds of their deadline, for the bench
//! activities' simulated latency.
//!
//! tokio's timer rounds a deadline up to its next millisecond tick, which
//! would make a 5 ms activity take about 6 ms and the bench measure the timer
//! rather than the engine. A timerfd per sleep is exact, but creating,
//! registering and closing one cost the worker process ~20% of its CPU in
//! phase c, CPU that the orchestrator on the same two cores then lacks. So
//! every sleep of a process shares one timerfd, armed for the earliest
//! deadline, and one task wakes the sleepers whose deadlines have passed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// A shared timer; clones share its timerfd. Made outside a runtime, it
/// opens the timerfd at the first sleep, inside the runtime that drives it.
#[derive(Clone, Default)]
pub struct PreciseTimer {
    shared: Arc<OnceLock<Option<Arc<Shared>>>>,
}

struct Shared {
    fd: AsyncFd<OwnedFd>,
    /// Deadlines not yet woken, earliest first. The timerfd is armed for
    /// the earliest: a new sleeper re-arms it only when it goes first.
    queue: Mutex<BinaryHeap<Reverse<Sleeper>>>,
}

struct Sleeper {
    deadline: Instant,
    wake: Arc<Notify>,
}

impl PartialEq for Sleeper {
    fn eq(&self, other: &Self) -> bool {
        self.deadline == other.deadline
    }
}

impl Eq for Sleeper {}

impl PartialOrd for Sleeper {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Sleeper {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.deadline.cmp(&other.deadline)
    }
}

impl PreciseTimer {
    /// Waits `duration`. Where no timerfd can be had, it falls back to
    /// tokio's timer, late by up to a millisecond.
    pub async fn sleep(&self, duration: Duration) {
        let deadline = Instant::now() + duration;
        match self.shared.get_or_init(Shared::start) {
            Some(shared) => shared.sleep_until(deadline).await,
            None => tokio::time::sleep_until(deadline.into()).await,
        }
    }
}

impl Shared {
    fn start() -> Option<Arc<Self>> {
        // `AsyncFd::new` is deprecated for descriptors that something else
        // may close while registered. This one is an `OwnedFd` that the
        // `AsyncFd` alone holds, which is the case it is sound for (and the
        // workspace forbids the `unsafe` of its replacement).
        #[allow(deprecated)]
        let opened =
            rustix::time::timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC)
                .map_err(std::io::Error::from)
                .and_then(AsyncFd::new);
        let fd = opened.inspect_err(|e| tracing::warn!(error = %e, "no timerfd; sleeps may run late by 1 ms")).ok()?;
        let shared = Arc::new(Self { fd, queue: Mutex::default() });
        tokio::spawn(Arc::clone(&shared).wake_due());
        Some(shared)
    }

    async fn sleep_until(&self, deadline: Instant) {
        let wake = Arc::new(Notify::new());
        self.queue(Sleeper { deadline, wake: Arc::clone(&wake) });
        // A wake-up that comes first leaves a permit for this wait.
        wake.notified().await;
    }

    fn queue(&self, sleeper: Sleeper) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let deadline = sleeper.deadline;
        let first = queue.peek().is_none_or(|Reverse(earliest)| deadline < earliest.deadline);
        queue.push(Reverse(sleeper));
        if first {
            self.arm(deadline);
        }
    }

    /// Called with the queue locked, so that arming follows the queue's order.
    fn arm(&self, deadline: Instant) {
        // A zero value would disarm the timer instead of firing it now.
        let after = deadline.saturating_duration_since(Instant::now()).max(Duration::from_nanos(1));
        let value = Itimerspec { it_interval: timespec(Duration::ZERO), it_value: timespec(after) };
        if let Err(e) = rustix::time::timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &value) {
            tracing::warn!(error = %e, "could not arm the timerfd");
        }
    }

    /// Runs for as long as the runtime: wakes every due sleeper each time the
    /// timerfd fires, then arms it for the next deadline.
    async fn wake_due(self: Arc<Self>) {
        loop {
            let Ok(mut ready) = self.fd.readable().await else { return };
            let mut expirations = [0_u8; 8];
            if ready.try_io(|fd| Ok(rustix::io::read(fd, &mut expirations)?)).is_err() {
                continue;
            }
            let now = Instant::now();
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            while queue.peek().is_some_and(|Reverse(first)| first.deadline <= now) {
                if let Some(Reverse(due)) = queue.pop() {
                    due.wake.notify_one();
                }
            }
            if let Some(Reverse(next)) = queue.peek() {
                self.arm(next.deadline);
            }
        }
    }
}

fn timespec(duration: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(duration.subsec_nanos()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sleeps_end_at_their_deadline_not_the_next_millisecond() {
        let timer = PreciseTimer::default();
        let mut late = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            timer.sleep(Duration::from_micros(2_300)).await;
            late.push(started.elapsed().saturating_sub(Duration::from_micros(2_300)));
        }
        late.sort();
        // Each sleep starts just after a wake-up, so tokio's tick rounding
        // would make every one ~0.7 ms late; the best of twenty tolerates a
        // loaded machine.
        assert!(late[0] < Duration::from_micros(400), "late by {late:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sleeps_each_end_after_their_own_deadline() {
        let timer = PreciseTimer::default();
        let started = Instant::now();
        let sleeps: Vec<_> = [7_u64, 1, 4, 1, 9, 3]
            .into_iter()
            .map(|ms| {
                let timer = timer.clone();
                tokio::spawn(async move {
                    timer.sleep(Duration::from_millis(ms)).await;
                    (ms, started.elapsed())
                })
            })
            .collect();
        for sleep in sleeps {
            let (ms, ended) = sleep.await.unwrap();
            assert!(ended >= Duration::from_millis(ms), "{ms} ms ended after {ended:?}");
            assert!(ended < Duration::from_millis(ms + 50), "{ms} ms ended after {ended:?}");
        }
    }
}
