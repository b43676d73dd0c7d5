//! A TAP device as a [`Port`]: the pod's `eth0` is the kernel side, Sluice holds
//! the fd.
//!
//! One `read(2)` or `write(2)` per frame (the TUN driver has no batched I/O), on a
//! nonblocking fd. With the virtio-net header on (the default), the kernel may hand
//! over frames whose TCP/UDP checksum is only partial (`TUN_F_CSUM`); [`Tap`]
//! completes them in software so the pipeline only ever sees valid frames.
//!
//! With TCP segmentation offload (`TUN_F_TSO4`, asked for in
//! [`TapOptions::offloads`]) the pod's TCP hands over superframes of up to 64 KiB
//! in one `read(2)` instead of one MSS-sized frame each. The part that does not fit
//! the pool buffer runs on into a large buffer the port keeps ready
//! ([`Pool::alloc_large`]); the first part is copied in front of it (one buffer's
//! worth, not 64 KiB) and the superframe enters the pipeline whole, marked with
//! its segment size ([`crate::buf::Meta::gso_size`]): it is routed, checked
//! against policy and encapsulated once, and cut ([`super::gso`]) only by a port
//! that cannot send it whole. A superframe with bad headers or a GSO type other
//! than TCPv4 is dropped and counted in [`TapStats`].
//!
//! Writing, a superframe goes to the pod whole behind a GSO header (without the
//! virtio-net header it is cut into segments first), and consecutive TCP
//! segments of one flow are joined into one superframe ([`super::gro`], on by
//! default with the virtio-net header) and written with a GSO header in one
//! gather `writev(2)`: the pod's stack takes one 64 KiB frame instead of ~45, as
//! it would from a NIC with GRO.
//!
//! The kernel interfaces themselves (ioctls, namespaces) are in [`crate::sys`].

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::sys::uio::{readv, writev};

use crate::buf::{Batch, Packet, Pool};
use crate::port::gro::{join_tcp, Tcp4Seg, MAX_RUN};
use crate::port::gso::{self, mark_superframe, superframe_vnet_hdr, GsoError, Tcp4Gso};
use crate::port::{Port, PortOffload};
use crate::sys::netns::{in_netns, NetNs};
pub use crate::sys::tun::Offloads;
use crate::sys::tun::{self, VnetHdr};
use crate::sys::valid_ifname;

/// How to open a TAP. `TapOptions::new()` is: virtio-net header on, checksum
/// offload asked for, persistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapOptions {
    /// Prefix frames with a virtio-net header (`IFF_VNET_HDR`); needed for any
    /// offload.
    pub vnet_hdr: bool,
    /// Offloads to ask for; ignored without `vnet_hdr`.
    pub offloads: Offloads,
    /// Keep the device when its last fd closes (`TUNSETPERSIST`), so Sluice can
    /// restart without the pod losing its `eth0`.
    pub persist: bool,
    /// Join consecutive TCP segments of a flow into one superframe when writing
    /// (software GRO, [`super::gro`]); needs `vnet_hdr`.
    pub gro: bool,
}

impl Default for TapOptions {
    fn default() -> Self {
        TapOptions {
            vnet_hdr: true,
            offloads: Offloads::CSUM,
            persist: true,
            gro: true,
        }
    }
}

impl TapOptions {
    pub fn new() -> TapOptions {
        TapOptions::default()
    }

    pub fn vnet_hdr(mut self, on: bool) -> TapOptions {
        self.vnet_hdr = on;
        self
    }

    pub fn offloads(mut self, offloads: Offloads) -> TapOptions {
        self.offloads = offloads;
        self
    }

    pub fn persist(mut self, on: bool) -> TapOptions {
        self.persist = on;
        self
    }

    pub fn gro(mut self, on: bool) -> TapOptions {
        self.gro = on;
        self
    }

    fn iff_flags(&self) -> nix::libc::c_int {
        let vnet = if self.vnet_hdr { tun::IFF_VNET_HDR } else { 0 };
        tun::IFF_TAP | tun::IFF_NO_PI | vnet
    }
}

