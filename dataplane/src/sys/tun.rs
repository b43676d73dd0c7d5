//! The TUN/TAP character device (`/dev/net/tun`): its ioctls and the virtio-net
//! header that prefixes each frame when `IFF_VNET_HDR` is set.
//!
//! Neither `nix` nor `rustix` wraps the TUN ioctls, so they are declared here with
//! `nix`'s ioctl macros over the request numbers and `ifreq` from `libc`.
//!
//! Every call takes the fd it acts on as a [`BorrowedFd`], so none can outlive it.

// The TUN ioctls pass pointers the kernel reads and writes; nothing safe wraps them.
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::libc::{self, c_int, c_uint};

/// Device flags for `TUNSETIFF` (`linux/if_tun.h`).
pub const IFF_TAP: c_int = libc::IFF_TAP;
pub const IFF_NO_PI: c_int = libc::IFF_NO_PI;
pub const IFF_VNET_HDR: c_int = libc::IFF_VNET_HDR;
/// Fail with `EBUSY` instead of attaching when the name is taken.
pub const IFF_TUN_EXCL: c_int = libc::IFF_TUN_EXCL;
/// Read-only: reported by `TUNGETIFF` on a persistent device.
pub const IFF_PERSIST: c_int = libc::IFF_PERSIST;

/// Offload bits for `TUNSETOFFLOAD`: what the reader of the device accepts from
/// the kernel (partial checksums, GSO superframes).
pub const TUN_F_CSUM: c_uint = libc::TUN_F_CSUM;
pub const TUN_F_TSO4: c_uint = libc::TUN_F_TSO4;
pub const TUN_F_TSO6: c_uint = libc::TUN_F_TSO6;
pub const TUN_F_TSO_ECN: c_uint = libc::TUN_F_TSO_ECN;
pub const TUN_F_USO4: c_uint = libc::TUN_F_USO4;
pub const TUN_F_USO6: c_uint = libc::TUN_F_USO6;

mod ioctls {
    use nix::libc::{self, c_int, c_uint, ifreq};

    // TUNSETIFF writes the final name back into the ifreq.
    nix::ioctl_readwrite_bad!(tun_set_iff, libc::TUNSETIFF, ifreq);
    nix::ioctl_read_bad!(tun_get_iff, libc::TUNGETIFF, ifreq);
    nix::ioctl_write_int_bad!(tun_set_persist, libc::TUNSETPERSIST);
    nix::ioctl_write_int_bad!(tun_set_offload, libc::TUNSETOFFLOAD);
    nix::ioctl_write_ptr_bad!(tun_set_vnet_hdr_sz, libc::TUNSETVNETHDRSZ, c_int);
    nix::ioctl_read_bad!(tun_get_features, libc::TUNGETFEATURES, c_uint);
    nix::ioctl_none_bad!(tun_get_dev_netns, libc::TUNGETDEVNETNS);
    nix::ioctl_read_bad!(siocgifhwaddr, libc::SIOCGIFHWADDR, ifreq);
}

/// Opens `/dev/net/tun`, close-on-exec, nonblocking if asked. The fd is not yet a
/// device: [`set_iff`] makes it one.
pub fn open(nonblocking: bool) -> io::Result<OwnedFd> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(if nonblocking { libc::O_NONBLOCK } else { 0 })
        .open("/dev/net/tun")?;
    Ok(f.into())
}

fn ifreq_named(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain C data (arrays, integers and a union of them); all
    // zeroes is a valid value of it.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= ifr.ifr_name.len() || name.bytes().any(|b| b == 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} longer than 15 bytes or holds NUL"),
        ));
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(ifr)
}

fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `TUNSETIFF`: makes the fd the device `name` with `flags`, creating it when no
/// interface has that name in the calling thread's namespace. Returns the name the
/// kernel settled on (the same unless `name` holds a `%d` pattern).
pub fn set_iff(fd: BorrowedFd<'_>, name: &str, flags: c_int) -> io::Result<String> {
    let mut ifr = ifreq_named(name)?;
    // The device flags are a C short; every TUN flag fits in 16 bits.
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: the fd is open; TUNSETIFF reads and writes one ifreq, which lives on
    // this stack frame for the whole call.
    unsafe { ioctls::tun_set_iff(fd.as_raw_fd(), &mut ifr) }?;
    Ok(ifreq_name(&ifr))
}

/// `TUNGETIFF`: the device's current name (renames included) and its flags.
pub fn get_iff(fd: BorrowedFd<'_>) -> io::Result<(String, c_int)> {
    // SAFETY: as in `ifreq_named`, all zeroes is a valid ifreq.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open; TUNGETIFF writes one ifreq into the one we pass.
    unsafe { ioctls::tun_get_iff(fd.as_raw_fd(), &mut ifr) }?;
    // SAFETY: TUNGETIFF fills the flags member of the union.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    // Widen through u16: the flags are a bit set, not a signed number.
    Ok((ifreq_name(&ifr), c_int::from(flags as u16)))
}

/// `TUNSETPERSIST`: whether the device outlives its last open fd.
pub fn set_persist(fd: BorrowedFd<'_>, persist: bool) -> io::Result<()> {
    // SAFETY: the fd is open; TUNSETPERSIST takes its argument by value.
    unsafe { ioctls::tun_set_persist(fd.as_raw_fd(), c_int::from(persist)) }?;
    Ok(())
}

/// `TUNSETOFFLOAD`: the `TUN_F_*` offloads the reader accepts. `EINVAL` when the
/// kernel does not know one of them.
pub fn set_offload(fd: BorrowedFd<'_>, bits: c_uint) -> io::Result<()> {
    // The argument is an unsigned long passed by value; the nix wrapper types it
    // c_int, and every TUN_F_* bit fits in 31 bits.
    let arg = c_int::try_from(bits).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the fd is open; TUNSETOFFLOAD takes its argument by value.
    unsafe { ioctls::tun_set_offload(fd.as_raw_fd(), arg) }?;
    Ok(())
}

/// `TUNSETVNETHDRSZ`: the length of the virtio-net header on every frame.
pub fn set_vnet_hdr_len(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    let len = c_int::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the fd is open; TUNSETVNETHDRSZ reads one int through the pointer,
    // which points at a local that outlives the call.
    unsafe { ioctls::tun_set_vnet_hdr_sz(fd.as_raw_fd(), &len) }?;
    Ok(())
}

/// `TUNGETFEATURES`: the `IFF_*` flags this kernel's TUN driver supports.
pub fn features(fd: BorrowedFd<'_>) -> io::Result<c_int> {
    let mut bits: c_uint = 0;
    // SAFETY: the fd is open; TUNGETFEATURES writes one unsigned int into `bits`.
    unsafe { ioctls::tun_get_features(fd.as_raw_fd(), &mut bits) }?;
    Ok(c_int::from(bits as u16))
}

/// `TUNGETDEVNETNS`: a new fd for the network namespace the device is in now.
pub fn device_netns(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: the fd is open; TUNGETDEVNETNS takes no argument and returns a new fd.
    let ns = unsafe { ioctls::tun_get_dev_netns(fd.as_raw_fd()) }?;
    // SAFETY: the kernel just created `ns` for us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ns) })
}

