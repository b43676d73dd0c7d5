//! What Sluice's ports need from the kernel: network namespaces ([`netns`]), the
//! TUN/TAP character device ([`tun`]), link configuration over rtnetlink
//! ([`link`]), and a worker thread's priority ([`sched`]).
//!
//! The modules that hold `unsafe` (system calls, ioctls, mapped rings) say so
//! at their top. Everything here is control path except the frame reads and
//! writes the ports do through [`tun`], [`packet`] and [`xsk`].

pub mod bpf;
pub mod bpf_classic;
pub mod genl;
pub mod link;
pub mod netns;
pub mod packet;
pub mod sched;
pub mod tun;
pub mod xsk;

/// Longest interface name Linux takes (`IFNAMSIZ` less its NUL).
pub const IFNAME_MAX: usize = 15;

/// Whether `name` is an interface name the kernel accepts: 1 to 15 bytes, none of
/// them `/`, `:`, whitespace or NUL, and neither `.` nor `..`
/// (the kernel's `dev_valid_name`).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifnames() {
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("tap0123456789ab"));
        assert!(!valid_ifname("tap0123456789abc"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname(".."));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname("eth0:1"));
    }
}
