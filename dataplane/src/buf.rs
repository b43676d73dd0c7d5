//! Packet buffers: a preallocated pool of fixed-size buffers, each with headroom
//! for the outer headers that encapsulation prepends, and batches of packets.
//!
//! A [`Packet`] owns its buffer. Packets move by value between the pool, rx batches,
//! the pipeline and tx batches; in steady state nothing is allocated or freed: a
//! packet that is dropped or transmitted goes back to the [`Pool`] it came from.

use crate::drop::DropReason;
use crate::flow::FlowKey;

/// Bytes kept free in front of a received frame, for outer headers (VXLAN needs 50,
/// IPIP 20 net, and an ICMP error 28 more than the frame it quotes).
pub const HEADROOM: usize = 128;

/// Default buffer size: headroom plus a full 1500-byte-MTU Ethernet frame plus
/// a VLAN tag, rounded up to a [`SIZE_CLASSES`] entry.
pub const DEFAULT_BUF_SIZE: usize = 2240;

/// The most packets one batch carries (VPP's frame size).
pub const MAX_BATCH: usize = 256;

/// Index of a port on one node. Fixed ids for the uplink and the host port; pod ports
/// are numbered from [`PortId::FIRST_POD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PortId(pub u16);

impl PortId {
    pub const UPLINK: PortId = PortId(0);
    pub const HOST: PortId = PortId(1);
    pub const FIRST_POD: PortId = PortId(2);

    #[inline]
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    #[inline]
    pub fn is_pod(self) -> bool {
        self.0 >= Self::FIRST_POD.0
    }
}

impl std::fmt::Display for PortId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            PortId::UPLINK => f.write_str("uplink"),
            PortId::HOST => f.write_str("host"),
            PortId(n) => write!(f, "pod{n}"),
        }
    }
}

/// Per-packet metadata, written by the stages as the packet moves through them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Meta {
    /// Port the packet arrived on.
    pub in_port: PortId,
    /// Port the packet leaves by, once a stage has decided.
    pub out_port: PortId,
    /// Next stage (see [`crate::stage::Next`]), as its raw number.
    pub next: u8,
    /// Why the packet was dropped, when `next` is the drop stage.
    pub drop: DropReason,
    /// Flags: see the `FLAG_*` constants.
    pub flags: u8,
    /// Offset of the IPv4 header from the start of the data, once parsed.
    pub l3: u16,
    /// Scratch for the stage that consumes it: next-hop index, endpoint index, MTU.
    pub aux: u32,
    /// The packet's 5-tuple, once ipv4-input has parsed it.
    pub flow: FlowKey,
    /// Endpoint index of the local pod that sent it (`u32::MAX`: not a local pod).
    pub src_ep: u32,
    /// Endpoint index of the local pod it is for (`u32::MAX`: not a local pod).
    pub dst_ep: u32,
    /// Non-zero for a TCP superframe (TSO/GSO) carried whole: the payload bytes
    /// of each segment it stands for (the MSS). Its TCP checksum field holds the
    /// pseudo-header sum (partial, as the kernel hands it over); whoever cuts it
    /// computes each segment's checksum.
    pub gso_size: u16,
    /// Of a superframe: where its TCP/IPv4 header starts in the frame. The
    /// encapsulating stages move it by the bytes they prepend, so a port can
    /// tell outer headers from inner ones.
    pub gso_ip: u8,
}

impl Meta {
    pub const NO_EP: u32 = u32::MAX;
    /// The packet is being traced: stages record their decisions for it.
    pub const FLAG_TRACE: u8 = 1 << 0;
    /// The packet arrived encapsulated from a remote node.
    pub const FLAG_FROM_TUNNEL: u8 = 1 << 1;
    /// Its TCP/UDP checksum is known good without summing it: it was cut from a
    /// superframe whose checksum a sender on this host left partial (the
    /// bytes never crossed a wire). Set by the port, kept by the stages.
    pub const FLAG_L4_CSUM_OK: u8 = 1 << 2;

