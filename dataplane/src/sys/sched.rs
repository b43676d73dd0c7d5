//! A worker thread's scheduling priority: its nice value, which Linux keeps per
//! thread (`setpriority(PRIO_PROCESS, tid)` changes only the thread `tid`).

#![allow(unsafe_code)]

use std::io;

use nix::errno::Errno;
use nix::libc;

/// Lowest and highest nice value Linux takes.
pub const NICE_RANGE: std::ops::RangeInclusive<i32> = -20..=19;

/// Sets the calling thread's nice value. Below the current one it needs
/// `CAP_SYS_NICE` (or `RLIMIT_NICE`), or fails with `EPERM`/`EACCES`.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    if !NICE_RANGE.contains(&nice) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("nice {nice} is outside -20..=19"),
        ));
    }
    let tid = nix::unistd::gettid().as_raw() as libc::id_t;
    // SAFETY: plain system call on integers.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's nice value.
pub fn thread_nice() -> io::Result<i32> {
    let tid = nix::unistd::gettid().as_raw() as libc::id_t;
    // getpriority may rightly return -1, so errno tells the error apart.
    Errno::clear();
    // SAFETY: plain system call on integers.
    let n = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    if n == -1 && Errno::last_raw() != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_sets_its_own_nice_only() {
        let before = thread_nice().unwrap();
        let other = std::thread::spawn(|| {
            // Raising nice needs no privilege.
            set_thread_nice(5).unwrap();
            thread_nice().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(other, 5);
        assert_eq!(
            thread_nice().unwrap(),
            before,
            "the spawning thread is untouched"
        );
    }

    #[test]
    fn out_of_range_is_refused_before_the_kernel_clamps_it() {
        let e = std::thread::spawn(|| set_thread_nice(20).unwrap_err())
            .join()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("nice 20"), "{e}");
    }
}
