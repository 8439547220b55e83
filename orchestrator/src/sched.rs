//! A short scheduler slice for the process's threads.
//!
//! Linux's EEVDF scheduler (6.6 and later) lets a running thread keep its CPU
//! for a whole slice, 0.7 ms × (1 + log2 CPUs) by default (1.4 ms on two
//! CPUs), before a woken thread of equal weight may take it. The server's
//! threads work in short bursts between waits: a commit's waiter, woken by
//! the flush, queued behind a neighbour's slice. Since 6.12 a thread may ask
//! for a shorter slice (`sched_attr.sched_runtime`); it is then picked
//! sooner after a wake-up and gives the CPU back sooner. Its share of CPU
//! time does not change. Measured: bench phase c +4% and a lower p99
//! (docs/adr/0014-short-scheduler-slice.md).

/// The slice asked for unless `SAGAFLOW_SCHED_SLICE_US` says otherwise; the
/// kernel's smallest.
pub const DEFAULT_SLICE_US: u64 = 100;

/// The environment variable that sets the slice, in microseconds; 0 keeps
/// the kernel's default.
pub const SLICE_ENV: &str = "SAGAFLOW_SCHED_SLICE_US";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{SLICE_ENV} must be a whole number of microseconds (0 keeps the kernel's default), not {0:?}")]
    BadSetting(String),
    #[error("sched_setattr: {0}")]
    Kernel(#[from] std::io::Error),
}

/// The slice `SAGAFLOW_SCHED_SLICE_US` asks for; `None` for the kernel's default.
pub fn configured_slice_us() -> Result<Option<u64>, Error> {
    match std::env::var(SLICE_ENV) {
        Err(_) => Ok(Some(DEFAULT_SLICE_US)),
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(us) => Ok(Some(us)),
            Err(_) => Err(Error::BadSetting(text)),
        },
    }
}

/// Asks for a slice of `us` microseconds for the calling thread, keeping its
/// policy and nice value. Threads and processes it starts afterwards inherit
/// it, so a binary calls this once, before it starts its runtime. Kernels
/// before 6.12 accept the call and keep their default slice.
pub fn request_slice(us: u64) -> Result<(), Error> {
    const SCHED_FLAG_KEEP_POLICY: u64 = 0x08;
    // The kernel reads `size` bytes of this layout (SCHED_ATTR_SIZE_VER0).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    let nice =
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).map_err(|e| Error::Kernel(e.into()))?;
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: 0,
        flags: SCHED_FLAG_KEEP_POLICY,
        nice,
        priority: 0,
        runtime: us.saturating_mul(1000),
        deadline: 0,
        period: 0,
    };
    // SAFETY: sched_setattr(2) only reads `attr.size` bytes from the pointer,
    // which points at a live, fully initialised `repr(C)` value of that size
    // for the whole call; pid 0 is the calling thread. Nothing is retained.
    #[allow(unsafe_code)]
    let status = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) };
    if status == 0 { Ok(()) } else { Err(Error::Kernel(std::io::Error::last_os_error())) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn slice_ns_of_this_thread() -> Option<u64> {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        let line = sched.lines().find(|l| l.starts_with("se.slice"))?;
        line.split(':').nth(1)?.trim().parse().ok()
    }

    fn kernel_has_custom_slices() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut numbers = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
        (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (6, 12)
    }

    #[test]
    fn the_thread_and_the_threads_it_starts_get_the_slice() {
        std::thread::spawn(|| {
            let before = slice_ns_of_this_thread();
            request_slice(250).unwrap();
            if !kernel_has_custom_slices() {
                return;
            }
            assert_ne!(before, Some(250_000), "the default must differ for the test to show anything");
            assert_eq!(slice_ns_of_this_thread(), Some(250_000));
            let inherited = std::thread::spawn(slice_ns_of_this_thread).join().unwrap();
            assert_eq!(inherited, Some(250_000));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_nice_value_is_kept() {
        std::thread::spawn(|| {
            let tid = Some(rustix::thread::gettid());
            rustix::process::setpriority_process(tid, 5).unwrap();
            request_slice(300).unwrap();
            assert_eq!(rustix::process::getpriority_process(tid).unwrap(), 5);
        })
        .join()
        .unwrap();
    }
}