    /// Whether the packet is a TCP superframe carried whole.
    #[inline(always)]
    pub fn is_superframe(&self) -> bool {
        self.gso_size != 0
    }
}

/// A packet buffer: metadata, then the data area (headroom + frame). The
/// metadata lives in the buffer, as in VPP's `vlib_buffer_t` and DPDK's mbuf,
/// so a [`Packet`] is one pointer wide and moving it between queues is cheap.
pub struct Buf<D: ?Sized = [u8]> {
    head: u32,
    len: u32,
    pub meta: Meta,
    data: D,
}

/// One packet: an owned buffer. Derefs to [`Buf`] for the frame and metadata.
pub struct Packet(Box<Buf>);

impl std::ops::Deref for Packet {
    type Target = Buf;
    #[inline(always)]
    fn deref(&self) -> &Buf {
        &self.0
    }
}

impl std::ops::DerefMut for Packet {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Buf {
        &mut self.0
    }
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packet")
            .field("head", &self.head)
            .field("len", &self.len)
            .field("meta", &self.meta)
            .finish()
    }
}

/// Data-area sizes buffers come in. None is a multiple of 4 KiB (nor close to
/// one), so consecutive buffers' headers do not all land in the same few L1
/// cache sets, which a power-of-two stride would cause (DPDK pads its mbufs for
/// the same reason).
pub const SIZE_CLASSES: [usize; 4] = [448, 2240, 9408, 65728];

/// The size class of buffers that hold a whole 64 KiB superframe.
pub const LARGE_BUF_SIZE: usize = SIZE_CLASSES[3];

/// Large buffers a pool keeps once made (more are freed back to the allocator):
/// what the superframes in flight through one worker need.
pub const LARGE_KEEP: usize = 128;

impl Packet {
    /// A packet with its own buffer of at least `size` data bytes (headroom
    /// included), rounded up to a size class. Only the pool calls this outside
    /// tests: the fast path never allocates.
    pub fn with_capacity(size: usize) -> Packet {
        macro_rules! class {
            ($n:expr) => {
                if size <= $n {
                    let b: Box<Buf> = Box::new(Buf {
                        head: HEADROOM as u32,
                        len: 0,
                        meta: Meta::default(),
                        data: [0u8; $n],
                    });
                    return Packet(b);
                }
            };
        }
        class!(448);
        class!(2240);
        class!(9408);
        if size <= LARGE_BUF_SIZE {
            return Packet(zeroed_buf::<LARGE_BUF_SIZE>());
        }
        panic!(
            "buffer size {size} is over the largest class {}",
            SIZE_CLASSES[3]
        );
    }
}

/// A buffer of `N` data bytes from zeroed memory: the allocator hands fresh
/// pages over untouched, so a large buffer costs no resident memory until a
/// frame is written into it (built on the stack and moved, as the smaller
/// classes are, it would cost all 64 KiB at once). The crate's only unsafe
/// code outside `sys`: no safe constructor skips the initialising write.
#[allow(unsafe_code)]
fn zeroed_buf<const N: usize>() -> Box<Buf> {
    let layout = std::alloc::Layout::new::<Buf<[u8; N]>>();
    // SAFETY: the layout is that of `Buf<[u8; N]>` (not zero-sized). Every
    // field is initialised before the box is made: `data` by the zeroing (any
    // bytes are valid `u8`s), the others by the writes through raw pointers
    // (no reference to uninitialised memory is formed). The box then owns the
    // allocation, made with the global allocator and this layout, as
    // `Box::from_raw` requires.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<Buf<[u8; N]>>();
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        std::ptr::addr_of_mut!((*ptr).head).write(HEADROOM as u32);
        std::ptr::addr_of_mut!((*ptr).len).write(0);
        std::ptr::addr_of_mut!((*ptr).meta).write(Meta::default());
        Box::from_raw(ptr)
    }
}