/// What went wrong opening or configuring a TAP, and which one.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP name {name:?} is not 1 to 15 bytes without '/', ':' or spaces")]
    InvalidName { name: String },
    #[error("no interface called {name} in this network namespace to attach to")]
    NotFound { name: String },
    #[error("{op} on TAP {name}: {source}")]
    Io {
        op: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Counters of one TAP port. Frames dropped here never reach the pipeline, so
/// they are counted here rather than as a [`crate::drop::DropReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapStats {
    /// Frames handed to the pipeline (a superframe counts one).
    pub rx_frames: u64,
    /// Frames longer than a pool buffer that are not superframes: dropped.
    pub rx_oversize: u64,
    /// Frames whose virtio-net header was short or whose checksum offsets fell
    /// outside the frame: dropped.
    pub rx_bad_vnet: u64,
    /// Partial checksums completed in software (included in `rx_frames`).
    pub rx_csum_completed: u64,
    /// GSO superframes received (handed to the pipeline whole).
    pub rx_gso: u64,
    /// Segments they stand for.
    pub rx_gso_segments: u64,
    /// Superframes dropped whole: headers that are not Ethernet/IPv4/TCP or are
    /// malformed (the reason is in `rx_gso_last_error`).
    pub rx_gso_bad: u64,
    /// Superframes dropped whole because their GSO type is not TCPv4 (UDP, IPv6:
    /// never negotiated, so a kernel that sends them is misbehaving).
    pub rx_gso_unsupported: u64,
    /// Why the last superframe counted in `rx_gso_bad` was dropped.
    pub rx_gso_last_error: Option<GsoError>,
    /// Frames the kernel took (the segments of a superframe count one each).
    pub tx_frames: u64,
    /// Superframes written: runs of two or more segments joined by GRO, and
    /// superframes from the pipeline written whole.
    pub tx_gro: u64,
    /// Segments in them (included in `tx_frames`).
    pub tx_gro_segments: u64,
    /// Superframes from the pipeline cut into segments here (no virtio-net
    /// header to write them whole with).
    pub tx_gso_cut: u64,
    /// Frames refused because the device queue was full or the link down.
    pub tx_refused: u64,
    /// Frames the kernel rejected as malformed.
    pub tx_errors: u64,
    /// Frames the kernel dropped in front of the port: what the pod (or node)
    /// queued past the device's queue (`txqueuelen`) before the worker read
    /// it. The device's `tx_dropped` since the port was opened, as of the
    /// last [`Port::update_kernel_stats`].
    pub rx_kernel_drops: u64,
}

const ZERO_VNET_HDR: [u8; VnetHdr::LEN] = [0; VnetHdr::LEN];

/// An open TAP device. Dropping it closes the fd; a persistent device stays (and
/// can be [`Tap::attach`]ed again), others disappear.
pub struct Tap {
    fd: OwnedFd,
    name: String,
    vnet_hdr: bool,
    offloads: Offloads,
    persist: bool,
    /// Join TCP segments on write ([`TapOptions::gro`] and a virtio-net header).
    gro: bool,
    /// Where a superframe is cut when it cannot be written whole (no virtio-net
    /// header); allocated at the first such write.
    seg_buf: Vec<u8>,
    stats: TapStats,
    /// Where the device's kernel counters are read; `None` until it could be
    /// opened.
    dev_counters: Option<DevCounters>,
    /// The device's `tx_dropped` when the port was opened (or when it could
    /// first be read): drops before then are not this port's.
    tx_dropped_base: Option<u64>,
    /// Readings to skip before trying to open the counters again after a
    /// failed try (each try starts a thread in the device's namespace).
    counters_backoff: u32,
}

/// Readings skipped after a failed try to open a TAP's counters: at a reading
/// every few hundred milliseconds, a try every ten seconds or more.
const COUNTERS_BACKOFF: u32 = 50;

/// `/proc/net/dev` of the namespace the device is in, opened from inside it: a
/// file opened there keeps reading that namespace, from any thread, so the
/// worker reads a pod's counters without entering the pod's namespace.
#[derive(Debug)]
struct DevCounters {
    file: File,
    /// Which namespace the file reads ([`NetNs::id`]).
    netns: (u64, u64),
    text: Vec<u8>,
}

impl DevCounters {
    /// Opens the calling thread's namespace's `/proc/net/dev`.
    fn open_here() -> io::Result<DevCounters> {
        let file = File::open("/proc/thread-self/net/dev")?;
        let netns = NetNs::current().map_err(io::Error::other)?.id()?;
        Ok(DevCounters {
            file,
            netns,
            text: Vec::with_capacity(1024),
        })
    }

    /// The device `name`'s `tx_dropped` now.
    fn tx_dropped(&mut self, name: &str) -> io::Result<u64> {
        self.text.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.file.read_at(&mut chunk, self.text.len() as u64)?;
            if n == 0 {
                break;
            }
            self.text.extend_from_slice(&chunk[..n]);
        }
        tx_dropped_in(&String::from_utf8_lossy(&self.text), name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name} not in its namespace's /proc/net/dev"),
            )
        })
    }
}

