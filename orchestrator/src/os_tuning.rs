//! What a sagaflow process asks of the kernel at start, before it starts any
//! thread: both are inherited by its threads and by the processes it starts
//! (the server and worker that `sagaflow bench` runs).
//!
//! **A short scheduler slice.** Linux's EEVDF scheduler (6.6 and later) lets
//! a running thread keep its CPU for a whole slice, 0.7 ms × (1 + log2 CPUs)
//! by default (1.4 ms on two CPUs), before a woken thread of equal weight may
//! take it. The server's threads work in short bursts between waits: a
//! commit's waiter, woken by the flush, queued behind a neighbour's slice.
//! Since 6.12 a thread may ask for a shorter slice (`sched_attr.sched_runtime`);
//! it is then picked sooner after a wake-up and gives the CPU back sooner. Its
//! share of CPU time does not change.
//!
//! **No transparent huge pages.** mimalloc asks for huge pages on its arenas,
//! and the first touch of each 2 MiB page zeroes all of it in the faulting
//! thread: a commit paid for that in the middle of its work. With 4 KiB pages
//! the same memory costs less CPU in total (bench phase c and b: −6% CPU a saga).
//!
//! Measured in docs/adr/0014-process-tuning.md.

/// The slice asked for unless `SAGAFLOW_SCHED_SLICE_US` says otherwise; the
/// kernel's smallest.
pub const DEFAULT_SLICE_US: u64 = 100;

/// The environment variable that sets the slice, in microseconds; 0 keeps
/// the kernel's default.
pub const SLICE_ENV: &str = "SAGAFLOW_SCHED_SLICE_US";

/// The environment variable that, set to `1`, keeps transparent huge pages.
pub const HUGE_PAGES_ENV: &str = "SAGAFLOW_HUGE_PAGES";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{SLICE_ENV} must be a whole number of microseconds (0 keeps the kernel's default), not {0:?}")]
    BadSlice(String),
    #[error("{HUGE_PAGES_ENV} must be 0 or 1, not {0:?}")]
    BadHugePages(String),
    #[error("sched_setattr: {0}")]
    Kernel(#[from] std::io::Error),
    #[error("prctl(PR_SET_THP_DISABLE): {0}")]
    HugePages(std::io::Error),
}

/// Applies what the environment asks for (by default: a 100 µs slice and no
/// transparent huge pages). A setting that is not understood is an error; a
/// kernel that refuses one is reported in the returned list, and the process
/// runs on without it.
pub fn tune_from_env() -> Result<Vec<Error>, Error> {
    let settings =
        Settings::parse(std::env::var(SLICE_ENV).ok().as_deref(), std::env::var(HUGE_PAGES_ENV).ok().as_deref())?;
    let mut refused = Vec::new();
    if let Some(us) = settings.slice_us
        && let Err(e) = request_slice(us)
    {
        refused.push(e);
    }
    if !settings.huge_pages
        && let Err(e) = rustix::thread::disable_transparent_huge_pages(true)
    {
        refused.push(Error::HugePages(e.into()));
    }
    Ok(refused)
}

#[derive(Debug, PartialEq, Eq)]
struct Settings {
    /// `None` keeps the kernel's default.
    slice_us: Option<u64>,
    huge_pages: bool,
}

impl Settings {
    /// From the two variables' values (`None` when unset).
    fn parse(slice: Option<&str>, huge_pages: Option<&str>) -> Result<Self, Error> {
        let slice_us = match slice.map(|text| (text, text.trim().parse::<u64>())) {
            None => Some(DEFAULT_SLICE_US),
            Some((_, Ok(0))) => None,
            Some((_, Ok(us))) => Some(us),
            Some((text, Err(_))) => return Err(Error::BadSlice(text.to_owned())),
        };
        let huge_pages = match huge_pages {
            None | Some("0") => false,
            Some("1") => true,
            Some(other) => return Err(Error::BadHugePages(other.to_owned())),
        };
        Ok(Self { slice_us, huge_pages })
    }
}

/// Asks for a slice of `us` microseconds for the calling thread, keeping its
/// policy and nice value; threads and processes it starts afterwards inherit
/// it. Kernels before 6.12 accept the call and keep their default slice.
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
    fn settings_default_to_a_short_slice_without_huge_pages_and_refuse_nonsense() {
        let parse = |slice, huge| Settings::parse(slice, huge);
        assert_eq!(parse(None, None).unwrap(), Settings { slice_us: Some(DEFAULT_SLICE_US), huge_pages: false });
        assert_eq!(parse(Some(" 300 "), Some("1")).unwrap(), Settings { slice_us: Some(300), huge_pages: true });
        assert_eq!(parse(Some("0"), Some("0")).unwrap(), Settings { slice_us: None, huge_pages: false });
        assert!(matches!(parse(Some("fast"), None), Err(Error::BadSlice(v)) if v == "fast"));
        assert!(matches!(parse(Some("-5"), None), Err(Error::BadSlice(_))));
        assert!(matches!(parse(None, Some("yes")), Err(Error::BadHugePages(v)) if v == "yes"));
    }

    #[test]
    fn huge_pages_are_turned_off_for_the_process() {
        // The flag belongs to the whole process, and no other test reads it.
        std::thread::spawn(|| {
            let refused = tune_from_env().unwrap();
            assert!(refused.is_empty(), "{refused:?}");
            assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
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