impl Buf {
    /// The frame.
    #[inline(always)]
    pub fn data(&self) -> &[u8] {
        &self.data[self.head as usize..(self.head + self.len) as usize]
    }

    /// The frame, writable.
    #[inline(always)]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.head as usize..(self.head + self.len) as usize]
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// The first `N` bytes of the frame as a fixed-size array (`None` if the
    /// frame is shorter), so that headers are read at constant offsets with no
    /// further bounds checks.
    #[inline(always)]
    pub fn head<const N: usize>(&self) -> Option<&[u8; N]> {
        if (self.len as usize) < N {
            return None;
        }
        self.data.get(self.head as usize..)?.first_chunk::<N>()
    }

    /// [`Buf::head`], writable.
    #[inline(always)]
    pub fn head_mut<const N: usize>(&mut self) -> Option<&mut [u8; N]> {
        if (self.len as usize) < N {
            return None;
        }
        self.data
            .get_mut(self.head as usize..)?
            .first_chunk_mut::<N>()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes free in front of the frame.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head as usize
    }

    /// The largest frame this buffer holds with the standard headroom.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.data.len() - HEADROOM
    }

    /// Size of the whole data area (its size class).
    #[inline]
    pub fn buf_size(&self) -> usize {
        self.data.len()
    }

    /// Empties the packet and restores the standard headroom and clean metadata.
    #[inline]
    pub fn reset(&mut self) {
        self.head = HEADROOM as u32;
        self.len = 0;
        self.meta = Meta::default();
    }

    /// Copies `frame` in at the standard headroom (metadata untouched). False,
    /// and the packet empty, if it does not fit.
    #[inline]
    pub fn load(&mut self, frame: &[u8]) -> bool {
        self.head = HEADROOM as u32;
        self.meta.gso_size = 0;
        self.meta.flags = 0;
        if frame.len() > self.capacity() {
            self.len = 0;
            return false;
        }
        self.data[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        self.len = frame.len() as u32;
        true
    }

    /// The whole area after the headroom, for a port to receive into; follow with
    /// [`Buf::set_received`].
    #[inline]
    pub fn rx_area(&mut self) -> &mut [u8] {
        self.head = HEADROOM as u32;
        self.len = 0;
        self.meta.gso_size = 0;
        self.meta.flags = 0;
        &mut self.data[HEADROOM..]
    }

    /// Marks the frame as a TCP superframe of `gso_size`-byte segments whose
    /// IPv4 header starts `ip_at` bytes in (see [`Meta::gso_size`]).
    #[inline]
    pub fn set_superframe(&mut self, gso_size: u16, ip_at: u8) {
        self.meta.gso_size = gso_size;
        self.meta.gso_ip = ip_at;
    }

    /// Marks `len` bytes written into [`Buf::rx_area`] as the frame.
    #[inline]
    pub fn set_received(&mut self, len: usize) {
        debug_assert!(len <= self.capacity());
        self.head = HEADROOM as u32;
        self.len = len.min(self.capacity()) as u32;
    }

    /// Grows the frame by `n` bytes at the front and returns them. `None` if the
    /// headroom is too small (the packet is unchanged).
    #[inline(always)]
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.head as usize {
            return None;
        }
        self.head -= n as u32;
        self.len += n as u32;
        Some(&mut self.data[self.head as usize..self.head as usize + n])
    }

    /// [`Buf::prepend`] of a fixed size: grows the frame by `N` bytes at the
    /// front and returns them as an array (`None`, unchanged, if the headroom
    /// is too small).
    #[inline(always)]
    pub fn prepend_array<const N: usize>(&mut self) -> Option<&mut [u8; N]> {
        let head = (self.head as usize).checked_sub(N)?;
        let out = self.data.get_mut(head..)?.first_chunk_mut::<N>()?;
        self.head = head as u32;
        self.len += N as u32;
        Some(out)
    }

    /// Removes `n` bytes from the front. False (unchanged) if the frame is shorter.
    #[inline(always)]
    pub fn strip(&mut self, n: usize) -> bool {
        if n > self.len as usize {
            return false;
        }
        self.head += n as u32;
        self.len -= n as u32;
        true
    }

    /// Shortens the frame to `len` bytes (no-op if already shorter).
    #[inline(always)]
    pub fn truncate(&mut self, len: usize) {
        if len < self.len as usize {
            self.len = len as u32;
        }
    }

    /// Grows the frame at the end by `n` bytes (contents unspecified). False if the
    /// buffer has no room.
    #[inline]
    pub fn extend(&mut self, n: usize) -> bool {
        if (self.head + self.len) as usize + n > self.data.len() {
            return false;
        }
        self.len += n as u32;
        true
    }
}

