//! What a sagaflow process asks of the kernel at start, before it starts any
//! thread, so that its threads and the processes it starts (the server and
//! worker that `sagaflow bench` runs) inherit it.
//!
//! **No transparent huge pages.** mimalloc madvises its arenas for huge
//! pages, and the first touch of each 2 MiB page zeroes all of it in the
//! faulting thread: a commit paid for that in the middle of its work, and a
//! profile of bench phase c put 4.5% of the server's CPU in page faults. With
//! 4 KiB pages phase c runs 3–8% faster and the server's RSS after a restart
//! with 100,000 open workflows is 128 MiB instead of 178
//! (docs/adr/0014-no-transparent-huge-pages.md).

/// The environment variable that, set to `1`, keeps transparent huge pages.
pub const HUGE_PAGES_ENV: &str = "SAGAFLOW_HUGE_PAGES";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{HUGE_PAGES_ENV} must be 0 or 1, not {0:?}")]
    BadSetting(String),
    #[error("prctl(PR_SET_THP_DISABLE): {0}")]
    Kernel(std::io::Error),
}

/// Applies what the environment asks for (by default: no transparent huge
/// pages). A setting that is not understood is an error; a kernel that
/// refuses is reported in the returned list, and the process runs on.
pub fn tune_from_env() -> Result<Vec<Error>, Error> {
    let huge_pages = huge_pages_wanted(std::env::var(HUGE_PAGES_ENV).ok().as_deref())?;
    let mut refused = Vec::new();
    if !huge_pages && let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        refused.push(Error::Kernel(e.into()));
    }
    Ok(refused)
}

/// From the variable's value, `None` when unset.
fn huge_pages_wanted(value: Option<&str>) -> Result<bool, Error> {
    match value {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(other) => Err(Error::BadSetting(other.to_owned())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_off_unless_asked_for_and_nonsense_is_refused() {
        assert!(!huge_pages_wanted(None).unwrap());
        assert!(!huge_pages_wanted(Some("0")).unwrap());
        assert!(huge_pages_wanted(Some("1")).unwrap());
        assert!(matches!(huge_pages_wanted(Some("yes")), Err(Error::BadSetting(v)) if v == "yes"));
    }

    #[test]
    fn huge_pages_are_turned_off_for_the_process() {
        // The flag belongs to the whole process, and no other test reads it.
        let refused = tune_from_env().unwrap();
        assert!(refused.is_empty(), "{refused:?}");
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
    }
}
