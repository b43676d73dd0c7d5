//! The node's uplink NIC as a [`Port`] over AF_XDP.
//!
//! An XDP program (`dataplane/xdp/sluice_xdp.c`, built by `scripts/build-xdp` and
//! embedded in the library) steers to one AF_XDP socket per receive queue only
//! what Sluice's fast path owns: VXLAN and IPIP to the node's address, and in
//! native-routing mode IPv4 for local pod prefixes. Everything else, the node's
//! own ssh, kubelet, DNS, ARP and ping, goes on to the kernel untouched.
//!
//! Call order: [`XdpUplink::open`] (on a thread in the interface's namespace),
//! then [`Port::rx_burst`] / [`Port::tx_burst`] from one worker thread, sleeping
//! on [`Port::rx_fd`] when idle; [`XdpUplink::update_native_prefixes`] whenever
//! the node's pod prefixes change. Dropping the port detaches the program.
//!
//! Frames are copied between the UMEM and pool packets, once each way. Zero-copy,
//! with pool packets living in the UMEM, is later work.
//!
//! # Superframes
//! AF_XDP has no segmentation offload: every descriptor is one frame on the
//! wire. So the port takes the pipeline's TCP superframes itself
//! ([`Port::takes_superframes`]) and sends each the cheapest way it can:
//! - VXLAN through a send-only `AF_PACKET` socket on the same link
//!   ([`XdpConfig::superframe_socket`]), as UDP superframes whose pieces are
//!   its segments, TCP checksums computed here: one skb each for the NIC, or
//!   the kernel's GSO, to cut into datagrams; a 64 KiB superframe costs one
//!   gather write instead of some 45 descriptors, each copied into an skb in
//!   copy mode;
//! - otherwise cut into segments written straight into UMEM frames, with no
//!   pool buffer in between. IPIP, because no virtio-net GSO type describes
//!   it. Native TCP, because the kernel's segments of a TCP superframe keep a
//!   partial checksum wherever the link offloads it: a veth does, and an XDP
//!   program on the receiving end hands them to its socket as they are, with
//!   nothing to tell them from corrupt ones.
//!
//! Frames keep their order in a batch: whatever is queued for the one path is
//! sent before anything goes to the other.
//!
//! Crates: aya loads the ELF, creates the maps and runs the verifier (pure Rust,
//! maintained, MIT/Apache-2.0; libbpf-rs would need the C libbpf at build time):
//! see [`crate::sys::bpf`], which also attaches over rtnetlink. The rings are
//! hand-written over the kernel ABI in [`crate::sys::xsk`], which says why.

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};

use nix::errno::Errno;
use nix::libc;

use crate::buf::{Batch, Packet, Pool, MAX_BATCH};
use crate::port::gso::Tcp4Gso;
use crate::port::packet::{PacketSocket, UplinkFilter};
use crate::port::{Port, PortOffload};
use crate::sys::bpf::{
    detach_stale, program_name, AttachMode, SteerConfig, XdpAttachment, XdpNetlink, XdpProgram,
};
pub use crate::sys::bpf::{BpfError, MAX_PREFIXES, MAX_QUEUES, PROGRAM_NAME};
use crate::sys::valid_ifname;
pub use crate::sys::xsk::XskKernelStats;
use crate::sys::xsk::{XskConfig, XskError, XskSocket, FRAME_SIZE};

/// UMEM frames when not told otherwise: half receive, half send.
pub const DEFAULT_FRAMES: u32 = 4096;
/// Fewest and most UMEM frames (powers of two in between).
pub const MIN_FRAMES: u32 = 64;
pub const MAX_FRAMES: u32 = 65536;

/// Most TX kicks in one burst: copy mode sends 32 frames per `sendto`.
const MAX_KICKS: usize = MAX_BATCH / 32 + 2;

/// Where the program runs: in the driver (native), on the skb (generic, any
/// link), or native when the driver can and skb otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    #[default]
    Auto,
    Native,
    Skb,
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Skb => "skb",
        })
    }
}

