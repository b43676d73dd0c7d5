//! AF_XDP sockets (`linux/if_xdp.h`): a UMEM of fixed-size frames, its fill and
//! completion rings, and the RX and TX rings of one socket bound to one queue.
//!
//! Written by hand over the kernel's ring ABI rather than taken from a crate:
//! xdpilone is EUPL-1.2 (copyleft, not cleared for an Apache-2.0 project), xsk-rs
//! and afxdp link the C libxdp/libbpf, and s2n-quic-xdp is an internal crate of
//! s2n-quic. The ABI is small: four `setsockopt`s, four `mmap`s and `bind`.
//!
//! Frame ownership is the whole protocol: a frame's bytes belong to the kernel
//! from the moment its address is committed to the fill or TX ring until it comes
//! back on the RX or completion ring. The port ([`crate::port::xdp`]) keeps that
//! book; this module only moves descriptors and bytes.
//!
//! All `unsafe` of the AF_XDP port is here: the socket calls take pointers to
//! kernel structs, and the rings and the UMEM are shared memory.

// Socket options pass pointers the kernel reads and writes, and the rings are
// memory the kernel writes concurrently; nothing safe wraps either.
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::libc::{self, c_int, c_void, socklen_t, xdp_desc};

/// Bytes per UMEM frame: a page, so the same UMEM suits zero-copy drivers.
pub const FRAME_SIZE: u32 = 4096;

/// The largest frame the kernel delivers into a [`FRAME_SIZE`] chunk: it keeps
/// `XDP_PACKET_HEADROOM` (256 bytes) in front of the data.
pub const MAX_RX_FRAME: u32 = FRAME_SIZE - 256;

/// A kernel call that failed, and which one.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct XskError {
    pub op: &'static str,
    #[source]
    pub source: io::Error,
}

impl XskError {
    fn last(op: &'static str) -> XskError {
        XskError {
            op,
            source: io::Error::last_os_error(),
        }
    }

    /// The errno the kernel answered with.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// What a socket is built with. Ring sizes are powers of two (the kernel's rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XskConfig {
    pub ifindex: u32,
    pub queue: u32,
    /// UMEM frames of [`FRAME_SIZE`] bytes.
    pub frames: u32,
    pub fill_size: u32,
    pub comp_size: u32,
    pub rx_size: u32,
    pub tx_size: u32,
    /// `sockaddr_xdp.sxdp_flags`: `XDP_USE_NEED_WAKEUP`, `XDP_COPY`, `XDP_ZEROCOPY`.
    pub bind_flags: u16,
}

/// The kernel's counters of one socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskKernelStats {
    /// Frames dropped for lack of a fill-ring frame or RX-ring slot, or too long.
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

/// An anonymous or socket mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(
        len: usize,
        fd: Option<BorrowedFd<'_>>,
        offset: u64,
        op: &'static str,
    ) -> Result<Mapping, XskError> {
        let (flags, raw) = match fd {
            Some(fd) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd.as_raw_fd()),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
            ),
        };
        let off = libc::off_t::try_from(offset).map_err(|_| XskError {
            op,
            source: io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        // SAFETY: a fresh mapping at an address the kernel chooses; it aliases no
        // Rust object. The fd, when given, is open for the duration of the call.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw,
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(XskError::last(op));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(XskError {
            op,
            source: io::Error::from_raw_os_error(libc::ENOMEM),
        })?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are exactly what mmap returned, and every pointer
        // into the mapping is held by the struct that owns this Mapping and dies
        // with it.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len);
        }
    }
}

/// The UMEM: `frames` chunks of [`FRAME_SIZE`] bytes that the kernel and Sluice
/// hand back and forth by address.
struct Umem {
    map: Mapping,
}

impl Umem {
    /// Bounds check of a frame at `addr` of `len` bytes.
    fn range(&self, addr: u64, len: usize) -> Option<usize> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.map.len).then_some(start)
    }
}

/// One ring mapped from the socket. `T` is `u64` (fill, completion: frame
/// addresses) or `xdp_desc` (RX, TX).
struct Ring<T> {
    _map: Mapping,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    size: u32,
    /// Our own index: the producer for fill and TX, the consumer for RX and
    /// completion. Published to the kernel on commit or release.
    local: u32,
    /// The kernel's index as last read: its consumer for fill and TX, its
    /// producer for RX and completion.
    peer: u32,
}