/// A preallocated set of packet buffers of one size, and beside it the large
/// buffers ([`LARGE_BUF_SIZE`]) that superframes travel in.
///
/// Large buffers are made on first demand and kept (up to [`LARGE_KEEP`]) when
/// they come back, so a worker whose ports hand over superframes allocates
/// only until it has the few it keeps cycling.
#[derive(Debug)]
pub struct Pool {
    free: Vec<Packet>,
    buf_size: usize,
    total: usize,
    large: Vec<Packet>,
    large_made: u64,
}

impl Pool {
    /// `count` buffers of `buf_size` bytes (rounded up to a size class), all
    /// allocated now.
    pub fn new(count: usize, buf_size: usize) -> Pool {
        let buf_size = Packet::with_capacity(buf_size).buf_size();
        let free = (0..count)
            .map(|_| Packet::with_capacity(buf_size))
            .collect();
        Pool {
            free,
            buf_size,
            total: count,
            large: Vec::new(),
            large_made: 0,
        }
    }

    /// A clean large buffer: a kept one, or a new one.
    pub fn alloc_large(&mut self) -> Packet {
        match self.large.pop() {
            Some(mut p) => {
                p.reset();
                p
            }
            None => {
                self.large_made += 1;
                Packet::with_capacity(LARGE_BUF_SIZE)
            }
        }
    }

    /// Large buffers made so far (allocations: steady state adds none).
    pub fn large_made(&self) -> u64 {
        self.large_made
    }

    /// Gives back a buffer of another size than the pool's: a large one is
    /// kept while there is room, anything else is freed.
    #[cold]
    fn free_other(&mut self, p: Packet) {
        if p.data.len() == LARGE_BUF_SIZE && self.large.len() < LARGE_KEEP {
            self.large.push(p);
        }
    }

    /// A clean packet, or `None` when every buffer is in use.
    #[inline]
    pub fn alloc(&mut self) -> Option<Packet> {
        let mut p = self.free.pop()?;
        p.head = HEADROOM as u32;
        p.len = 0;
        p.meta.gso_size = 0;
        p.meta.flags = 0;
        Some(p)
    }

    /// Gives a packet back. A buffer of another size (from another pool) is kept
    /// only if this pool has room for it, so a pool never grows past its size.
    #[inline]
    pub fn free(&mut self, p: Packet) {
        if p.data.len() != self.buf_size {
            self.free_other(p);
        } else if self.free.len() < self.total {
            self.free.push(p);
        }
    }

    /// Moves up to `n` clean packets into `batch` (bounded by [`MAX_BATCH`]).
    pub fn alloc_into(&mut self, batch: &mut Batch, n: usize) -> usize {
        let mut got = 0;
        while got < n && batch.len() < MAX_BATCH {
            match self.alloc() {
                Some(p) => batch.push(p),
                None => break,
            }
            got += 1;
        }
        got
    }