/// `SIOCGIFHWADDR` on the TUN fd itself: the device's MAC, whichever namespace it
/// is in now.
pub fn hw_addr(fd: BorrowedFd<'_>) -> io::Result<[u8; 6]> {
    // SAFETY: as in `ifreq_named`, all zeroes is a valid ifreq.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open; the TUN driver answers SIOCGIFHWADDR by writing one
    // ifreq into ours.
    unsafe { ioctls::siocgifhwaddr(fd.as_raw_fd(), &mut ifr) }?;
    // SAFETY: SIOCGIFHWADDR fills the hwaddr member of the union.
    let sa = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

/// Offloads the TAP may use towards Sluice: the `TUN_F_*` bits of
/// `TUNSETOFFLOAD`. Asked for in `TapOptions`; what the kernel accepted is in
/// `Tap::offloads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    /// Partial TCP/UDP checksums (the TAP port completes them on receive).
    pub csum: bool,
    /// TCP segmentation offload for IPv4: superframes up to 64 KiB.
    pub tso4: bool,
    /// TCP segmentation offload for IPv6.
    pub tso6: bool,
    /// TSO frames may carry the ECN CWR bit.
    pub tso_ecn: bool,
    /// UDP segmentation offload (Linux 6.2 and later), IPv4 and IPv6.
    pub uso4: bool,
    pub uso6: bool,
}

impl Offloads {
    /// No offloads: every frame arrives complete with its checksums.
    pub const NONE: Offloads = Offloads {
        csum: false,
        tso4: false,
        tso6: false,
        tso_ecn: false,
        uso4: false,
        uso6: false,
    };
    /// Partial checksums only.
    pub const CSUM: Offloads = Offloads {
        csum: true,
        ..Offloads::NONE
    };
    /// Partial checksums and IPv4 TCP superframes (with ECN): what the TAP port
    /// segments itself (`port::gso`).
    pub const TSO4: Offloads = Offloads {
        csum: true,
        tso4: true,
        tso_ecn: true,
        ..Offloads::NONE
    };

    /// The `TUN_F_*` bits, made consistent the way the kernel reads them:
    /// segmentation needs checksum offload, and ECN needs TSO.
    pub fn bits(&self) -> c_uint {
        if !self.csum {
            return 0;
        }
        let mut b = TUN_F_CSUM;
        let flag = |on: bool, bit: c_uint| if on { bit } else { 0 };
        b |= flag(self.tso4, TUN_F_TSO4) | flag(self.tso6, TUN_F_TSO6);
        b |= flag(self.tso_ecn && (self.tso4 || self.tso6), TUN_F_TSO_ECN);
        b |= flag(self.uso4, TUN_F_USO4) | flag(self.uso6, TUN_F_USO6);
        b
    }

    pub fn from_bits(b: c_uint) -> Offloads {
        Offloads {
            csum: b & TUN_F_CSUM != 0,
            tso4: b & TUN_F_TSO4 != 0,
            tso6: b & TUN_F_TSO6 != 0,
            tso_ecn: b & TUN_F_TSO_ECN != 0,
            uso4: b & TUN_F_USO4 != 0,
            uso6: b & TUN_F_USO6 != 0,
        }
    }

    /// Whether the kernel may send superframes longer than the MTU.
    pub fn any_segmentation(&self) -> bool {
        self.bits() & !TUN_F_CSUM != 0
    }

    /// What to try, best first, when the kernel refuses a set: drop the newest
    /// offloads (USO, then ECN, then TSO, then checksums) until one is accepted.
    fn fallbacks(self) -> [Offloads; 5] {
        let no_uso = Offloads {
            uso4: false,
            uso6: false,
            ..self
        };
        let no_ecn = Offloads {
            tso_ecn: false,
            ..no_uso
        };
        let csum_only = Offloads {
            csum: self.csum,
            ..Offloads::NONE
        };
        [self, no_uso, no_ecn, csum_only, Offloads::NONE]
    }
}