impl<T: Copy> Ring<T> {
    fn map(
        fd: BorrowedFd<'_>,
        off: &libc::xdp_ring_offset,
        size: u32,
        pgoff: u64,
        producer_side: bool,
        op: &'static str,
    ) -> Result<Ring<T>, XskError> {
        let bad = || XskError {
            op,
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        let at = |o: u64| usize::try_from(o).map_err(|_| bad());
        let len = at(off.desc)?
            .checked_add(size as usize * size_of::<T>())
            .ok_or_else(bad)?;
        let (p, c, f, d) = (
            at(off.producer)?,
            at(off.consumer)?,
            at(off.flags)?,
            at(off.desc)?,
        );
        if [p, c, f].iter().any(|&o| o + 4 > len || o % 4 != 0) || d % 8 != 0 {
            return Err(bad());
        }
        let map = Mapping::new(len, Some(fd), pgoff, op)?;
        let base = map.ptr.as_ptr();
        // SAFETY: every offset was checked to lie inside the mapping, aligned for
        // its type, and the kernel's ring layout puts a u32 at each index offset.
        let (producer, consumer, flags, descs) = unsafe {
            (
                NonNull::new_unchecked(base.add(p).cast::<AtomicU32>()),
                NonNull::new_unchecked(base.add(c).cast::<AtomicU32>()),
                NonNull::new_unchecked(base.add(f).cast::<AtomicU32>()),
                NonNull::new_unchecked(base.add(d).cast::<T>()),
            )
        };
        let mut ring = Ring {
            _map: map,
            producer,
            consumer,
            flags,
            descs,
            size,
            local: 0,
            peer: 0,
        };
        // The kernel starts both indices at 0, but read them rather than assume.
        let (p, c) = (
            ring.producer().load(Ordering::Relaxed),
            ring.consumer().load(Ordering::Relaxed),
        );
        (ring.local, ring.peer) = if producer_side { (p, c) } else { (c, p) };
        Ok(ring)
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into `_map`, which lives as long as `self`; the kernel
        // only ever accesses it atomically.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`.
        let flags = unsafe { self.flags.as_ref() };
        // Relaxed: a hint. A stale value costs one spare or one late syscall, and
        // the next burst reads it again.
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: the index is masked to the ring size, and the mapping holds
        // `size` descriptors from `descs`.
        unsafe { self.descs.as_ptr().add((index & (self.size - 1)) as usize) }
    }

    // Producer side (fill, TX).

    /// Free slots, at most `want`; reads the kernel's consumer only when the
    /// cached one does not show enough.
    fn free(&mut self, want: u32) -> u32 {
        let free = self.size - self.local.wrapping_sub(self.peer);
        if free >= want {
            return want;
        }
        // Acquire: pairs with the kernel's release of its consumer index, so its
        // reads of the slots it gives back are done before we overwrite them.
        self.peer = self.consumer().load(Ordering::Acquire);
        (self.size - self.local.wrapping_sub(self.peer)).min(want)
    }

    /// Writes `items` at the producer index and publishes them. Returns how many
    /// fitted (a prefix of `items`).
    fn produce(&mut self, items: &[T]) -> u32 {
        let mut batch = self.reserve(items.len().min(u32::MAX as usize) as u32);
        for (i, item) in items.iter().take(batch.len() as usize).enumerate() {
            batch.set(i as u32, *item);
        }
        let n = batch.len();
        batch.commit();
        n
    }

    /// Up to `n` slots to fill, published by [`Reserved::commit`]; dropping the
    /// batch uncommitted gives them back.
    fn reserve(&mut self, n: u32) -> Reserved<'_, T> {
        let n = self.free(n);
        Reserved { ring: self, n }
    }

    // Consumer side (RX, completion).

    /// Entries waiting, at most `want`; reads the kernel's producer only when the
    /// cached one does not show enough.
    fn available(&mut self, want: u32) -> u32 {
        let avail = self.peer.wrapping_sub(self.local);
        if avail >= want {
            return want;
        }
        // Acquire: pairs with the kernel's release of its producer index, so the
        // descriptors (and the frame bytes they point at) are visible.
        self.peer = self.producer().load(Ordering::Acquire);
        self.peer.wrapping_sub(self.local).min(want)
    }

