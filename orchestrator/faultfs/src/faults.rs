//! The faults a test arms: errors on chosen operations, a full disk, and a
//! trap that cuts the power at a chosen operation.

/// The operations faults and traps can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    /// `fsync` and `fdatasync` of a file (not of a directory).
    Fsync,
    Create,
    Rename,
    Unlink,
    Mkdir,
    /// Size changes (`truncate`, `ftruncate`, `fallocate`).
    Resize,
    /// Matches every operation above.
    Any,
}

impl Op {
    fn matches(self, op: Op) -> bool {
        self == Op::Any || self == op
    }
}

/// An operation on a file whose path (relative to the mount) contains
/// `path_contains`; an empty string matches every file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub op: Op,
    pub path_contains: String,
}

impl Matcher {
    pub fn new(op: Op, path_contains: impl Into<String>) -> Self {
        Self { op, path_contains: path_contains.into() }
    }

    fn matches(&self, op: Op, path: &str) -> bool {
        self.op.matches(op) && path.contains(&self.path_contains)
    }
}

/// Whether a trap cuts the power before the operation reaches the disk, or
/// just after it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Before,
    After,
}

/// Cuts the power at the `skip + 1`-th operation that matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trap {
    pub matcher: Matcher,
    pub skip: u64,
    pub when: When,
}

/// What the file system answers an operation with, before doing it.
#[derive(Debug, Default)]
pub struct Faults {
    eio: Vec<Matcher>,
    /// Bytes that may still be written before writes answer `ENOSPC`.
    space_left: Option<u64>,
    trap: Option<Trap>,
    /// The power is off: every operation fails and nothing reaches the disk.
    pub dead: bool,
    /// Operations answered `EIO` or `ENOSPC` by an armed fault (not by a cut).
    pub answered: u64,
}

/// The outcome of [`Faults::check`].
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Proceed {
        cut_after: bool,
    },
    Fail(i32),
    /// The trap fired before the operation: the power is off now.
    CutBefore,
}

impl Faults {
    pub fn fail_with_eio(&mut self, matcher: Matcher) {
        self.eio.push(matcher);
    }

    pub fn set_enospc_after(&mut self, bytes: Option<u64>) {
        self.space_left = bytes;
    }

    pub fn arm(&mut self, trap: Option<Trap>) {
        self.trap = trap;
    }

    pub fn clear(&mut self) {
        self.eio.clear();
        self.space_left = None;
        self.trap = None;
    }

    /// Decides the fate of `op` on `path`, which would add `bytes` to the disk.
    pub fn check(&mut self, op: Op, path: &str, bytes: u64) -> Verdict {
        if self.dead {
            return Verdict::Fail(libc::EIO);
        }
        let mut cut_after = false;
        if let Some(trap) = &mut self.trap
            && trap.matcher.matches(op, path)
        {
            if trap.skip > 0 {
                trap.skip -= 1;
            } else {
                let when = trap.when;
                self.trap = None;
                match when {
                    When::Before => {
                        self.dead = true;
                        return Verdict::CutBefore;
                    }
                    When::After => cut_after = true,
                }
            }
        }
        if self.eio.iter().any(|m| m.matches(op, path)) {
            self.answered += 1;
            return Verdict::Fail(libc::EIO);
        }
        if bytes > 0
            && let Some(left) = &mut self.space_left
        {
            if bytes > *left {
                self.answered += 1;
                return Verdict::Fail(libc::ENOSPC);
            }
            *left -= bytes;
        }
        Verdict::Proceed { cut_after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trap_fires_once_at_the_chosen_match() {
        let mut faults = Faults::default();
        faults.arm(Some(Trap { matcher: Matcher::new(Op::Fsync, ".log"), skip: 1, when: When::Before }));
        assert_eq!(faults.check(Op::Fsync, "wal/1.log", 0), Verdict::Proceed { cut_after: false });
        assert_eq!(faults.check(Op::Fsync, "db", 0), Verdict::Proceed { cut_after: false });
        assert_eq!(faults.check(Op::Fsync, "wal/1.log", 0), Verdict::CutBefore);
        assert_eq!(faults.check(Op::Read, "db", 0), Verdict::Fail(libc::EIO), "the power is off");
    }

    #[test]
    fn space_runs_out_and_eio_hits_only_its_file() {
        let mut faults = Faults::default();
        faults.set_enospc_after(Some(10));
        faults.fail_with_eio(Matcher::new(Op::Any, "db"));
        assert_eq!(faults.check(Op::Write, "a", 8), Verdict::Proceed { cut_after: false });
        assert_eq!(faults.check(Op::Write, "a", 8), Verdict::Fail(libc::ENOSPC));
        assert_eq!(faults.check(Op::Read, "db", 0), Verdict::Fail(libc::EIO));
        assert_eq!(faults.check(Op::Read, "a", 0), Verdict::Proceed { cut_after: false });
    }
}