/// What [`XdpUplink::open`] builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpConfig {
    /// The node's underlay address: tunnel packets to it are Sluice's.
    pub node_ip: Ipv4Addr,
    /// VXLAN's UDP destination port (4789); `None`: no VXLAN.
    pub vxlan_port: Option<u16>,
    /// Steer IPIP (IPv4 protocol 4) to the node.
    pub ipip: bool,
    /// Native routing: IPv4 to these local pod prefixes is Sluice's.
    pub native_prefixes: Vec<(Ipv4Addr, u8)>,
    /// The receive queue to bind.
    pub queue: u32,
    /// UMEM frames of 4 KiB: a power of two from [`MIN_FRAMES`] to [`MAX_FRAMES`].
    pub frames: u32,
    pub mode: XdpMode,
    /// Send VXLAN superframes as UDP superframes through a send-only
    /// `AF_PACKET` socket on the same link, for the NIC or the kernel to cut
    /// into datagrams. Off, without VXLAN, or where that socket cannot be
    /// opened, they are cut into UMEM frames.
    pub superframe_socket: bool,
}

impl XdpConfig {
    /// VXLAN on 4789, no IPIP, no native prefixes, queue 0, [`DEFAULT_FRAMES`],
    /// [`XdpMode::Auto`].
    pub fn new(node_ip: Ipv4Addr) -> XdpConfig {
        XdpConfig {
            node_ip,
            vxlan_port: Some(4789),
            ipip: false,
            native_prefixes: Vec::new(),
            queue: 0,
            frames: DEFAULT_FRAMES,
            mode: XdpMode::Auto,
            superframe_socket: true,
        }
    }
}

/// Why the AF_XDP uplink could not be set up or changed. The text is meant for
/// the daemon's log line when it falls back to another uplink.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("uplink setting {key} = {value} is invalid: expected {expected}")]
    InvalidConfig {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("uplink name {name:?} is not 1 to 15 bytes without '/', ':' or spaces")]
    InvalidName { name: String },
    #[error("no interface called {name} in this network namespace")]
    NotFound { name: String },
    #[error(
        "not permitted to {op} (AF_XDP needs CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF, or root): {source}"
    )]
    Permission {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("this kernel lacks AF_XDP sockets (CONFIG_XDP_SOCKETS): {source}")]
    NoAfXdp {
        #[source]
        source: io::Error,
    },
    /// Loading the program (verifier, permission) or changing its maps.
    #[error(transparent)]
    Program(#[from] BpfError),
    #[error("{name} already runs XDP program {other} in {mode} mode, which is not Sluice's; detach it first")]
    Busy {
        name: String,
        other: String,
        mode: String,
    },
    #[error("attaching XDP to {name} in {mode} mode: {source}")]
    Attach {
        name: String,
        mode: XdpMode,
        #[source]
        source: io::Error,
    },
    #[error("AF_XDP socket on {name} queue {queue}: {source}")]
    Socket {
        name: String,
        queue: u32,
        #[source]
        source: XskError,
    },
    #[error("{op} on {name}: {source}")]
    Netlink {
        op: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Counters of one AF_XDP uplink. Frames dropped here never reach the pipeline,
/// so they are counted here rather than as a [`crate::drop::DropReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpStats {
    /// Frames handed to the pipeline.
    pub rx_frames: u64,
    /// Frames longer than a pool buffer: dropped.
    pub rx_oversize: u64,
    /// Descriptors pointing outside the UMEM (a kernel bug if ever seen): dropped.
    pub rx_invalid: u64,
    /// Frames dropped because the pool ran dry in the middle of a burst.
    pub rx_no_buffer: u64,
    /// Frames queued on the TX ring.
    pub tx_frames: u64,
    /// Frames refused for want of a free UMEM frame or TX-ring slot.
    pub tx_refused: u64,
    /// Frames longer than a UMEM frame: refused.
    pub tx_oversize: u64,
    /// `sendto` calls that woke the kernel's transmit.
    pub tx_kicks: u64,
    /// Superframes cut into UMEM frames (each of those counted in `tx_frames`).
    pub tx_cut: u64,
    /// Superframes that could not be cut (bad headers): dropped.
    pub tx_uncuttable: u64,
    /// Superframes handed to the send-only socket, and of those, refused by it.
    pub tx_whole: u64,
    pub tx_whole_refused: u64,
    /// Frames the kernel dropped for this socket (RX ring full, no fill-ring
    /// frame, too long), as of the last [`Port::update_kernel_stats`].
    pub rx_kernel_drops: u64,
}

/// The uplink over AF_XDP: one receive queue of one interface.
pub struct XdpUplink {
    // Field order is drop order: the program is detached before the socket
    // closes, so no frame is steered to a socket that is going away.
    attachment: XdpAttachment,
    xsk: XskSocket,
    prog: XdpProgram,
    name: String,
    queue: u32,
    steer: SteerConfig,
    native_prefixes: Vec<(Ipv4Addr, u8)>,
    /// UMEM frames free to send from.
    tx_free: Vec<u64>,
    /// Scratch: frames going back to the fill ring, descriptors going to TX.
    recycle: Vec<u64>,
    tx_descs: Vec<(u64, u32)>,
    /// For each of `tx_descs`: whether it is the last frame of its packet.
    tx_ends: Vec<bool>,
    /// Packets sent so far in this burst.
    tx_sent: usize,
    /// Send-only socket for superframes that leave whole
    /// ([`XdpConfig::superframe_socket`]), and those waiting for it, in order.
    whole: Option<PacketSocket>,
    whole_batch: Batch,
    /// Why `whole` is missing though configured.
    whole_error: Option<String>,
    stats: XdpStats,
}

impl std::fmt::Debug for XdpUplink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpUplink")
            .field("name", &self.name)
            .field("queue", &self.queue)
            .field("attachment", &self.attachment)
            .field("prog", &self.prog)
            .field("xsk", &self.xsk)
            .field("native_prefixes", &self.native_prefixes)
            .field("whole", &self.whole)
            .field("stats", &self.stats)
            .finish()
    }
}