    /// Reads the `i`th waiting entry (`i` below what [`Ring::available`] said).
    fn peek(&self, i: u32) -> T {
        // SAFETY: the slot is inside the ring and the kernel published it (see
        // `available`); it does not write it again before we release it.
        unsafe { self.slot(self.local.wrapping_add(i)).read() }
    }

    /// Gives `n` read entries back to the kernel.
    fn release(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        // Release: pairs with the kernel's acquire of our consumer index: our
        // reads of the slots are done before it reuses them.
        self.consumer().store(self.local, Ordering::Release);
    }
}

/// Slots reserved on a producer ring: written with [`Reserved::set`], published
/// by [`Reserved::commit`]. Dropped without commit, nothing is published.
struct Reserved<'a, T: Copy> {
    ring: &'a mut Ring<T>,
    n: u32,
}

impl<T: Copy> Reserved<'_, T> {
    fn len(&self) -> u32 {
        self.n
    }

    fn set(&mut self, i: u32, item: T) {
        if i < self.n {
            // SAFETY: the slot is one of the `n` free ones `reserve` found: the
            // kernel has released it and reads it only after we publish.
            unsafe { self.ring.slot(self.ring.local.wrapping_add(i)).write(item) }
        }
    }

    fn commit(self) {
        self.ring.local = self.ring.local.wrapping_add(self.n);
        // Release: pairs with the kernel's acquire of the producer index, so it
        // sees the slots written above (and the frame bytes they point at).
        self.ring
            .producer()
            .store(self.ring.local, Ordering::Release);
    }
}

/// An AF_XDP socket with its own UMEM, bound to one queue of one interface.
///
/// Field order is drop order: the rings are unmapped, then the socket closes
/// (which unbinds it and takes it out of any XSKMAP), then the UMEM goes.
pub struct XskSocket {
    fill: Ring<u64>,
    comp: Ring<u64>,
    rx: Ring<xdp_desc>,
    tx: Ring<xdp_desc>,
    fd: OwnedFd,
    umem: Umem,
    zerocopy: bool,
}

// SAFETY: the rings and the UMEM are mappings this socket owns alone; their
// pointers are never handed out, so moving the whole to another thread moves
// every access with it. The kernel's side of the sharing is through atomics.
unsafe impl Send for XskSocket {}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket")
            .field("fd", &self.fd)
            .field("umem_bytes", &self.umem.map.len)
            .field("zerocopy", &self.zerocopy)
            .finish()
    }
}

fn setsockopt<T>(fd: &OwnedFd, opt: c_int, value: &T, op: &'static str) -> Result<(), XskError> {
    // SAFETY: `value` is a live `T` of the size passed; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (value as *const T).cast::<c_void>(),
            size_of::<T>() as socklen_t,
        )
    };
    if r != 0 {
        return Err(XskError::last(op));
    }
    Ok(())
}

/// Reads a socket option into a zeroed `T`; returns it and the length the kernel
/// wrote (older kernels write shorter versions of some structs).
fn getsockopt<T: Copy>(
    fd: &OwnedFd,
    opt: c_int,
    zero: T,
    op: &'static str,
) -> Result<(T, usize), XskError> {
    let mut value = zero;
    let mut len = size_of::<T>() as socklen_t;
    // SAFETY: `value` is a live, writable `T` and `len` says how big it is; the
    // kernel writes at most `len` bytes and updates `len`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (&mut value as *mut T).cast::<c_void>(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(XskError::last(op));
    }
    Ok((value, len as usize))
}

fn is_pow2(n: u32) -> bool {
    n != 0 && n & (n - 1) == 0
}