/// The transmit `drop` column of device `name` in the text of a
/// `/proc/net/dev`: `name:` then 8 receive and 8 transmit counters.
fn tx_dropped_in(text: &str, name: &str) -> Option<u64> {
    text.lines().skip(2).find_map(|line| {
        let (dev, counters) = line.split_once(':')?;
        if dev.trim() != name {
            return None;
        }
        counters.split_whitespace().nth(11)?.parse().ok()
    })
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the buffers: 65 KiB of zeroes each.
        f.debug_struct("Tap")
            .field("fd", &self.fd)
            .field("name", &self.name)
            .field("vnet_hdr", &self.vnet_hdr)
            .field("offloads", &self.offloads)
            .field("persist", &self.persist)
            .field("gro", &self.gro)
            .field("stats", &self.stats)
            .finish()
    }
}

enum Rx {
    Frame,
    /// A superframe, whole in the lent large buffer (now taken), and how many
    /// segments it carries.
    Superframe(Packet, usize),
    /// From [`Tap::read_into`]: a superframe whole in the lent buffer.
    InSpare(usize),
    Dropped,
    Empty,
}

impl Tap {
    /// Creates the TAP `name` in the calling thread's network namespace. Fails
    /// (`EBUSY`) if an interface of that name exists there.
    ///
    /// To create it in another namespace, call this inside
    /// [`crate::sys::netns::in_netns`]; the fd works from any thread afterwards.
    pub fn create(name: &str, opts: &TapOptions) -> Result<Tap, TapError> {
        Tap::open(name, opts, tun::IFF_TUN_EXCL, "create")
    }

    /// Opens the existing TAP `name` in the calling thread's namespace again, with
    /// the same kind of flags: how Sluice takes a pod's persistent `eth0` back after
    /// a restart (run it in the pod's namespace). Never creates a device: a missing
    /// name is [`TapError::NotFound`].
    pub fn attach(name: &str, opts: &TapOptions) -> Result<Tap, TapError> {
        if !valid_ifname(name) {
            return Err(TapError::InvalidName {
                name: name.to_owned(),
            });
        }
        // TUNSETIFF would create a missing device, so look first. Nothing creates
        // one in between but another TUNSETIFF, which would make ours attach to it.
        match nix::net::if_::if_nametoindex(name) {
            Ok(_) => {}
            Err(Errno::ENODEV) => {
                return Err(TapError::NotFound {
                    name: name.to_owned(),
                })
            }
            Err(e) => {
                return Err(TapError::Io {
                    op: "look up",
                    name: name.to_owned(),
                    source: e.into(),
                })
            }
        }
        Tap::open(name, opts, 0, "attach")
    }