impl XdpUplink {
    /// Loads the program, attaches it to `ifname` in the calling thread's network
    /// namespace and binds an AF_XDP socket to `cfg.queue`. A Sluice program left
    /// there by an earlier process is removed first ([`XdpUplink::detach_stale`]);
    /// any other XDP program makes this fail with [`XdpError::Busy`].
    pub fn open(ifname: &str, cfg: &XdpConfig) -> Result<XdpUplink, XdpError> {
        check_config(ifname, cfg)?;
        let prefixes = check_prefixes(&cfg.native_prefixes)?;
        let ifindex = ifindex(ifname)?;
        let mut nl = open_netlink(ifname)?;
        detach_stale(&mut nl, ifindex)?;

        let mut prog = XdpProgram::load()?;
        for &(addr, len) in &prefixes {
            prog.add_prefix(addr, len)?;
        }
        let steer = SteerConfig {
            node_ip: cfg.node_ip,
            vxlan_port: cfg.vxlan_port,
            ipip: cfg.ipip,
            native: !prefixes.is_empty(),
        };
        prog.set_config(&steer)?;

        // Attach before binding the socket: the mode decides the bind flags. Until
        // the socket is in the map the program passes everything to the kernel.
        let attachment = attach(nl, ifname, ifindex, &prog, cfg.mode)?;
        let half = cfg.frames / 2;
        let mut bind_flags = libc::XDP_USE_NEED_WAKEUP;
        if attachment.mode() == AttachMode::Skb {
            // Generic XDP copies anyway; a zero-copy bind would only fail.
            bind_flags |= libc::XDP_COPY;
        }
        let xsk = XskSocket::open(&XskConfig {
            ifindex,
            queue: cfg.queue,
            frames: cfg.frames,
            fill_size: half,
            comp_size: half,
            rx_size: half,
            tx_size: half,
            bind_flags,
        })
        .map_err(|e| socket_err(ifname, cfg.queue, e))?;
        prog.set_socket(cfg.queue, xsk.fd())?;
        let (whole, whole_error) = if cfg.superframe_socket && cfg.vxlan_port.is_some() {
            match PacketSocket::open(ifname, &UplinkFilter::new(cfg.node_ip)) {
                Ok(s) if s.has_offload() => (Some(s), None),
                Ok(_) => (None, Some("the kernel lacks PACKET_VNET_HDR".to_owned())),
                Err(e) => (None, Some(e.to_string())),
            }
        } else {
            (None, None)
        };

        // Frames [0, half) went to the fill ring; the rest are for sending.
        let tx_free = (half..cfg.frames)
            .rev()
            .map(|i| u64::from(i) * u64::from(FRAME_SIZE))
            .collect();
        Ok(XdpUplink {
            attachment,
            xsk,
            prog,
            name: ifname.to_owned(),
            queue: cfg.queue,
            steer,
            native_prefixes: prefixes,
            tx_free,
            recycle: Vec::with_capacity(MAX_BATCH),
            tx_descs: Vec::with_capacity(MAX_BATCH),
            tx_ends: Vec::with_capacity(MAX_BATCH),
            tx_sent: 0,
            whole,
            whole_batch: Batch::new(),
            whole_error,
            stats: XdpStats::default(),
        })
    }

