//! Network namespaces: a handle to one, entering one on the current thread, and
//! running a closure inside one on a thread of its own.
//!
//! A network namespace is a per-thread attribute, so anything that opens a socket,
//! a TUN device or looks up an interface by name does so in the namespace of the
//! thread that calls it. [`in_netns`] is the safe default: it never moves the
//! caller's thread. [`enter`] moves the current thread and hands back a guard that
//! moves it home; use it only where a fresh thread will not do.
//!
//! `setns(2)` comes from `nix`, whose wrapper is safe, so this module needs no
//! `unsafe`.

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

/// Where `ip netns add NAME` puts its bind mounts.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// What went wrong with a network namespace, and which one.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace name {name:?} is empty or holds '/'")]
    InvalidName { name: String },
    #[error("opening network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("entering network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting a thread for network namespace {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An open handle to a network namespace. It keeps the namespace alive while held,
/// even after `ip netns delete` removes its name.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
}

impl NetNs {
    /// The namespace that `ip netns add NAME` created.
    pub fn named(name: &str) -> Result<NetNs, NetnsError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(NetnsError::InvalidName {
                name: name.to_owned(),
            });
        }
        NetNs::open(Path::new(NETNS_RUN_DIR).join(name))
    }

    /// The namespace at `path`: a bind mount such as `/var/run/netns/NAME`, or a
    /// process's `/proc/PID/ns/net`.
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs, NetnsError> {
        let path = path.as_ref().to_path_buf();
        match File::open(&path) {
            Ok(f) => Ok(NetNs { fd: f.into(), path }),
            Err(source) => Err(NetnsError::Open { path, source }),
        }
    }

    /// The namespace of the calling thread (not the process's main thread).
    pub fn current() -> Result<NetNs, NetnsError> {
        NetNs::open("/proc/thread-self/ns/net")
    }

    /// A handle from a descriptor the kernel gave out (such as the TUN device's
    /// `TUNGETDEVNETNS`); `label` names it in errors.
    pub fn from_fd(fd: OwnedFd, label: impl Into<PathBuf>) -> NetNs {
        NetNs {
            fd,
            path: label.into(),
        }
    }

    /// Where this handle came from, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's identity (device and inode of its nsfs file): two handles
    /// name the same namespace exactly when their ids are equal.
    pub fn id(&self) -> io::Result<(u64, u64)> {
        let st = nix::sys::stat::fstat(self.fd.as_fd()).map_err(io::Error::from)?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Whether the calling thread is in this namespace.
    pub fn is_current(&self) -> io::Result<bool> {
        let m = std::fs::metadata("/proc/thread-self/ns/net")?;
        Ok(self.id()? == (m.dev(), m.ino()))
    }

    fn setns_here(&self) -> Result<(), NetnsError> {
        setns(&self.fd, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter {
            path: self.path.clone(),
            source: e.into(),
        })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Moves the calling thread into `ns` until the guard is dropped (or
/// [`NsGuard::restore`]d), when it goes back to the namespace it was in.
///
/// Sockets and TUN fds opened meanwhile stay in `ns` after the thread leaves.
pub fn enter(ns: &NetNs) -> Result<NsGuard, NetnsError> {
    let home = NetNs::current()?;
    ns.setns_here()?;
    Ok(NsGuard {
        home: Some(home),
        _same_thread: PhantomData,
    })
}

/// Puts its thread back into the namespace it left. Not `Send`: it must be
/// dropped on the thread that [`enter`]ed.
#[must_use = "dropping the guard at once leaves the namespace at once"]
#[derive(Debug)]
pub struct NsGuard {
    home: Option<NetNs>,
    _same_thread: PhantomData<*const ()>,
}

impl NsGuard {
    /// Goes home now, reporting failure instead of aborting as `drop` would.
    pub fn restore(mut self) -> Result<(), NetnsError> {
        match self.home.take() {
            Some(home) => home.setns_here(),
            None => Ok(()),
        }
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            if let Err(e) = home.setns_here() {
                // A thread left in a pod's namespace would configure the wrong network
                // from here on; stopping is the only safe answer.
                eprintln!("sluice: cannot leave network namespace: {e}");
                std::process::abort();
            }
        }
    }
}

/// Runs `f` on a new thread that has entered `ns`, and returns what it returns. The
/// caller's thread never changes namespace; a panic in `f` is passed on.
pub fn in_netns<T, F>(ns: &NetNs, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("sluice-netns".into())
            .spawn_scoped(s, move || -> Result<T, NetnsError> {
                ns.setns_here()?;
                Ok(f())
            })
            .map_err(|source| NetnsError::Spawn {
                path: ns.path.clone(),
                source,
            })?;
        match worker.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(matches!(
            NetNs::named("a/b"),
            Err(NetnsError::InvalidName { .. })
        ));
        assert!(matches!(
            NetNs::named(""),
            Err(NetnsError::InvalidName { .. })
        ));
        assert!(matches!(
            NetNs::named("sluice-no-such-namespace"),
            Err(NetnsError::Open { .. })
        ));
    }

    #[test]
    fn current_namespace_round_trips() {
        // Entering the namespace we are already in needs CAP_SYS_ADMIN; skip without it.
        let here = NetNs::current().unwrap();
        assert!(here.is_current().unwrap());
        let other = NetNs::current().unwrap();
        assert_eq!(here.id().unwrap(), other.id().unwrap());
        match in_netns(&here, || 7) {
            Ok(v) => assert_eq!(v, 7),
            Err(NetnsError::Enter { source, .. })
                if source.kind() == io::ErrorKind::PermissionDenied => {}
            Err(e) => panic!("{e}"),
        }
        if let Ok(g) = enter(&here) {
            assert!(here.is_current().unwrap());
            g.restore().unwrap();
        }
    }

    #[test]
    fn panics_cross_the_thread() {
        let here = NetNs::current().unwrap();
        let r = std::panic::catch_unwind(|| in_netns(&here, || panic!("inside")));
        match r {
            Err(_) => {}
            // Without CAP_SYS_ADMIN setns fails first and nothing panics.
            Ok(Err(NetnsError::Enter { .. })) => {}
            Ok(other) => panic!("expected the panic to cross, got {other:?}"),
        }
    }
}