    /// Gives back every packet of `batch`, leaving it empty.
    pub fn free_batch(&mut self, batch: &mut Batch) {
        // The common case: all of this pool's size and room for all of them,
        // checked in one pass; then the pointers move in one copy. (`free`
        // holds `total` from the start, so the append never reallocates.)
        let size = self.buf_size;
        if batch.len() <= self.total - self.free.len()
            && batch.pkts.iter().all(|p| p.data.len() == size)
        {
            self.free.append(&mut batch.pkts);
            return;
        }
        for p in batch.pkts.drain(..) {
            self.free(p);
        }
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn buf_size(&self) -> usize {
        self.buf_size
    }
}

/// Up to [`MAX_BATCH`] packets. Its storage is reserved once; pushing past
/// `MAX_BATCH` is a bug in the caller (checked in debug builds).
#[derive(Debug)]
pub struct Batch {
    pkts: Vec<Packet>,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Batch {
        Batch {
            pkts: Vec::with_capacity(MAX_BATCH),
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.pkts.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pkts.is_empty()
    }

    #[inline]
    pub fn is_full(&self) -> bool {
        self.pkts.len() >= MAX_BATCH
    }

    #[inline]
    pub fn push(&mut self, p: Packet) {
        debug_assert!(self.pkts.len() < MAX_BATCH);
        self.pkts.push(p);
    }

    #[inline]
    pub fn pop(&mut self) -> Option<Packet> {
        self.pkts.pop()
    }

    #[inline]
    pub fn as_slice(&self) -> &[Packet] {
        &self.pkts
    }

    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [Packet] {
        &mut self.pkts
    }

    #[inline]
    pub fn drain(&mut self) -> std::vec::Drain<'_, Packet> {
        self.pkts.drain(..)
    }

    #[inline]
    pub fn clear_into(&mut self, pool: &mut Pool) {
        pool.free_batch(self);
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Packet> {
        self.pkts.iter()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn large_buffers_start_clean_and_come_back() {
        let mut pool = Pool::new(4, DEFAULT_BUF_SIZE);
        let mut p = pool.alloc_large();
        assert_eq!(pool.large_made(), 1);
        assert_eq!(
            (p.headroom(), p.len(), p.buf_size()),
            (HEADROOM, 0, LARGE_BUF_SIZE)
        );
        assert!(!p.meta.is_superframe() && p.meta.flags == 0);
        assert!(p.rx_area().iter().all(|b| *b == 0));
        assert!(p.load(&[7u8; 60_000]));
        p.set_superframe(1448, 14);
        pool.free(p);
        // Kept, and handed out again clean.
        let q = pool.alloc_large();
        assert_eq!(pool.large_made(), 1);
        assert!(q.is_empty() && !q.meta.is_superframe());
        assert_eq!(pool.available(), 4, "the small buffers are untouched");
    }

    use super::*;

    #[test]
    fn prepend_strip_round_trip() {
        let mut p = Packet::with_capacity(DEFAULT_BUF_SIZE);
        assert!(p.load(&[1, 2, 3, 4]));
        p.prepend(2).unwrap().copy_from_slice(&[9, 9]);
        assert_eq!(p.data(), &[9, 9, 1, 2, 3, 4]);
        assert!(p.strip(3));
        assert_eq!(p.data(), &[2, 3, 4]);
        assert!(!p.strip(4));
        assert!(p.prepend(HEADROOM + 10).is_none());
        assert_eq!(p.data(), &[2, 3, 4]);
    }

    #[test]
    fn pool_never_grows() {
        let mut pool = Pool::new(2, 512);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        assert!(pool.alloc().is_none());
        pool.free(a);
        pool.free(b);
        pool.free(Packet::with_capacity(512));
        assert_eq!(pool.available(), 2);
        // A foreign-size buffer is not adopted.
        let mut small = Pool::new(1, 300);
        let x = small.alloc().unwrap();
        let mut other = Pool::new(0, 2000);
        other.free(x);
        assert_eq!(other.available(), 0);
    }

    #[test]
    fn oversize_load_is_refused() {
        let mut p = Packet::with_capacity(256);
        assert!(!p.load(&[0u8; 400]));
        assert!(p.is_empty());
    }
}