    /// Removes every Sluice XDP program (by name, [`PROGRAM_NAME`]) attached to
    /// `ifname` in the calling thread's namespace, so a daemon that died never
    /// leaves one behind. Programs that are not Sluice's stay. Returns how many
    /// were removed.
    pub fn detach_stale(ifname: &str) -> Result<usize, XdpError> {
        if !valid_ifname(ifname) {
            return Err(XdpError::InvalidName {
                name: ifname.to_owned(),
            });
        }
        let ifindex = ifindex(ifname)?;
        let mut nl = open_netlink(ifname)?;
        Ok(detach_stale(&mut nl, ifindex)?)
    }

    /// Replaces the local pod prefixes steered in native-routing mode; an empty
    /// list stops steering by destination. New prefixes are in the program's map
    /// before old ones leave, so a prefix in both lists never misses a packet.
    pub fn update_native_prefixes(&mut self, prefixes: &[(Ipv4Addr, u8)]) -> Result<(), XdpError> {
        let new = check_prefixes(prefixes)?;
        let old: BTreeSet<_> = self.native_prefixes.iter().copied().collect();
        let wanted: BTreeSet<_> = new.iter().copied().collect();
        for &(addr, len) in wanted.difference(&old) {
            self.prog.add_prefix(addr, len)?;
        }
        let steer = SteerConfig {
            native: !new.is_empty(),
            ..self.steer
        };
        self.prog.set_config(&steer)?;
        self.steer = steer;
        for &(addr, len) in old.difference(&wanted) {
            self.prog.remove_prefix(addr, len)?;
        }
        self.native_prefixes = new;
        Ok(())
    }

    /// The local pod prefixes steered now, sorted.
    pub fn native_prefixes(&self) -> &[(Ipv4Addr, u8)] {
        &self.native_prefixes
    }

    /// The mode the program was attached in: [`XdpMode::Native`] or [`XdpMode::Skb`].
    pub fn mode(&self) -> XdpMode {
        match self.attachment.mode() {
            AttachMode::Skb => XdpMode::Skb,
            AttachMode::Driver | AttachMode::Hw => XdpMode::Native,
        }
    }

