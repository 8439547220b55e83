//! Group commit: many writers, one fsync.
//!
//! Each writer applies its batch (visible, not yet durable) and takes a ticket.
//! A single flusher thread repeatedly flushes everything applied so far and
//! publishes the highest ticket covered; every writer whose ticket is covered
//! is released by that one flush. While a flush runs, new batches accumulate
//! and ride on the next one, so the fsync rate adapts to the load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Error, Result};

#[derive(Clone, Debug, Default)]
struct Flushed {
    ticket: u64,
    failure: Option<String>,
}

/// Resolves once a commit (or a barrier) is on disk.
#[must_use = "a commit is not durable until this resolves"]
pub struct Durable(Wait);

enum Wait {
    Ready,
    Ticket(u64, watch::Receiver<Flushed>),
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Wait::Ready => f.write_str("Durable(ready)"),
            Wait::Ticket(t, _) => write!(f, "Durable(ticket {t})"),
        }
    }
}

impl Durable {
    /// Already durable (an in-memory store, or nothing pending).
    pub fn ready() -> Self {
        Self(Wait::Ready)
    }

    pub async fn wait(self) -> Result<()> {
        let Wait::Ticket(ticket, mut rx) = self.0 else {
            return Ok(());
        };
        let flushed = rx
            .wait_for(|f| f.ticket >= ticket || f.failure.is_some())
            .await
            .map_err(|_| Error::FlushFailed("the flusher stopped".into()))?;
        match &flushed.failure {
            Some(failure) if flushed.ticket < ticket => Err(Error::FlushFailed(failure.clone())),
            _ => Ok(()),
        }
    }
}

/// Makes everything applied so far durable; returns whether it had anything
/// to write.
type FlushFn = Box<dyn FnMut() -> std::result::Result<bool, String> + Send>;

/// How long the flusher stays idle before it flushes what was applied
/// without a ticket (a lease): such writes wait for the next commit's flush,
/// and without this an idle server would keep them in memory only.
const IDLE_FLUSH: Duration = Duration::from_millis(100);

/// What the flusher is told under its lock.
#[derive(Default)]
struct Signal {
    /// Something was applied since the flusher last looked.
    pending: bool,
    /// The flusher sleeps on the condition variable: only then does a wake
    /// need the notification's system call (one per commit otherwise).
    sleeping: bool,
}

struct Shared {
    applied: AtomicU64,
    signal: Mutex<Signal>,
    wake: Condvar,
    stop: AtomicBool,
    flushed: watch::Sender<Flushed>,
}

/// Owns the flusher thread; stops it when dropped.
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    pub(crate) fn start(flush: FlushFn) -> std::io::Result<Self> {
        let (flushed, _) = watch::channel(Flushed::default());
        let shared = Arc::new(Shared {
            applied: AtomicU64::new(0),
            signal: Mutex::new(Signal::default()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            flushed,
        });
        let worker = Arc::clone(&shared);
        let thread =
            std::thread::Builder::new().name("sagaflow-flusher".into()).spawn(move || flush_loop(&worker, flush))?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// Call after the batch is applied: the returned ticket covers it.
    pub(crate) fn applied(&self) -> Durable {
        let ticket = self.shared.applied.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake();
        Durable(Wait::Ticket(ticket, self.shared.flushed.subscribe()))
    }

    /// Covers everything applied before this call.
    pub(crate) fn barrier(&self) -> Durable {
        let ticket = self.shared.applied.load(Ordering::SeqCst);
        if self.shared.flushed.borrow().ticket >= ticket {
            return Durable::ready();
        }
        self.wake();
        Durable(Wait::Ticket(ticket, self.shared.flushed.subscribe()))
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.shared.flushed.borrow().failure.clone()
    }

    fn wake(&self) {
        let sleeping = {
            let mut signal = self.shared.signal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            signal.pending = true;
            signal.sleeping
        };
        // Notified after the lock is released, so that the flusher does not
        // wake only to wait for it.
        if sleeping {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn flush_loop(shared: &Shared, mut flush: FlushFn) {
    loop {
        let idle = {
            let mut signal = shared.signal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut idle = false;
            while !signal.pending && !shared.stop.load(Ordering::SeqCst) {
                signal.sleeping = true;
                let (guard, waited) =
                    shared.wake.wait_timeout(signal, IDLE_FLUSH).unwrap_or_else(std::sync::PoisonError::into_inner);
                signal = guard;
                signal.sleeping = false;
                if waited.timed_out() {
                    idle = true;
                    break;
                }
            }
            signal.pending = false;
            idle
        };
        // Every ticket up to `target` was applied before this load, so one
        // flush now makes all of them durable.
        let target = shared.applied.load(Ordering::SeqCst);
        let done = shared.flushed.borrow().ticket;
        // Stopping, it also writes what has no ticket, as when idle.
        if target > done || idle || shared.stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            let outcome = flush();
            if outcome != Ok(false) {
                crate::metrics::record_flush(started.elapsed());
            }
            match outcome {
                Ok(_) if target > done => shared.flushed.send_modify(|f| f.ticket = target),
                Ok(_) => {}
                Err(failure) => {
                    tracing::error!(%failure, "flush failed; refusing further acknowledgements");
                    shared.flushed.send_modify(|f| f.failure = Some(failure));
                    return;
                }
            }
        }
        if shared.stop.load(Ordering::SeqCst) && shared.applied.load(Ordering::SeqCst) <= shared.flushed.borrow().ticket
        {
            return;
        }
    }
}