    fn open(
        name: &str,
        opts: &TapOptions,
        extra_flags: nix::libc::c_int,
        op: &'static str,
    ) -> Result<Tap, TapError> {
        if !valid_ifname(name) {
            return Err(TapError::InvalidName {
                name: name.to_owned(),
            });
        }
        let err = |op: &'static str| {
            let name = name.to_owned();
            move |source: io::Error| TapError::Io { op, name, source }
        };
        let fd = tun::open(true).map_err(err("open /dev/net/tun"))?;
        let got =
            tun::set_iff(fd.as_fd(), name, opts.iff_flags() | extra_flags).map_err(err(op))?;
        let mut tap = Tap {
            fd,
            name: got,
            vnet_hdr: opts.vnet_hdr,
            offloads: Offloads::NONE,
            persist: false,
            gro: opts.gro && opts.vnet_hdr,
            seg_buf: Vec::new(),
            stats: TapStats::default(),
            dev_counters: None,
            tx_dropped_base: None,
            counters_backoff: 0,
        };
        // Callers open a TAP in the namespace it is in, so this is its
        // namespace's list; without /proc it is tried again on each read.
        if let Ok(mut c) = DevCounters::open_here() {
            tap.tx_dropped_base = c.tx_dropped(&tap.name).ok();
            tap.dev_counters = Some(c);
        }
        if opts.vnet_hdr {
            tun::set_vnet_hdr_len(tap.fd.as_fd(), VnetHdr::LEN)
                .map_err(err("set vnet header length"))?;
            tap.offloads = tun::negotiate_offloads(tap.fd.as_fd(), opts.offloads)
                .map_err(err("set offloads"))?;
        } else {
            // Without a header the kernel cannot mark a checksum partial, so it must
            // not be allowed to leave one (an attached device may have had offloads).
            tun::set_offload(tap.fd.as_fd(), 0).map_err(err("clear offloads"))?;
        }
        tap.set_persist(opts.persist).map_err(err("set persist"))?;
        Ok(tap)
    }

    /// Whether the device outlives its last fd.
    pub fn set_persist(&mut self, persist: bool) -> io::Result<()> {
        tun::set_persist(self.fd.as_fd(), persist)?;
        self.persist = persist;
        Ok(())
    }

    pub fn is_persistent(&self) -> bool {
        self.persist
    }

    /// Removes the device: clears persistence and closes the fd, and the kernel
    /// deletes it (once no other process holds it open).
    pub fn delete(mut self) -> io::Result<()> {
        self.set_persist(false)
    }

    /// The offloads the kernel accepted (a subset of those asked for).
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    pub fn stats(&self) -> &TapStats {
        &self.stats
    }

    /// The device's name now (it may have been renamed since it was opened).
    pub fn ifname(&self) -> io::Result<String> {
        Ok(tun::get_iff(self.fd.as_fd())?.0)
    }

    /// The namespace the device is in now.
    pub fn netns(&self) -> io::Result<NetNs> {
        let fd = tun::device_netns(self.fd.as_fd())?;
        Ok(NetNs::from_fd(fd, format!("netns of TAP {}", self.name)))
    }

    /// The device's interface index in the namespace it is in now (moving it to
    /// another namespace may change it).
    pub fn ifindex(&self) -> io::Result<u32> {
        let name = self.ifname()?;
        let ns = self.netns()?;
        let lookup = || nix::net::if_::if_nametoindex(name.as_str()).map_err(io::Error::from);
        if ns.is_current()? {
            return lookup();
        }
        in_netns(&ns, lookup).map_err(io::Error::other)?
    }

    /// The device's `tx_dropped` now, read in the namespace it is in now (the
    /// file is opened there again if it was moved since; a kernel without
    /// `TUNGETDEVNETNS` keeps the one opened with the port).
    fn read_tx_dropped(&mut self) -> io::Result<u64> {
        let name = self.ifname()?;
        let ns = match self.netns() {
            Ok(ns) => ns,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::ENOTTY | nix::libc::EINVAL)
                ) =>
            {
                let c = self.dev_counters.as_mut().ok_or(e)?;
                return c.tx_dropped(&name);
            }
            Err(e) => return Err(e),
        };
        let id = ns.id()?;
        let counters = match self.dev_counters.take() {
            Some(c) if c.netns == id => c,
            _ if self.counters_backoff > 0 => {
                self.counters_backoff -= 1;
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "waiting to open the device's counters again",
                ));
            }
            _ => match in_netns(&ns, DevCounters::open_here)
                .map_err(io::Error::other)
                .and_then(|opened| opened)
            {
                Ok(c) => c,
                Err(e) => {
                    self.counters_backoff = COUNTERS_BACKOFF;
                    return Err(e);
                }
            },
        };
        let c = self.dev_counters.insert(counters);
        c.tx_dropped(&name)
    }

    /// The device's MAC: the pod's `eth0` address.
    pub fn mac(&self) -> io::Result<[u8; 6]> {
        tun::hw_addr(self.fd.as_fd())
    }

    /// Reads one frame into `p`. With TSO on, a frame longer than `p` runs on
    /// into a large buffer lent by the pool for the read, where only a GSO
    /// superframe is kept (joined with its first part); otherwise the buffer
    /// goes straight back. Lent per read, not held per port: a node's many
    /// TAPs share the few large buffers its workers cycle.
    fn read_frame(&mut self, p: &mut Packet, pool: &mut Pool) -> io::Result<Rx> {
        let mut spare = self.offloads.tso4.then(|| pool.alloc_large());
        let r = self.read_into(p, spare.as_mut());
        match (r, spare) {
            (Ok(Rx::InSpare(n)), Some(s)) => Ok(Rx::Superframe(s, n)),
            (r, s) => {
                if let Some(s) = s {
                    pool.free(s);
                }
                r
            }
        }
    }

    fn read_into(&mut self, p: &mut Packet, mut spare: Option<&mut Packet>) -> io::Result<Rx> {
        let mut hdr = [0u8; VnetHdr::LEN];
        let hdr_len = if self.vnet_hdr { VnetHdr::LEN } else { 0 };
        let area = p.rx_area();
        let room = area.len();
        let mut overflow = [0u8; 1];
        let n = {
            // Only with superframes possible does a read need room past one buffer.
            let tail: &mut [u8] = match spare.as_deref_mut() {
                Some(s) => s.rx_area().get_mut(room..).unwrap_or_default(),
                // One byte past the buffer tells an oversized frame from one that fits.
                None => &mut overflow,
            };
            loop {
                let mut iov = [
                    IoSliceMut::new(&mut hdr[..hdr_len]),
                    IoSliceMut::new(&mut *area),
                    IoSliceMut::new(&mut *tail),
                ];
                match readv(&self.fd, &mut iov) {
                    Ok(n) => break n,
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EAGAIN) => return Ok(Rx::Empty),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if n < hdr_len {
            self.stats.rx_bad_vnet += 1;
            return Ok(Rx::Dropped);
        }
        let len = n - hdr_len;
        let h = if self.vnet_hdr {
            VnetHdr::parse(&hdr)
        } else {
            VnetHdr::default()
        };
        if h.is_gso() {
            return Ok(self.take_superframe(p, spare, &h, len, room));
        }
        if len > room {
            self.stats.rx_oversize += 1;
            return Ok(Rx::Dropped);
        }
        p.set_received(len);
        if h.flags & VnetHdr::F_NEEDS_CSUM != 0 {
            let (start, offset) = (usize::from(h.csum_start), usize::from(h.csum_offset));
            if !complete_checksum(p.data_mut(), start, offset) {
                self.stats.rx_bad_vnet += 1;
                return Ok(Rx::Dropped);
            }
            self.stats.rx_csum_completed += 1;
        }
        self.stats.rx_frames += 1;
        Ok(Rx::Frame)
    }

    /// Checks a superframe of `len` bytes just read into `p` (`room` bytes) and
    /// on into the spare buffer, and marks it for the pipeline: `Frame` if it
    /// was short enough for `p`, else the spare buffer holding it whole. Its TCP
    /// checksum is left partial (the pseudo-header sum).
    fn take_superframe(
        &mut self,
        p: &mut Packet,
        spare: Option<&mut Packet>,
        h: &VnetHdr,
        len: usize,
        room: usize,
    ) -> Rx {
        self.stats.rx_gso += 1;
        if h.gso_type & !VnetHdr::GSO_ECN != VnetHdr::GSO_TCPV4 {
            self.stats.rx_gso_unsupported += 1;
            return Rx::Dropped;
        }
        let whole = if len <= room {
            p.set_received(len);
            p
        } else {
            match spare {
                Some(s) if len <= s.capacity() => {
                    let (front, _) = s.rx_area().split_at_mut(room);
                    front.copy_from_slice(&p.rx_area()[..room]);
                    s.set_received(len);
                    s
                }
                _ => {
                    self.stats.rx_oversize += 1;
                    return Rx::Dropped;
                }
            }
        };
        let count = match mark_superframe(whole, h.gso_size) {
            Ok(count) => count,
            Err(e) => {
                self.stats.rx_gso_bad += 1;
                self.stats.rx_gso_last_error = Some(e);
                return Rx::Dropped;
            }
        };
        self.stats.rx_gso_segments += count as u64;
        self.stats.rx_frames += 1;
        if len <= room {
            Rx::Frame
        } else {
            Rx::InSpare(count)
        }
    }

    /// Writes one frame, behind a zeroed virtio-net header if the device wants one:
    /// no offload asked, so the receiving kernel checks checksums itself.
    fn write_frame(&mut self, p: &mut Packet) -> Result<(), Errno> {
        loop {
            let r = if !self.vnet_hdr {
                nix::unistd::write(&self.fd, p.data())
            } else if let Some(h) = p.prepend(VnetHdr::LEN) {
                // Written into the headroom: the frame is not copied.
                h.fill(0);
                let r = nix::unistd::write(&self.fd, p.data());
                p.strip(VnetHdr::LEN);
                r
            } else {
                let iov = [IoSlice::new(&ZERO_VNET_HDR), IoSlice::new(p.data())];
                writev(&self.fd, &iov)
            };
            match r {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
                Ok(_) => return Ok(()),
            }
        }
    }
}

impl Tap {
    /// Writes a superframe from the pipeline: whole behind a GSO header, or, on a
    /// device without the virtio-net header, cut into segments written one by
    /// one. Counted in the stats here (segments, or `tx_errors` for one that
    /// cannot be cut); an `Err` is the device refusing (queue full, gone).
    fn write_superframe(&mut self, p: &mut Packet) -> Result<(), Errno> {
        let ip_at = usize::from(p.meta.gso_ip);
        let g = match Tcp4Gso::parse_at(p.data(), ip_at, p.meta.gso_size) {
            Ok(g) => g,
            Err(_) => {
                self.stats.tx_errors += 1;
                return Ok(());
            }
        };
        let count = g.count() as u64;
        if self.vnet_hdr && ip_at == gso::ETH_LEN {
            let h = superframe_vnet_hdr(p.data(), &g);
            let r = match p.prepend(VnetHdr::LEN) {
                Some(b) => {
                    h.emit(b.try_into().expect("12 bytes"));
                    let r = loop {
                        match nix::unistd::write(&self.fd, p.data()) {
                            Err(Errno::EINTR) => continue,
                            r => break r,
                        }
                    };
                    p.strip(VnetHdr::LEN);
                    r
                }
                None => {
                    let mut b = [0u8; VnetHdr::LEN];
                    h.emit(&mut b);
                    loop {
                        match writev(&self.fd, &[IoSlice::new(&b), IoSlice::new(p.data())]) {
                            Err(Errno::EINTR) => continue,
                            r => break r,
                        }
                    }
                }
            };
            return match r {
                Ok(_) => {
                    self.stats.tx_frames += count;
                    self.stats.tx_gro += 1;
                    self.stats.tx_gro_segments += count;
                    Ok(())
                }
                Err(
                    e @ (Errno::EAGAIN | Errno::EIO | Errno::EBADF | Errno::EBADFD | Errno::ENODEV),
                ) => Err(e),
                Err(_) => {
                    self.stats.tx_errors += 1;
                    Ok(())
                }
            };
        }
        // Cut it: each segment into the segment buffer, one write each.
        self.stats.tx_gso_cut += 1;
        if self.seg_buf.len() < g.max_segment_len() + VnetHdr::LEN {
            self.seg_buf.resize(g.max_segment_len() + VnetHdr::LEN, 0);
        }
        let hdr = if self.vnet_hdr { VnetHdr::LEN } else { 0 };
        for i in 0..g.count() {
            // A zeroed virtio-net header: the segment's checksums are complete.
            self.seg_buf[..hdr].fill(0);
            let n = match g.write_segment(p.data(), i, &mut self.seg_buf[hdr..]) {
                Ok(n) => n,
                Err(_) => {
                    self.stats.tx_errors += 1;
                    return Ok(());
                }
            };
            loop {
                match nix::unistd::write(&self.fd, &self.seg_buf[..hdr + n]) {
                    Err(Errno::EINTR) => continue,
                    Ok(_) => {
                        self.stats.tx_frames += 1;
                        break;
                    }
                    Err(
                        e @ (Errno::EAGAIN
                        | Errno::EIO
                        | Errno::EBADF
                        | Errno::EBADFD
                        | Errno::ENODEV),
                    ) => return Err(e),
                    Err(_) => {
                        self.stats.tx_errors += 1;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes a run of segments joined into one superframe: the virtio-net
    /// header, the first segment whole (its headers already rewritten by
    /// [`Tcp4Run::finish`]), then the payload of each other segment, in one
    /// gather write. Nothing is copied in user space.
    fn write_run(&mut self, h: &VnetHdr, run: &[Packet], payload_at: usize) -> Result<(), Errno> {
        let mut hdr = [0u8; VnetHdr::LEN];
        h.emit(&mut hdr);
        let mut iov: [IoSlice<'_>; MAX_RUN + 1] = std::array::from_fn(|_| IoSlice::new(&[]));
        iov[0] = IoSlice::new(&hdr);
        iov[1] = IoSlice::new(run[0].data());
        for (slot, p) in iov[2..].iter_mut().zip(&run[1..]) {
            *slot = IoSlice::new(&p.data()[payload_at..]);
        }
        loop {
            match writev(&self.fd, &iov[..run.len() + 1]) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
                Ok(_) => return Ok(()),
            }
        }
    }
}

/// Finishes a partial TCP/UDP checksum the way the kernel does
/// (`skb_checksum_help`): the field at `start + offset` holds the pseudo-header
/// sum; the ones'-complement sum from `start` to the end, folded and inverted,
/// replaces it. False (frame unchanged) if the offsets fall outside the frame.
pub(crate) fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let field = start + offset;
    if start >= frame.len() || field + 2 > frame.len() || offset + 2 > frame.len() - start {
        return false;
    }
    let mut sum = 0u64;
    let mut words = frame[start..].chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut csum = !(sum as u16);
    if csum == 0 {
        // UDP reads 0 as "no checksum"; 0xffff is the same value in ones' complement.
        csum = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

impl Port for Tap {
    fn name(&self) -> &str {
        &self.name
    }

    fn destroy(self: Box<Self>) -> io::Result<()> {
        self.delete()
    }

    fn rx_burst(&mut self, pool: &mut Pool, batch: &mut Batch, max: usize) -> io::Result<usize> {
        let mut got = 0;
        // One buffer reused until a frame lands in it: reads that come back
        // empty or dropped cost no trip to the pool.
        let mut next: Option<Packet> = None;
        while got < max && !batch.is_full() {
            // Pool empty: the frames wait in the device queue until buffers return.
            let Some(mut p) = next.take().or_else(|| pool.alloc()) else {
                break;
            };
            match self.read_frame(&mut p, pool) {
                Ok(Rx::Frame) => {
                    batch.push(p);
                    got += 1;
                }
                Ok(Rx::Superframe(sf, segments)) => {
                    batch.push(sf);
                    // Counted by its segments: a burst is about as much work
                    // (and as many frames for a port that cuts it) as before.
                    got += segments;
                    next = Some(p);
                }
                Ok(Rx::Dropped | Rx::InSpare(_)) => next = Some(p),
                Ok(Rx::Empty) => {
                    pool.free(p);
                    break;
                }
                Err(e) => {
                    pool.free(p);
                    // Hand over what arrived; the error comes back on the next call.
                    if got > 0 {
                        break;
                    }
                    return Err(e);
                }
            }
        }
        if let Some(p) = next {
            pool.free(p);
        }
        Ok(got)
    }

    fn tx_burst(&mut self, pool: &mut Pool, batch: &mut Batch) -> io::Result<usize> {
        let mut sent = 0;
        let mut refusing = false;
        let mut fatal = None;
        let pkts = batch.as_mut_slice();
        let mut i = 0;
        // The parse of `pkts[i]` when the run before it already did it.
        let mut parsed: Option<Option<Tcp4Seg>> = None;
        while i < pkts.len() {
            if refusing {
                self.stats.tx_refused += (pkts.len() - i) as u64;
                break;
            }
            if pkts[i].meta.is_superframe() {
                parsed = None;
                let r = self.write_superframe(&mut pkts[i]);
                i += 1;
                match r {
                    Ok(()) => sent += 1,
                    Err(e) => {
                        self.stats.tx_refused += 1;
                        if matches!(e, Errno::EBADF | Errno::EBADFD | Errno::ENODEV) {
                            fatal = Some(e);
                        }
                        refusing = matches!(
                            e,
                            Errno::EAGAIN
                                | Errno::EIO
                                | Errno::EBADF
                                | Errno::EBADFD
                                | Errno::ENODEV
                        );
                    }
                }
                continue;
            }
            let (n, r) = if self.gro {
                let first = parsed.take().unwrap_or_else(|| Tcp4Seg::of(&pkts[i]));
                match first.map(|s| join_tcp(&mut pkts[i..], s)) {
                    Some((run, after)) if run.count > 1 => {
                        parsed = after;
                        let end = i + run.count;
                        (
                            run.count,
                            self.write_run(&run.hdr, &pkts[i..end], run.payload_at),
                        )
                    }
                    Some((_, after)) => {
                        parsed = after;
                        (1, self.write_frame(&mut pkts[i]))
                    }
                    None => (1, self.write_frame(&mut pkts[i])),
                }
            } else {
                (1, self.write_frame(&mut pkts[i]))
            };
            i += n;
            let n64 = n as u64;
            match r {
                Ok(()) => {
                    sent += n;
                    self.stats.tx_frames += n64;
                    if n > 1 {
                        self.stats.tx_gro += 1;
                        self.stats.tx_gro_segments += n64;
                    }
                }
                // Queue full or link down: the rest would be refused too.
                Err(Errno::EAGAIN | Errno::EIO) => {
                    self.stats.tx_refused += n64;
                    refusing = true;
                }
                // The device is gone from under the fd.
                Err(e @ (Errno::EBADF | Errno::EBADFD | Errno::ENODEV)) => {
                    self.stats.tx_refused += n64;
                    refusing = true;
                    fatal = Some(e);
                }
                // This frame only (too short, too long for the MTU). A superframe
                // the kernel refuses turns joining off on this port: the segments
                // are lost once, not again and again.
                Err(_) => {
                    self.stats.tx_errors += n64;
                    if n > 1 {
                        self.gro = false;
                    }
                }
            }
        }
        batch.clear_into(pool);
        match fatal {
            Some(e) if sent == 0 => Err(e.into()),
            _ => Ok(sent),
        }
    }

    fn rx_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn feeds_local_reader(&self) -> bool {
        true
    }

    fn takes_superframes(&self) -> bool {
        true
    }

    /// Reads the device's `tx_dropped` from its namespace's `/proc/net/dev`
    /// (about 4 µs: reading the file, `TUNGETIFF`, `TUNGETDEVNETNS` and an
    /// `fstat` of the descriptor it returns). A failed read keeps the last
    /// count.
    fn update_kernel_stats(&mut self) {
        if let Ok(now) = self.read_tx_dropped() {
            let base = *self.tx_dropped_base.get_or_insert(now);
            self.stats.rx_kernel_drops = now.saturating_sub(base);
        }
    }

    fn offload_stats(&self) -> PortOffload {
        let s = &self.stats;
        PortOffload {
            rx_gso_superframes: s.rx_gso,
            rx_gso_segments: s.rx_gso_segments,
            // A TAP passes every superframe it reads on whole.
            rx_gso_cut: 0,
            tx_gro_superframes: s.tx_gro,
            tx_gro_segments: s.tx_gro_segments,
            rx_dropped: s.rx_oversize + s.rx_bad_vnet + s.rx_gso_bad + s.rx_gso_unsupported,
            rx_kernel_drops: s.rx_kernel_drops,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    #[test]
    fn tx_dropped_is_read_from_the_right_line_and_column() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    7    0     0       0          0
  eth0: 1234567    8901    1    2    3     4          5         6  7654321    1098    9 4242   11    12      13         14
eth10:0 0 0 0 0 0 0 0 0 0 0 99 0 0 0 0
";
        assert_eq!(tx_dropped_in(text, "eth0"), Some(4242));
        assert_eq!(tx_dropped_in(text, "lo"), Some(7));
        assert_eq!(tx_dropped_in(text, "eth10"), Some(99));
        assert_eq!(tx_dropped_in(text, "eth1"), None);
        assert_eq!(tx_dropped_in(text, "face |bytes"), None);
        assert_eq!(tx_dropped_in("", "eth0"), None);
        assert_eq!(
            tx_dropped_in("a\nb\n  eth0: 1 2 3\n", "eth0"),
            None,
            "too few columns"
        );
    }

    /// Ones'-complement sum of the UDP pseudo header, folded, not inverted: what
    /// the kernel leaves in the checksum field of a partial-checksum frame.
    fn pseudo_sum(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> u16 {
        let mut s: u32 = 0;
        for w in [src, dst] {
            s += u32::from(u16::from_be_bytes([w[0], w[1]]))
                + u32::from(u16::from_be_bytes([w[2], w[3]]));
        }
        s += u32::from(proto) + u32::from(l4_len);
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    fn udp_frame(payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([198, 19, 7, 2], [198, 19, 8, 3], 64)
            .udp(40000, 53);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    #[test]
    fn partial_checksums_are_completed() {
        for payload in [
            &b"hello"[..],
            &b"even"[..],
            &[0u8; 0][..],
            &[0xffu8; 33][..],
        ] {
            let good = udp_frame(payload);
            let mut partial = good.clone();
            let l4 = 14 + 20;
            let udp_len = (8 + payload.len()) as u16;
            let seed = pseudo_sum([198, 19, 7, 2], [198, 19, 8, 3], 17, udp_len);
            partial[l4 + 6..l4 + 8].copy_from_slice(&seed.to_be_bytes());
            assert!(complete_checksum(&mut partial, l4, 6));
            assert_eq!(partial, good, "payload {payload:?}");
        }
    }

    #[test]
    fn checksum_offsets_outside_the_frame_are_refused() {
        let mut f = udp_frame(b"x");
        let copy = f.clone();
        let n = f.len();
        assert!(!complete_checksum(&mut f, n, 0));
        assert!(!complete_checksum(&mut f, n - 1, 0));
        assert!(!complete_checksum(&mut f, 34, n));
        assert!(!complete_checksum(
            &mut f,
            usize::from(u16::MAX),
            usize::from(u16::MAX)
        ));
        assert_eq!(f, copy);
    }

    #[test]
    fn options_build() {
        let o = TapOptions::new()
            .vnet_hdr(false)
            .persist(false)
            .offloads(Offloads::NONE);
        assert!(!o.vnet_hdr && !o.persist);
        assert_eq!(o.iff_flags(), tun::IFF_TAP | tun::IFF_NO_PI);
        assert_eq!(
            TapOptions::new().iff_flags(),
            tun::IFF_TAP | tun::IFF_NO_PI | tun::IFF_VNET_HDR
        );
    }

    #[test]
    fn bad_names_are_refused_before_the_kernel() {
        let o = TapOptions::new();
        assert!(matches!(
            Tap::create("", &o),
            Err(TapError::InvalidName { .. })
        ));
        assert!(matches!(
            Tap::attach("much-too-long-name", &o),
            Err(TapError::InvalidName { .. })
        ));
    }
}