    pub fn ifindex(&self) -> u32 {
        self.attachment.ifindex()
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The program's id in the kernel (as `ip link` and `bpftool prog` show it).
    pub fn program_id(&self) -> u32 {
        self.prog.id()
    }

    /// Whether the driver moves frames without copying them into the UMEM.
    pub fn is_zerocopy(&self) -> bool {
        self.xsk.is_zerocopy()
    }

    pub fn stats(&self) -> &XdpStats {
        &self.stats
    }

    /// Whether VXLAN superframes go through the send-only socket
    /// ([`XdpConfig::superframe_socket`]); if configured but not, why.
    pub fn superframe_socket(&self) -> Result<bool, &str> {
        match (&self.whole, &self.whole_error) {
            (_, Some(e)) => Err(e),
            (w, None) => Ok(w.is_some()),
        }
    }

    /// The kernel's counters for the socket (drops for a full RX ring or an empty
    /// fill ring, invalid descriptors).
    pub fn kernel_stats(&self) -> io::Result<XskKernelStats> {
        self.xsk.kernel_stats()
    }

    /// Copies one frame into a free UMEM frame and queues it for the TX ring.
    fn queue_frame(&mut self, p: &Packet) -> io::Result<()> {
        let data = p.data();
        if data.len() > FRAME_SIZE as usize {
            self.stats.tx_oversize += 1;
            return Ok(());
        }
        let addr = match self.free_frame() {
            Ok(Some(addr)) => addr,
            r => {
                self.stats.tx_refused += 1;
                return r.map(|_| ());
            }
        };
        if self.xsk.write_frame(addr, data) {
            self.tx_descs.push((addr, data.len() as u32));
            self.tx_ends.push(true);
        } else {
            self.tx_free.push(addr);
            self.stats.tx_refused += 1;
        }
        Ok(())
    }

    /// Cuts superframe `p` into segments written straight into UMEM frames and
    /// queues them, flushing the TX ring as it fills. Segments beyond the free
    /// frames are refused, and the packet counts as sent only if all went.
    fn cut_superframe(&mut self, p: &Packet) -> io::Result<()> {
        let frame = p.data();
        let Ok(g) = Tcp4Gso::parse_at(frame, usize::from(p.meta.gso_ip), p.meta.gso_size) else {
            self.stats.tx_uncuttable += 1;
            return Ok(());
        };
        let count = g.count();
        if g.max_segment_len() > FRAME_SIZE as usize {
            self.stats.tx_oversize += count as u64;
            return Ok(());
        }
        self.stats.tx_cut += 1;
        for i in 0..count {
            let addr = match self.free_frame() {
                Ok(Some(addr)) => addr,
                r => {
                    self.stats.tx_refused += (count - i) as u64;
                    return r.map(|_| ());
                }
            };
            match self
                .xsk
                .write_frame_with(addr, |f| g.write_segment(frame, i, f))
            {
                Some(Ok(len)) => {
                    self.tx_descs.push((addr, len as u32));
                    self.tx_ends.push(i + 1 == count);
                }
                // Checked above: every segment fits a frame of this UMEM.
                _ => {
                    self.tx_free.push(addr);
                    self.stats.tx_refused += (count - i) as u64;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// A free UMEM frame for one more descriptor, flushing the TX ring first
    /// when the queue is full or no frame is free (sending frees some); `None`
    /// if there is none even then.
    fn free_frame(&mut self) -> io::Result<Option<u64>> {
        if self.tx_descs.len() == MAX_BATCH || self.tx_free.is_empty() {
            self.flush_ring()?;
        }
        Ok(self.tx_free.pop())
    }

    /// Puts the queued descriptors on the TX ring, wakes the kernel's transmit
    /// and takes back what it finished; those that do not fit are refused.
    fn flush_ring(&mut self) -> io::Result<()> {
        if self.tx_descs.is_empty() {
            return Ok(());
        }
        let n = self.xsk.tx_submit(&self.tx_descs) as usize;
        for &(addr, _) in &self.tx_descs[n..] {
            self.tx_free.push(addr);
        }
        self.stats.tx_refused += (self.tx_descs.len() - n) as u64;
        self.stats.tx_frames += n as u64;
        self.tx_sent += self.tx_ends[..n].iter().filter(|&&end| end).count();
        self.tx_descs.clear();
        self.tx_ends.clear();
        // Copy mode sends at most 32 frames per kick: kick until the ring drains.
        for _ in 0..MAX_KICKS {
            if self.xsk.tx_pending() == 0 || !self.xsk.tx_needs_wakeup() {
                break;
            }
            self.xsk.kick_tx()?;
            self.stats.tx_kicks += 1;
        }
        self.reclaim();
        Ok(())
    }

    /// Sends the superframes waiting for the send-only socket; an error is
    /// the socket's (the link gone), with none of them sent.
    fn flush_whole(&mut self, pool: &mut Pool) -> io::Result<()> {
        if self.whole_batch.is_empty() {
            return Ok(());
        }
        let n = self.whole_batch.len();
        let sent = match self.whole.as_mut() {
            Some(w) => w.tx_burst(pool, &mut self.whole_batch),
            None => Ok(0),
        };
        self.whole_batch.clear_into(pool);
        let k = *sent.as_ref().unwrap_or(&0);
        self.stats.tx_whole += n as u64;
        self.stats.tx_whole_refused += (n - k) as u64;
        self.tx_sent += k;
        sent.map(|_| ())
    }

    /// Takes sent frames back from the completion ring.
    fn reclaim(&mut self) {
        let mut done = [0u64; MAX_BATCH];
        loop {
            let n = self.xsk.complete(&mut done);
            for &addr in &done[..n] {
                self.tx_free.push(addr - addr % u64::from(FRAME_SIZE));
            }
            if n < done.len() {
                break;
            }
        }
    }
}

impl Port for XdpUplink {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, pool: &mut Pool, batch: &mut Batch, max: usize) -> io::Result<usize> {
        let room = max
            .min(MAX_BATCH.saturating_sub(batch.len()))
            .min(pool.available());
        // Pool empty: the frames wait in the RX ring until buffers return.
        let n = self.xsk.rx_available(room as u32);
        let mut got = 0;
        self.recycle.clear();
        for i in 0..n {
            let (addr, len) = self.xsk.rx_peek(i);
            self.recycle.push(addr - addr % u64::from(FRAME_SIZE));
            let Some(mut p) = pool.alloc() else {
                // Not while `room` counts the pool's buffers; kept for safety.
                self.stats.rx_no_buffer += 1;
                continue;
            };
            let area = p.rx_area();
            if len as usize > area.len() {
                self.stats.rx_oversize += 1;
                pool.free(p);
                continue;
            }
            if !self.xsk.read_frame(addr, len, area) {
                self.stats.rx_invalid += 1;
                pool.free(p);
                continue;
            }
            p.set_received(len as usize);
            batch.push(p);
            got += 1;
        }
        self.xsk.rx_release(n);
        // The fill ring has room for every receive frame, so all of them fit.
        self.xsk.fill(&self.recycle);
        self.stats.rx_frames += got as u64;
        if self.xsk.fill_needs_wakeup() {
            self.xsk.wake_rx()?;
        }
        Ok(got)
    }

    fn tx_burst(&mut self, pool: &mut Pool, batch: &mut Batch) -> io::Result<usize> {
        self.reclaim();
        self.tx_sent = 0;
        let mut failed = None;
        for p in batch.drain() {
            let whole = p.meta.is_superframe()
                && self
                    .whole
                    .as_ref()
                    .is_some_and(|w| w.takes_superframes() && w.sends_udp_superframes(&p));
            // The batch's order holds: what waits for the other path goes first.
            let flushed = if whole {
                self.flush_ring()
            } else {
                self.flush_whole(pool)
            };
            let r = if whole {
                self.whole_batch.push(p);
                if self.whole_batch.is_full() {
                    self.flush_whole(pool)
                } else {
                    Ok(())
                }
            } else {
                let r = if p.meta.is_superframe() {
                    self.cut_superframe(&p)
                } else {
                    self.queue_frame(&p)
                };
                pool.free(p);
                r
            };
            for e in [flushed, r].into_iter().filter_map(Result::err) {
                failed.get_or_insert(e);
            }
        }
        let rest = [self.flush_whole(pool), self.flush_ring()];
        for e in rest.into_iter().filter_map(Result::err) {
            failed.get_or_insert(e);
        }
        match failed {
            Some(e) if self.tx_sent == 0 => Err(e),
            _ => Ok(self.tx_sent),
        }
    }

    fn takes_superframes(&self) -> bool {
        true
    }

    fn offload_stats(&self) -> PortOffload {
        let s = &self.stats;
        let mut o = PortOffload {
            rx_dropped: s.rx_oversize + s.rx_invalid + s.rx_no_buffer,
            rx_kernel_drops: s.rx_kernel_drops,
            ..PortOffload::default()
        };
        if let Some(w) = &self.whole {
            o.tx_gro_superframes = w.stats().tx_gso;
            o.tx_gro_segments = w.stats().tx_gso_segments;
        }
        o
    }

    fn update_kernel_stats(&mut self) {
        // The kernel's counters only grow; a closed socket keeps the last ones.
        if let Ok(k) = self.xsk.kernel_stats() {
            // A frame the fill ring had no room for counts in both
            // `rx_dropped` and `rx_fill_ring_empty_descs`: not added twice.
            self.stats.rx_kernel_drops = k.rx_dropped + k.rx_ring_full;
        }
    }

    fn rx_fd(&self) -> Option<RawFd> {
        Some(self.xsk.fd().as_raw_fd())
    }
}

fn check_config(ifname: &str, cfg: &XdpConfig) -> Result<(), XdpError> {
    if !valid_ifname(ifname) {
        return Err(XdpError::InvalidName {
            name: ifname.to_owned(),
        });
    }
    let ip = cfg.node_ip;
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
        return Err(XdpError::InvalidConfig {
            key: "node_ip",
            value: ip.to_string(),
            expected: "the node's unicast underlay address",
        });
    }
    if cfg.vxlan_port == Some(0) {
        return Err(XdpError::InvalidConfig {
            key: "vxlan_port",
            value: "0".into(),
            expected: "a UDP port from 1 to 65535 (usually 4789)",
        });
    }
    if cfg.queue >= MAX_QUEUES {
        return Err(XdpError::InvalidConfig {
            key: "queue",
            value: cfg.queue.to_string(),
            expected: "a receive queue below 64",
        });
    }
    if !cfg.frames.is_power_of_two() || !(MIN_FRAMES..=MAX_FRAMES).contains(&cfg.frames) {
        return Err(XdpError::InvalidConfig {
            key: "frames",
            value: cfg.frames.to_string(),
            expected: "a power of two from 64 to 65536",
        });
    }
    Ok(())
}

/// Checks pod prefixes (length at most 32, no host bits, at most
/// [`MAX_PREFIXES`]) and returns them sorted without duplicates.
fn check_prefixes(prefixes: &[(Ipv4Addr, u8)]) -> Result<Vec<(Ipv4Addr, u8)>, XdpError> {
    let mut out = Vec::with_capacity(prefixes.len());
    for &(addr, len) in prefixes {
        let bad = |expected| XdpError::InvalidConfig {
            key: "native_prefixes",
            value: format!("{addr}/{len}"),
            expected,
        };
        if len > 32 {
            return Err(bad("a prefix length from 0 to 32"));
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        if u32::from(addr) & !mask != 0 {
            return Err(bad("a network address with no host bits set"));
        }
        out.push((addr, len));
    }
    out.sort_unstable();
    out.dedup();
    if out.len() > MAX_PREFIXES {
        return Err(XdpError::InvalidConfig {
            key: "native_prefixes",
            value: format!("{} prefixes", out.len()),
            expected: "at most 256 prefixes",
        });
    }
    Ok(out)
}

/// Attaches in `mode`; `Auto` tries native first and falls back to skb.
fn attach(
    nl: XdpNetlink,
    ifname: &str,
    ifindex: u32,
    prog: &XdpProgram,
    mode: XdpMode,
) -> Result<XdpAttachment, XdpError> {
    let tries: &[(AttachMode, XdpMode)] = match mode {
        XdpMode::Native => &[(AttachMode::Driver, XdpMode::Native)],
        XdpMode::Skb => &[(AttachMode::Skb, XdpMode::Skb)],
        XdpMode::Auto => &[
            (AttachMode::Driver, XdpMode::Native),
            (AttachMode::Skb, XdpMode::Skb),
        ],
    };
    let mut nl = nl;
    let mut last = None;
    for &(am, xm) in tries {
        match XdpAttachment::attach(nl, ifindex, prog.fd(), am, ifname) {
            Ok(a) => return Ok(a),
            Err((back, e)) => {
                nl = back;
                match e.raw_os_error() {
                    Some(libc::EBUSY | libc::EEXIST) => {
                        return Err(busy(&mut nl, ifname, ifindex).unwrap_or(XdpError::Attach {
                            name: ifname.to_owned(),
                            mode: xm,
                            source: e,
                        }))
                    }
                    Some(libc::EPERM | libc::EACCES) => {
                        return Err(XdpError::Permission {
                            op: "attach an XDP program",
                            source: e,
                        })
                    }
                    _ => last = Some((xm, e)),
                }
            }
        }
    }
    let (mode, source) = last.unwrap_or((mode, io::Error::from_raw_os_error(libc::EINVAL)));
    Err(XdpError::Attach {
        name: ifname.to_owned(),
        mode,
        source,
    })
}

/// What is in the way when attaching fails as busy.
fn busy(nl: &mut XdpNetlink, ifname: &str, ifindex: u32) -> Option<XdpError> {
    let a = nl.attached(ifindex).ok()?.into_iter().next()?;
    let name = program_name(a.prog_id).unwrap_or_else(|| "?".into());
    Some(XdpError::Busy {
        name: ifname.to_owned(),
        other: format!("id {} ({name})", a.prog_id),
        mode: a.mode.to_string(),
    })
}

fn ifindex(ifname: &str) -> Result<u32, XdpError> {
    match nix::net::if_::if_nametoindex(ifname) {
        Ok(i) => Ok(i),
        Err(Errno::ENODEV) => Err(XdpError::NotFound {
            name: ifname.to_owned(),
        }),
        Err(e) => Err(XdpError::Netlink {
            op: "look up interface",
            name: ifname.to_owned(),
            source: e.into(),
        }),
    }
}

fn open_netlink(ifname: &str) -> Result<XdpNetlink, XdpError> {
    XdpNetlink::open().map_err(|source| XdpError::Netlink {
        op: "open rtnetlink",
        name: ifname.to_owned(),
        source,
    })
}

fn socket_err(ifname: &str, queue: u32, e: XskError) -> XdpError {
    match e.errno() {
        Some(libc::EAFNOSUPPORT) if e.op == "socket(AF_XDP)" => {
            XdpError::NoAfXdp { source: e.source }
        }
        Some(libc::EPERM | libc::EACCES) => XdpError::Permission {
            op: e.op,
            source: e.source,
        },
        _ => XdpError::Socket {
            name: ifname.to_owned(),
            queue,
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> XdpConfig {
        XdpConfig::new(Ipv4Addr::new(198, 18, 0, 1))
    }

    #[test]
    fn config_is_checked() {
        let bad = |c: XdpConfig, key: &str| match check_config("eth0", &c) {
            Err(XdpError::InvalidConfig { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{key}: {other:?}"),
        };
        assert!(check_config("eth0", &cfg()).is_ok());
        let ip = |a, b, c, d| XdpConfig {
            node_ip: Ipv4Addr::new(a, b, c, d),
            ..cfg()
        };
        bad(ip(0, 0, 0, 0), "node_ip");
        bad(ip(224, 0, 0, 1), "node_ip");
        bad(ip(127, 0, 0, 1), "node_ip");
        bad(
            XdpConfig {
                vxlan_port: Some(0),
                ..cfg()
            },
            "vxlan_port",
        );
        bad(XdpConfig { queue: 64, ..cfg() }, "queue");
        for frames in [0, 32, 100, 1 << 17] {
            bad(XdpConfig { frames, ..cfg() }, "frames");
        }
        assert!(matches!(
            check_config("a/b", &cfg()),
            Err(XdpError::InvalidName { .. })
        ));
        let e = check_config(
            "eth0",
            &XdpConfig {
                frames: 100,
                ..cfg()
            },
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "uplink setting frames = 100 is invalid: expected a power of two from 64 to 65536"
        );
    }

    #[test]
    fn prefixes_are_checked_and_sorted() {
        let p = |a: [u8; 4], l| (Ipv4Addr::from(a), l);
        let got = check_prefixes(&[
            p([198, 19, 2, 0], 24),
            p([198, 19, 1, 0], 24),
            p([198, 19, 2, 0], 24),
        ])
        .unwrap();
        assert_eq!(got, [p([198, 19, 1, 0], 24), p([198, 19, 2, 0], 24)]);
        assert!(check_prefixes(&[p([0, 0, 0, 0], 0), p([198, 19, 1, 7], 32)]).is_ok());
        let e = check_prefixes(&[p([198, 19, 1, 1], 24)]).unwrap_err();
        assert!(e.to_string().contains("198.19.1.1/24"), "{e}");
        assert!(check_prefixes(&[p([198, 19, 1, 0], 33)]).is_err());
        let many: Vec<_> = (0..=MAX_PREFIXES as u32)
            .map(|i| (Ipv4Addr::from(0xc613_0000 + (i << 8)), 24))
            .collect();
        assert!(check_prefixes(&many).is_err());
        assert!(check_prefixes(&many[1..]).is_ok());
    }

    #[test]
    fn missing_interface_is_named() {
        match XdpUplink::open("sluicenone0", &cfg()) {
            Err(XdpError::NotFound { name }) => assert_eq!(name, "sluicenone0"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            XdpUplink::detach_stale("sluicenone0"),
            Err(XdpError::NotFound { .. })
        ));
    }
}