/// Sets the offloads, falling back to fewer while the kernel answers `EINVAL`
/// (it does for bits it does not know). Returns what it accepted.
pub fn negotiate_offloads(fd: BorrowedFd<'_>, want: Offloads) -> io::Result<Offloads> {
    let mut last = None;
    for o in want.fallbacks() {
        if last == Some(o.bits()) {
            continue;
        }
        last = Some(o.bits());
        match set_offload(fd, o.bits()) {
            Ok(()) => return Ok(Offloads::from_bits(o.bits())),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
            Err(e) => return Err(e),
        }
    }
    // Unreachable in practice: the kernel always accepts no offloads.
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

/// The virtio-net header in front of every frame on a TAP with `IFF_VNET_HDR`:
/// `struct virtio_net_hdr_v1` (10 bytes) plus `num_buffers`, 12 in all, which is
/// what [`set_vnet_hdr_len`] is given. Its fields are in the host's byte order:
/// the TUN driver speaks legacy virtio unless told otherwise (`TUNSETVNETLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers to copy into each segment (GSO only).
    pub hdr_len: u16,
    /// Payload bytes per segment (GSO only).
    pub gso_size: u16,
    /// With [`VnetHdr::F_NEEDS_CSUM`]: where the checksummed range starts...
    pub csum_start: u16,
    /// ...and where, counted from `csum_start`, the checksum goes.
    pub csum_offset: u16,
    /// Merged receive buffers; unused on TAP (always 0 or 1).
    pub num_buffers: u16,
}

impl VnetHdr {
    pub const LEN: usize = 12;
    /// The L4 checksum is partial: sum from `csum_start` and store at `csum_offset`.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// The checksums were verified (or need not be).
    pub const F_DATA_VALID: u8 = 2;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    pub const GSO_UDP: u8 = 3;
    pub const GSO_TCPV6: u8 = 4;
    pub const GSO_UDP_L4: u8 = 5;
    /// Or-ed into `gso_type`: the TCP stream saw congestion (ECN).
    pub const GSO_ECN: u8 = 0x80;

    pub fn parse(b: &[u8; Self::LEN]) -> VnetHdr {
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }

    pub fn emit(&self, b: &mut [u8; Self::LEN]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_ne_bytes());
    }

    /// Whether the frame is a GSO superframe (longer than the MTU, to be cut
    /// into `gso_size` segments).
    pub fn is_gso(&self) -> bool {
        self.gso_type & !Self::GSO_ECN != Self::GSO_NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnet_hdr_round_trips() {
        let h = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: VnetHdr::GSO_TCPV4 | VnetHdr::GSO_ECN,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 1,
        };
        let mut b = [0u8; VnetHdr::LEN];
        h.emit(&mut b);
        assert_eq!(VnetHdr::parse(&b), h);
        assert!(h.is_gso());
        assert!(!VnetHdr {
            gso_type: VnetHdr::GSO_ECN,
            ..h
        }
        .is_gso());
        assert_eq!(VnetHdr::parse(&[0; 12]), VnetHdr::default());
    }

    #[test]
    fn offload_bits_are_consistent() {
        assert_eq!(Offloads::NONE.bits(), 0);
        assert_eq!(Offloads::CSUM.bits(), TUN_F_CSUM);
        // Segmentation without checksum offload is meaningless; the kernel refuses it.
        assert_eq!(
            Offloads {
                tso4: true,
                ..Offloads::NONE
            }
            .bits(),
            0
        );
        assert_eq!(
            Offloads {
                tso_ecn: true,
                ..Offloads::CSUM
            }
            .bits(),
            TUN_F_CSUM
        );
        let all = Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            tso_ecn: true,
            uso4: true,
            uso6: true,
        };
        assert_eq!(Offloads::from_bits(all.bits()), all);
        assert!(all.any_segmentation());
        assert!(!Offloads::CSUM.any_segmentation());
        assert!(Offloads::TSO4.any_segmentation());
        assert_eq!(
            Offloads::TSO4.bits(),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN
        );
        assert_eq!(
            Offloads::TSO4.fallbacks()[2],
            Offloads {
                tso_ecn: false,
                ..Offloads::TSO4
            }
        );
        let f = all.fallbacks();
        assert_eq!(f[0], all);
        assert_eq!(f[3], Offloads::CSUM);
        assert_eq!(f[4], Offloads::NONE);
    }

    #[test]
    fn long_names_are_refused() {
        assert!(ifreq_named("sixteen-chars-xx").is_err());
        assert_eq!(ifreq_name(&ifreq_named("tap0").unwrap()), "tap0");
    }
}