impl XskSocket {
    /// Creates the socket and its UMEM, maps the four rings and binds to
    /// `cfg.queue` of `cfg.ifindex` in the calling thread's namespace. The fill
    /// ring starts with the first `cfg.fill_size` frames (those are the receive
    /// frames; the rest are for the caller to send from).
    pub fn open(cfg: &XskConfig) -> Result<XskSocket, XskError> {
        let einval = |op| XskError {
            op,
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        for size in [cfg.fill_size, cfg.comp_size, cfg.rx_size, cfg.tx_size] {
            if !is_pow2(size) {
                return Err(einval("ring size is not a power of two"));
            }
        }
        if cfg.fill_size > cfg.frames {
            return Err(einval("more fill-ring frames than UMEM frames"));
        }

        // SAFETY: plain socket(2); the result is checked before it becomes an OwnedFd.
        let raw: RawFd =
            unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(XskError::last("socket(AF_XDP)"));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let umem_len = cfg.frames as usize * FRAME_SIZE as usize;
        let umem = Umem {
            map: Mapping::new(umem_len, None, 0, "mmap UMEM")?,
        };
        let reg = libc::xdp_umem_reg {
            addr: umem.map.ptr.as_ptr() as u64,
            len: umem_len as u64,
            chunk_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(
            &fd,
            libc::XDP_UMEM_REG,
            &reg,
            "register UMEM (XDP_UMEM_REG)",
        )?;
        setsockopt(
            &fd,
            libc::XDP_UMEM_FILL_RING,
            &cfg.fill_size,
            "size fill ring",
        )?;
        setsockopt(
            &fd,
            libc::XDP_UMEM_COMPLETION_RING,
            &cfg.comp_size,
            "size completion ring",
        )?;
        setsockopt(&fd, libc::XDP_RX_RING, &cfg.rx_size, "size RX ring")?;
        setsockopt(&fd, libc::XDP_TX_RING, &cfg.tx_size, "size TX ring")?;

        // SAFETY: an all-zero xdp_mmap_offsets is a valid value (plain integers).
        let zero: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let (off, len) = getsockopt(&fd, libc::XDP_MMAP_OFFSETS, zero, "read ring offsets")?;
        if len != size_of::<libc::xdp_mmap_offsets>() {
            // Kernels before 5.4 have no flags word, so no need-wakeup.
            return Err(XskError {
                op: "read ring offsets (kernel older than 5.4)",
                source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            });
        }
        let b = fd.as_fd();
        let fill = Ring::map(
            b,
            &off.fr,
            cfg.fill_size,
            libc::XDP_UMEM_PGOFF_FILL_RING,
            true,
            "mmap fill ring",
        )?;
        let comp = Ring::map(
            b,
            &off.cr,
            cfg.comp_size,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            false,
            "mmap completion ring",
        )?;
        let rx = Ring::map(
            b,
            &off.rx,
            cfg.rx_size,
            libc::XDP_PGOFF_RX_RING as u64,
            false,
            "mmap RX ring",
        )?;
        let tx = Ring::map(
            b,
            &off.tx,
            cfg.tx_size,
            libc::XDP_PGOFF_TX_RING as u64,
            true,
            "mmap TX ring",
        )?;

        let mut sock = XskSocket {
            fill,
            comp,
            rx,
            tx,
            fd,
            umem,
            zerocopy: false,
        };
        let rx_frames: Vec<u64> = (0..u64::from(cfg.fill_size))
            .map(|i| i * u64::from(FRAME_SIZE))
            .collect();
        sock.fill.produce(&rx_frames);

        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: cfg.bind_flags,
            sxdp_ifindex: cfg.ifindex,
            sxdp_queue_id: cfg.queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `sa` is a live sockaddr_xdp of the size passed; the kernel reads it.
        let r = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_xdp).cast::<libc::sockaddr>(),
                size_of::<libc::sockaddr_xdp>() as socklen_t,
            )
        };
        if r != 0 {
            return Err(XskError::last("bind AF_XDP socket to queue"));
        }
        let (opts, _) = getsockopt(
            &sock.fd,
            libc::XDP_OPTIONS,
            libc::xdp_options { flags: 0 },
            "read socket options",
        )?;
        sock.zerocopy = opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0;
        Ok(sock)
    }

    /// The socket, for the XSKMAP and for poll/epoll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether the driver moves frames in place (zero-copy) rather than copying.
    pub fn is_zerocopy(&self) -> bool {
        self.zerocopy
    }

    /// Bytes of UMEM.
    pub fn umem_len(&self) -> usize {
        self.umem.map.len
    }

    /// Received descriptors waiting, at most `max`.
    pub fn rx_available(&mut self, max: u32) -> u32 {
        self.rx.available(max)
    }

    /// The `i`th waiting RX descriptor: (frame address, length).
    pub fn rx_peek(&self, i: u32) -> (u64, u32) {
        let d = self.rx.peek(i);
        (d.addr, d.len)
    }

    /// Gives `n` read RX descriptors back.
    pub fn rx_release(&mut self, n: u32) {
        self.rx.release(n);
    }

    /// Hands frames (by address) to the kernel to receive into; returns how many
    /// fitted.
    pub fn fill(&mut self, addrs: &[u64]) -> u32 {
        self.fill.produce(addrs)
    }

    /// Whether the kernel wants a syscall before it uses the fill ring again.
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Queues `(addr, len)` frames for sending; returns how many fitted in the TX
    /// ring. Call [`XskSocket::kick_tx`] after, if [`XskSocket::tx_needs_wakeup`].
    pub fn tx_submit(&mut self, frames: &[(u64, u32)]) -> u32 {
        let mut batch = self.tx.reserve(frames.len().min(u32::MAX as usize) as u32);
        for (i, &(addr, len)) in frames.iter().take(batch.len() as usize).enumerate() {
            batch.set(
                i as u32,
                xdp_desc {
                    addr,
                    len,
                    options: 0,
                },
            );
        }
        let n = batch.len();
        batch.commit();
        n
    }

    /// Frames on the TX ring that the kernel has not taken yet.
    pub fn tx_pending(&mut self) -> u32 {
        // Acquire: pairs with the kernel's release of its TX consumer index.
        self.tx.peer = self.tx.consumer().load(Ordering::Acquire);
        self.tx.local.wrapping_sub(self.tx.peer)
    }

    pub fn tx_needs_wakeup(&self) -> bool {
        self.tx.needs_wakeup()
    }

    /// Takes up to `out.len()` sent frames back from the completion ring into `out`;
    /// returns how many.
    pub fn complete(&mut self, out: &mut [u64]) -> usize {
        let n = self.comp.available(out.len().min(u32::MAX as usize) as u32);
        for (i, slot) in out.iter_mut().take(n as usize).enumerate() {
            *slot = self.comp.peek(i as u32);
        }
        self.comp.release(n);
        n as usize
    }

    /// Tells the kernel that the TX ring has frames (`sendto` with no data).
    /// Transient refusals (busy, no buffers, link down) are not errors: the
    /// frames stay queued for the next kick.
    pub fn kick_tx(&self) -> io::Result<()> {
        // SAFETY: sendto with a null, zero-length buffer and no address: the kernel
        // reads nothing from user memory.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN | libc::EINTR) => {
                Ok(())
            }
            _ => Err(e),
        }
    }

    /// Tells the kernel that the fill ring has frames again (`recvfrom` with no
    /// buffer), as need-wakeup asks.
    pub fn wake_rx(&self) -> io::Result<()> {
        // SAFETY: recvfrom with a null, zero-length buffer and no address: the
        // kernel writes nothing to user memory.
        let r = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN | libc::EINTR) => {
                Ok(())
            }
            _ => Err(e),
        }
    }

    /// Copies `len` bytes of the frame at `addr` into `dst`. False (nothing copied)
    /// if the frame falls outside the UMEM or `dst` is shorter.
    ///
    /// Call only for a frame the kernel gave back on the RX ring and that has not
    /// been handed to it again: then nothing writes those bytes meanwhile.
    pub fn read_frame(&self, addr: u64, len: u32, dst: &mut [u8]) -> bool {
        let len = len as usize;
        let Some(start) = self.umem.range(addr, len) else {
            return false;
        };
        if dst.len() < len {
            return false;
        }
        // SAFETY: `start..start + len` lies inside the UMEM mapping (checked) and
        // `dst` holds `len` bytes; the two never overlap (the UMEM is no Rust
        // object). By the caller's contract the kernel does not write the frame now.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.umem.map.ptr.as_ptr().add(start),
                dst.as_mut_ptr(),
                len,
            )
        };
        true
    }

    /// Copies `src` into the frame at `addr`. False (nothing copied) if it would
    /// run past the frame or the UMEM.
    ///
    /// Call only for a frame the kernel does not hold (never committed, or back on
    /// the completion ring).
    pub fn write_frame(&mut self, addr: u64, src: &[u8]) -> bool {
        let in_frame = (addr % u64::from(FRAME_SIZE)) as usize + src.len() <= FRAME_SIZE as usize;
        let Some(start) = self.umem.range(addr, src.len()).filter(|_| in_frame) else {
            return false;
        };
        // SAFETY: `start..start + src.len()` lies inside the UMEM mapping (checked)
        // and cannot overlap `src`, a Rust slice. By the caller's contract the
        // kernel neither reads nor writes the frame now.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                self.umem.map.ptr.as_ptr().add(start),
                src.len(),
            )
        };
        true
    }

    /// Lets `write` fill the frame at `addr`, from there to the end of its
    /// [`FRAME_SIZE`] chunk, and returns what it returns: a segment written
    /// straight into the UMEM, with no pool buffer in between. `None` (nothing
    /// called) if the frame falls outside the UMEM.
    ///
    /// Call only for a frame the kernel does not hold (never committed, or back on
    /// the completion ring).
    pub fn write_frame_with<R>(
        &mut self,
        addr: u64,
        write: impl FnOnce(&mut [u8]) -> R,
    ) -> Option<R> {
        let room = FRAME_SIZE as usize - (addr % u64::from(FRAME_SIZE)) as usize;
        let start = self.umem.range(addr, room)?;
        // SAFETY: `start..start + room` lies inside the UMEM mapping (checked),
        // which no Rust object aliases; `&mut self` keeps any other slice of it
        // from this socket away while `write` runs. By the caller's contract the
        // kernel neither reads nor writes the frame now.
        let frame =
            unsafe { std::slice::from_raw_parts_mut(self.umem.map.ptr.as_ptr().add(start), room) };
        Some(write(frame))
    }

    /// The kernel's drop and error counters for this socket.
    pub fn kernel_stats(&self) -> io::Result<XskKernelStats> {
        let zero = libc::xdp_statistics {
            rx_dropped: 0,
            rx_invalid_descs: 0,
            tx_invalid_descs: 0,
            rx_ring_full: 0,
            rx_fill_ring_empty_descs: 0,
            tx_ring_empty_descs: 0,
        };
        let (s, _) = getsockopt(&self.fd, libc::XDP_STATISTICS, zero, "read statistics")
            .map_err(|e| e.source)?;
        Ok(XskKernelStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_are_checked_before_any_syscall() {
        let cfg = XskConfig {
            ifindex: 1,
            queue: 0,
            frames: 64,
            fill_size: 48,
            comp_size: 32,
            rx_size: 32,
            tx_size: 32,
            bind_flags: 0,
        };
        let e = XskSocket::open(&cfg).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
        let cfg = XskConfig {
            fill_size: 128,
            ..cfg
        };
        assert_eq!(
            XskSocket::open(&cfg).unwrap_err().errno(),
            Some(libc::EINVAL)
        );
    }

    #[test]
    fn rings_over_plain_memory() {
        // A ring laid out the kernel's way in anonymous memory: producer, consumer,
        // flags, then 8 descriptors.
        let map = Mapping::new(4096, None, 0, "test").unwrap();
        let base = map.ptr.as_ptr();
        // SAFETY: offsets inside the page, aligned for their types.
        let mut ring: Ring<u64> = unsafe {
            Ring {
                producer: NonNull::new_unchecked(base.cast()),
                consumer: NonNull::new_unchecked(base.add(64).cast()),
                flags: NonNull::new_unchecked(base.add(128).cast()),
                descs: NonNull::new_unchecked(base.add(192).cast()),
                _map: map,
                size: 8,
                local: 0,
                peer: 0,
            }
        };
        // Producer side: 8 fit, the 9th does not until the consumer moves.
        assert_eq!(ring.produce(&[1, 2, 3, 4, 5, 6, 7, 8, 9]), 8);
        assert_eq!(ring.produce(&[10]), 0);
        {
            let mut r = ring.reserve(1);
            assert_eq!(r.len(), 0);
            r.set(0, 99); // ignored: nothing reserved
        }
        ring.consumer().store(3, Ordering::Release);
        // An uncommitted reservation publishes nothing.
        {
            let mut r = ring.reserve(2);
            assert_eq!(r.len(), 2);
            r.set(0, 42);
        }
        assert_eq!(ring.producer().load(Ordering::Acquire), 8);
        assert_eq!(ring.produce(&[10, 11, 12, 13]), 3);
        assert_eq!(ring.producer().load(Ordering::Acquire), 11);

        // Consumer side over the same memory: what was produced reads back in order.
        ring.local = 3;
        ring.peer = 3;
        assert_eq!(ring.available(100), 8);
        let got: Vec<u64> = (0..8).map(|i| ring.peek(i)).collect();
        assert_eq!(got, [4, 5, 6, 7, 8, 10, 11, 12]);
        ring.release(8);
        assert_eq!(ring.consumer().load(Ordering::Acquire), 11);
        assert_eq!(ring.available(100), 0);
        assert!(!ring.needs_wakeup());
    }
}
