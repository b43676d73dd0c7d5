//! The uplink as a kernel socket: an `AF_PACKET` raw socket bound to the node's
//! uplink: the portable one, and the one `auto` takes where AF_XDP is not
//! available or would only copy (it carries superframes whole).
//!
//! # What it takes, and what it leaves to the kernel
//! An `AF_PACKET` socket sees a *copy* of every frame; the kernel's own stack
//! still gets the original. So [`PacketSocket`] carries a classic BPF filter,
//! built from an [`UplinkFilter`], that keeps only Sluice's traffic and drops
//! everything else in the kernel before it is copied:
//! - VXLAN: IPv4 UDP to the node address and the VXLAN port, first fragments
//!   only (a later fragment has no UDP header to match);
//! - IPIP: IPv4 protocol 4 to the node address, first fragments only;
//! - native: IPv4 to an address inside one of `native_prefixes`.
//!
//! and only frames addressed to this host (`PACKET_HOST`: no broadcasts, none
//! seen only in promiscuous mode). The node's own traffic (ssh, kubelet, DNS,
//! ping) never passes the filter and is untouched. Frames the socket sends are
//! not read back (`PACKET_IGNORE_OUTGOING`).
//!
//! Because the kernel gets the original, a tunnel packet with no socket to
//! take it would make the node answer with ICMP port or protocol unreachable.
//! [`KernelSinks`] holds such sockets, each with a filter that drops
//! everything, for as long as the daemon runs.
//!
//! # Native mode: taking pod prefixes needs the kernel's copy dropped
//! In native mode, packets for this node's pods reach the kernel too, and the
//! node routes the pod CIDRs to its host port, so the kernel would forward
//! each one there as well: delivered twice. `native_prefixes` is therefore
//! empty by default (the socket then only sends pod traffic, and the kernel
//! forwards what arrives to the host port). sluiced sets them together with
//! an nftables rule that drops the kernel's copy ahead of NAT (see
//! `NativeBypass` in the control crate), which spares the receiving node the
//! kernel's forwarding and the host port's per-frame reads.
//!
//! # Superframes
//! For VXLAN and native routing the socket puts a virtio-net header in front of
//! every frame (`PACKET_VNET_HDR`). Sending, a run of VXLAN datagrams with the
//! same outer headers goes as one UDP superframe (`GSO_UDP_L4`), a run of TCP
//! segments of one flow as one TCP superframe: one skb through the kernel and
//! the link instead of one per frame; the kernel (or the NIC) cuts it up again,
//! so kernel peers see ordinary packets. Receiving, a superframe runs on into a
//! scratch buffer and is cut back into frames; a partial checksum left by a
//! sender on the same host is completed.
//!
//! # Limits
//! - One `recvmmsg(2)` per received burst (a few more while a burst grows: a
//!   call offers about twice the buffers the last burst needed, so a lone
//!   frame does not cost 64 of them) and one `sendmmsg(2)` per sent batch;
//!   every frame is still copied once each way. (The mmap rings of
//!   `PACKET_RX_RING`/`PACKET_TX_RING` would save the copy; not done yet.)
//! - Frames longer than a pool buffer (that are not superframes) are counted in
//!   [`PacketStats::rx_truncated`] and dropped.
//! - IPIP goes without the virtio-net header: superframes the uplink's GRO makes
//!   of tunnelled TCP are dropped as too long; turn GRO off on the uplink or use
//!   buffers of the largest size class.
//! - Without the header (IPIP), a veth peer in another namespace may hand over
//!   a UDP or TCP checksum that is still partial.
//! - Untagged Ethernet uplinks only.
//!
//! The kernel calls themselves are in [`crate::sys::packet`].

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{self as nsock, AddressFamily, SockFlag, SockType, SockaddrIn};

use std::collections::VecDeque;

use crate::buf::{Batch, Meta, Packet, Pool, HEADROOM, LARGE_BUF_SIZE, MAX_BATCH};
use crate::port::gro::{
    join_tcp, join_udp, udp_superframe_head, Joined, Tcp4Seg, Udp4Seg, Udp4Split, MAX_RUN,
    UDP_PAYLOAD_AT,
};
use crate::port::gso::{mark_superframe, superframe_vnet_hdr, Tcp4Gso, ETH_LEN};
use crate::port::{Port, PortOffload};
use crate::sys::bpf_classic::{self as bpf, Insn};
use crate::sys::packet::{self as sys, MmsgV, VNET_HDR_LEN};
use crate::sys::tun::VnetHdr;
use crate::sys::valid_ifname;
use crate::wire::{vxlan, MacAddr};

/// Where the filter looks in a frame: Ethernet header, then IPv4.
mod at {
    use crate::wire::eth;

    pub const ETHERTYPE: u32 = 12;
    pub const IP: u32 = eth::HEADER_LEN as u32;
    pub const IP_FLAGS_FRAG: u32 = IP + 6;
    pub const IP_PROTOCOL: u32 = IP + 9;
    pub const IP_DST: u32 = IP + 16;
    /// The UDP destination port, counted from the end of the IPv4 header.
    pub const UDP_DST_PORT: u32 = IP + 2;
}

const ETHERTYPE_IPV4: u32 = 0x0800;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_UDP: u32 = 17;
/// The fragment offset bits of the IPv4 flags word: non-zero in every fragment
/// but the first.
const FRAG_OFFSET_MASK: u32 = 0x1fff;
const ARPHRD_ETHER: u16 = 1;

/// The most native prefixes one filter holds: 4 instructions each, within the
/// kernel's 4096.
pub const MAX_NATIVE_PREFIXES: usize = 1000;

/// Socket buffer size asked for each way: room for a few full bursts, so a
/// burst does not overflow the default (about 200 KiB).
const SOCKET_BUF_BYTES: libc::c_int = 4 << 20;

/// What went wrong opening the uplink socket or the sinks, and with which value.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("uplink name {name:?} is not 1 to 15 bytes without '/', ':' or spaces")]
    InvalidName { name: String },
    #[error("no interface called {name} in this network namespace")]
    NotFound { name: String },
    #[error("uplink {name} has link type {hatype}; expected Ethernet (1)")]
    NotEthernet { name: String, hatype: u16 },
    #[error("uplink filter {field} is {value}; expected {expected}")]
    InvalidFilter {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("native prefix {prefix} holds the node address {node_ip}; expected pod prefixes only")]
    PrefixHoldsNode { prefix: String, node_ip: Ipv4Addr },
    #[error("{count} native prefixes; expected at most {max}")]
    TooManyPrefixes { count: usize, max: usize },
    #[error("{op} for {target}: {source}")]
    Io {
        op: &'static str,
        target: String,
        #[source]
        source: io::Error,
    },
}

/// Which of the uplink's IPv4 traffic is Sluice's. [`UplinkFilter::program`]
/// turns it into the socket filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkFilter {
    /// The node's underlay address: tunnel packets are addressed to it.
    pub node_ip: Ipv4Addr,
    /// Take VXLAN on this UDP port (normally [`vxlan::DEFAULT_PORT`]).
    pub vxlan_port: Option<u16>,
    /// Take IPIP.
    pub ipip: bool,
    /// Take IPv4 to these prefixes (native mode); see the module doc for why this
    /// is normally empty.
    pub native_prefixes: Vec<(Ipv4Addr, u8)>,
}

impl UplinkFilter {
    /// A filter that takes nothing: the uplink socket only sends.
    pub fn new(node_ip: Ipv4Addr) -> UplinkFilter {
        UplinkFilter {
            node_ip,
            vxlan_port: None,
            ipip: false,
            native_prefixes: Vec::new(),
        }
    }

    /// VXLAN to `node_ip` on the standard port.
    pub fn vxlan(node_ip: Ipv4Addr) -> UplinkFilter {
        UplinkFilter {
            vxlan_port: Some(vxlan::DEFAULT_PORT),
            ..UplinkFilter::new(node_ip)
        }
    }

    /// IPIP to `node_ip`.
    pub fn ipip(node_ip: Ipv4Addr) -> UplinkFilter {
        UplinkFilter {
            ipip: true,
            ..UplinkFilter::new(node_ip)
        }
    }

    /// Whether the filter drops every frame.
    pub fn takes_nothing(&self) -> bool {
        self.vxlan_port.is_none() && !self.ipip && self.native_prefixes.is_empty()
    }

    /// Checks the values: a unicast node address, a non-zero port, and native
    /// prefixes that are proper networks, leave out the node address and fit in
    /// one program.
    pub fn validate(&self) -> Result<(), PacketError> {
        check_node_ip(self.node_ip)?;
        if self.vxlan_port == Some(0) {
            return Err(PacketError::InvalidFilter {
                field: "vxlan_port",
                value: "0".into(),
                expected: "a UDP port from 1 to 65535",
            });
        }
        if self.native_prefixes.len() > MAX_NATIVE_PREFIXES {
            return Err(PacketError::TooManyPrefixes {
                count: self.native_prefixes.len(),
                max: MAX_NATIVE_PREFIXES,
            });
        }
        for &(addr, len) in &self.native_prefixes {
            let prefix = format!("{addr}/{len}");
            if len > 32 {
                return Err(PacketError::InvalidFilter {
                    field: "native_prefixes",
                    value: prefix,
                    expected: "a prefix length from 0 to 32",
                });
            }
            let mask = prefix_mask(len);
            if u32::from(addr) & !mask != 0 {
                return Err(PacketError::InvalidFilter {
                    field: "native_prefixes",
                    value: prefix,
                    expected: "a network address, with no bits set past the prefix length",
                });
            }
            if u32::from(self.node_ip) & mask == u32::from(addr) {
                return Err(PacketError::PrefixHoldsNode {
                    prefix,
                    node_ip: self.node_ip,
                });
            }
        }
        Ok(())
    }

    /// The classic BPF program that keeps this filter's frames whole and drops
    /// every other, after [`UplinkFilter::validate`]. Every jump is forward and
    /// short, and every path ends in a return.
    pub fn program(&self) -> Result<Vec<Insn>, PacketError> {
        use bpf::{ABS, ALU, AND, B, H, IND, JEQ, JMP, JSET, K, LD, LDX, MISC, MSH, TAX, TXA, W};
        self.validate()?;
        let mut p = vec![
            // Frames for this host only, IPv4 only.
            Insn::stmt(LD | W | ABS, bpf::ANC_OFF + bpf::ANC_PKTTYPE),
            Insn::jump(JMP | JEQ | K, bpf::PACKET_HOST, 1, 0),
            Insn::ret(bpf::DROP),
            Insn::stmt(LD | H | ABS, at::ETHERTYPE),
            Insn::jump(JMP | JEQ | K, ETHERTYPE_IPV4, 1, 0),
            Insn::ret(bpf::DROP),
        ];
        if self.vxlan_port.is_some() || self.ipip {
            // Reached only for packets to the node address; every path returns.
            let mut tunnel = vec![
                Insn::stmt(LD | H | ABS, at::IP_FLAGS_FRAG),
                Insn::jump(JMP | JSET | K, FRAG_OFFSET_MASK, 0, 1),
                Insn::ret(bpf::DROP),
                Insn::stmt(LD | B | ABS, at::IP_PROTOCOL),
            ];
            if self.ipip {
                tunnel.push(Insn::jump(JMP | JEQ | K, u32::from(IPPROTO_IPIP), 0, 1));
                tunnel.push(Insn::ret(bpf::ACCEPT));
            }
            if let Some(port) = self.vxlan_port {
                tunnel.extend([
                    Insn::jump(JMP | JEQ | K, IPPROTO_UDP, 0, 4),
                    Insn::stmt(LDX | B | MSH, at::IP),
                    Insn::stmt(LD | H | IND, at::UDP_DST_PORT),
                    Insn::jump(JMP | JEQ | K, u32::from(port), 0, 1),
                    Insn::ret(bpf::ACCEPT),
                ]);
            }
            tunnel.push(Insn::ret(bpf::DROP));
            // At most 13 instructions: the skip always fits a jump offset.
            let skip = u8::try_from(tunnel.len()).unwrap_or(u8::MAX);
            p.push(Insn::stmt(LD | W | ABS, at::IP_DST));
            p.push(Insn::jump(JMP | JEQ | K, u32::from(self.node_ip), 0, skip));
            p.extend(tunnel);
        }
        if !self.native_prefixes.is_empty() {
            p.push(Insn::stmt(LD | W | ABS, at::IP_DST));
            p.push(Insn::stmt(MISC | TAX, 0));
            for &(addr, len) in &self.native_prefixes {
                p.extend([
                    Insn::stmt(MISC | TXA, 0),
                    Insn::stmt(ALU | AND | K, prefix_mask(len)),
                    Insn::jump(JMP | JEQ | K, u32::from(addr), 0, 1),
                    Insn::ret(bpf::ACCEPT),
                ]);
            }
        }
        p.push(Insn::ret(bpf::DROP));
        Ok(p)
    }
}

fn prefix_mask(len: u8) -> u32 {
    match len {
        0 => 0,
        1..=32 => u32::MAX << (32 - u32::from(len)),
        _ => u32::MAX,
    }
}

fn check_node_ip(node_ip: Ipv4Addr) -> Result<(), PacketError> {
    if node_ip.is_unspecified() || node_ip.is_broadcast() || node_ip.is_multicast() {
        return Err(PacketError::InvalidFilter {
            field: "node_ip",
            value: node_ip.to_string(),
            expected: "a unicast IPv4 address",
        });
    }
    Ok(())
}

/// Counters of one uplink socket. Frames dropped here never reach the
/// pipeline, so they are counted here rather than as a
/// [`crate::drop::DropReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketStats {
    /// Frames handed to the pipeline.
    pub rx_frames: u64,
    /// Frames longer than a pool buffer: dropped.
    pub rx_truncated: u64,
    /// `recvmmsg` calls that returned frames or found none.
    pub rx_calls: u64,
    /// Frames the kernel dropped because the socket's queue was full, as of the
    /// last [`PacketSocket::update_kernel_drops`].
    pub rx_kernel_drops: u64,
    /// Frames the kernel took.
    pub tx_frames: u64,
    /// Frames refused because the send buffer or device queue was full or the
    /// link down.
    pub tx_refused: u64,
    /// Frames the kernel rejected as malformed (shorter than an Ethernet header,
    /// longer than the MTU).
    pub tx_errors: u64,
    /// `sendmmsg` calls made.
    pub tx_calls: u64,
    /// Superframes received (the sender or the link joined datagrams or
    /// segments) and cut back into frames.
    pub rx_gso: u64,
    /// Frames cut from them (included in `rx_frames`).
    pub rx_gso_segments: u64,
    /// Of them, UDP superframes cut into datagrams (all but VXLAN pieces of
    /// one TCP flow, which become one packet carrying a TCP superframe).
    pub rx_gso_cut: u64,
    /// Superframes that could not be cut (bad headers or sizes, a GSO type
    /// other than UDP or TCP over IPv4): dropped.
    pub rx_gso_bad: u64,
    /// Frames whose partial checksum (left by a sender on the same host) was
    /// completed.
    pub rx_csum_completed: u64,
    /// Superframes sent: runs of datagrams or TCP segments joined into one.
    pub tx_gso: u64,
    /// Frames in them (included in `tx_frames`).
    pub tx_gso_segments: u64,
}

/// The uplink as an `AF_PACKET` socket: a [`Port`] that receives the frames its
/// [`UplinkFilter`] takes and sends whole frames as given (outer headers and
/// MACs already in place).
pub struct PacketSocket {
    fd: OwnedFd,
    name: String,
    ifindex: u32,
    mac: MacAddr,
    filter: UplinkFilter,
    mmsg: MmsgV,
    /// The virtio-net headers of the messages being sent (none without `offload`).
    tx_hdrs: Vec<[u8; VNET_HDR_LEN]>,
    /// The messages being sent, each a range of `tx_pieces`.
    tx_msgs: Vec<TxMsg>,
    tx_pieces: Vec<Piece>,
    /// Segment headers written for superframes being sent.
    tx_scratch: Vec<u8>,
    /// Buffers lent to one receive call; empty between calls.
    staging: Batch,
    /// Buffers the next receive call offers: twice what the last one took
    /// when it left some empty, from [`RX_MIN_WIDTH`] to [`RX_SLOTS`].
    rx_width: usize,
    /// With a virtio-net header on every frame: superframes both ways.
    offload: Option<Box<Offload>>,
    stats: PacketStats,
}

/// One message of a send: its pieces (`tx_pieces[first..end]`), the frames it
/// carries and the packets of the batch it completes (a superframe sent in
/// several messages is complete with its last).
#[derive(Debug, Clone, Copy)]
struct TxMsg {
    first: usize,
    end: usize,
    frames: usize,
    pkts: usize,
}

/// Where a piece of a message being sent lies.
#[derive(Debug, Clone, Copy)]
enum Piece {
    /// `tx_hdrs[i]`.
    Vnet(usize),
    /// Bytes `from..to` of packet `pkt` of the batch.
    Pkt { pkt: usize, from: usize, to: usize },
    /// `tx_scratch[from..to]`.
    Scratch { from: usize, to: usize },
}

/// `UDP_GRO` (`<linux/udp.h>`): the socket takes UDP superframes whole.
const UDP_GRO: libc::c_int = 104;

/// The longest IPv4 packet: a UDP superframe's outer headers and pieces must fit.
const MAX_UDP_SUPERFRAME: usize = 65_535;

/// UDP datagrams shorter than this go alone: a flood of small datagrams
/// delivered fewer packets per second when joined (the receiving side has
/// less time to drain a superframe's worth than a trickle), and the gain is in
/// big ones (VXLAN carrying TCP).
const MIN_UDP_JOIN: usize = 512;

/// Receive calls take at most this many frames when superframes can arrive:
/// each slot has a large buffer for one (64 KiB, touched only when one
/// arrives). With 32, the end-to-end bench's 64-byte UDP flood lost enough to
/// stall its TCP control connection; 64 is what a burst takes anyway.
const RX_SLOTS: usize = 64;

/// Buffers the first receive call of a burst offers when the last burst was
/// light: a round trip's lone frame then costs four pool buffers and four
/// message headers, not [`RX_SLOTS`]. A call that fills all it offered is
/// followed by one four times as wide.
const RX_MIN_WIDTH: usize = 4;

/// What one receive call did: frames handed over (a superframe counts its
/// segments), buffers offered to the kernel and messages it filled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RxCall {
    got: usize,
    offered: usize,
    taken: usize,
}

impl RxCall {
    /// Frames handed over without a receive call (from `overflow`).
    fn frames(got: usize) -> RxCall {
        RxCall {
            got,
            ..RxCall::default()
        }
    }
}

/// The state of an uplink socket with `PACKET_VNET_HDR`.
///
/// Sending, runs of datagrams with the same outer headers (VXLAN) go as one
/// UDP superframe (`GSO_UDP_L4`), and runs of TCP segments of one flow
/// (native routing) as one TCP superframe: one skb, one pass through the
/// kernel and the link, instead of one per frame; the kernel, or the NIC, cuts
/// it up again. Receiving, a superframe (from such a sender on the same host,
/// or merged by the link's GRO) runs on from the pool buffer into the slot's
/// large buffer, its first part is copied in front, and then a TCP superframe
/// goes into the pipeline whole while a UDP one (VXLAN) is cut into its
/// datagrams; those beyond the burst wait in `overflow`.
struct Offload {
    rx_hdrs: Vec<[u8; VNET_HDR_LEN]>,
    /// A large buffer per receive slot, taken from the pool when first needed.
    slots: Vec<Option<Packet>>,
    overflow: VecDeque<Packet>,
    /// Joining is off after the kernel refused a superframe.
    tx_join: bool,
}

impl Offload {
    fn new() -> Offload {
        Offload {
            rx_hdrs: vec![[0; VNET_HDR_LEN]; RX_SLOTS],
            slots: (0..RX_SLOTS).map(|_| None).collect(),
            overflow: VecDeque::new(),
            tx_join: true,
        }
    }
}

fn vnet_bytes(h: &VnetHdr) -> [u8; VNET_HDR_LEN] {
    let mut b = [0u8; VnetHdr::LEN];
    h.emit(&mut b);
    b[..VNET_HDR_LEN].try_into().expect("10 of 12 bytes")
}

fn parse_vnet(b: &[u8; VNET_HDR_LEN]) -> VnetHdr {
    let mut full = [0u8; VnetHdr::LEN];
    full[..VNET_HDR_LEN].copy_from_slice(b);
    VnetHdr::parse(&full)
}

impl std::fmt::Debug for PacketSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketSocket")
            .field("fd", &self.fd)
            .field("name", &self.name)
            .field("ifindex", &self.ifindex)
            .field("mac", &self.mac)
            .field("filter", &self.filter)
            .field("stats", &self.stats)
            .finish()
    }
}

impl PacketSocket {
    /// Opens a socket on the uplink `ifname` of the calling thread's network
    /// namespace (run it inside [`crate::sys::netns::in_netns`] for another one;
    /// the socket works from any thread afterwards). Needs `CAP_NET_RAW`.
    ///
    /// The filter is attached before the socket is bound to the link, so it
    /// never holds a frame the filter would have dropped.
    pub fn open(ifname: &str, filter: &UplinkFilter) -> Result<PacketSocket, PacketError> {
        let prog = filter.program()?;
        if !valid_ifname(ifname) {
            return Err(PacketError::InvalidName {
                name: ifname.to_owned(),
            });
        }
        let err = |op: &'static str| {
            let target = format!("uplink {ifname}");
            move |source: io::Error| PacketError::Io { op, target, source }
        };
        let ifindex = match nix::net::if_::if_nametoindex(ifname) {
            Ok(i) => i,
            Err(Errno::ENODEV) => {
                return Err(PacketError::NotFound {
                    name: ifname.to_owned(),
                })
            }
            Err(e) => return Err(err("look up")(e.into())),
        };
        let fd = sys::packet_socket().map_err(err("open AF_PACKET socket"))?;
        sys::ignore_outgoing(fd.as_fd()).map_err(err("set PACKET_IGNORE_OUTGOING"))?;
        // Superframes both ways, except with IPIP: no virtio-net GSO type
        // describes IP-in-IP, so nothing could be joined on send (measured:
        // the header on gains IPIP nothing). A kernel without the option (before 3.13)
        // still forwards, one frame at a time.
        let offload = if filter.ipip {
            None
        } else {
            sys::vnet_hdr(fd.as_fd())
                .ok()
                .map(|()| Box::new(Offload::new()))
        };
        set_buffer(fd.as_fd(), libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)
            .map_err(err("set receive buffer"))?;
        set_buffer(fd.as_fd(), libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)
            .map_err(err("set send buffer"))?;
        sys::attach_filter(fd.as_fd(), &prog).map_err(err("attach filter"))?;
        // A socket that takes nothing is bound to no protocol: the kernel then
        // offers it no frame at all, rather than every IPv4 one to a filter.
        let protocol = if filter.takes_nothing() {
            0
        } else {
            sys::ETH_P_IP
        };
        sys::bind_link(fd.as_fd(), ifindex, protocol).map_err(err("bind"))?;
        let link = sys::local_link(fd.as_fd()).map_err(err("read bound address"))?;
        if link.hatype != ARPHRD_ETHER || link.addr_len != 6 {
            return Err(PacketError::NotEthernet {
                name: ifname.to_owned(),
                hatype: link.hatype,
            });
        }
        Ok(PacketSocket {
            fd,
            name: ifname.to_owned(),
            ifindex,
            mac: MacAddr::from_bytes(&link.addr[..6]),
            filter: filter.clone(),
            mmsg: MmsgV::new(MAX_BATCH),
            tx_hdrs: Vec::with_capacity(MAX_BATCH),
            tx_msgs: Vec::with_capacity(MAX_BATCH),
            tx_pieces: Vec::with_capacity(MAX_BATCH * 4),
            tx_scratch: Vec::new(),
            staging: Batch::new(),
            rx_width: RX_SLOTS,
            offload,
            stats: PacketStats::default(),
        })
    }

    /// Whether frames carry a virtio-net header, so superframes go both ways.
    pub fn has_offload(&self) -> bool {
        self.offload.is_some()
    }

    /// Whether superframe `p` leaves as UDP superframes (VXLAN: its
    /// segments, checksums and all, as the pieces), rather than a message per
    /// segment: what a send-only socket beside another uplink is for.
    pub fn sends_udp_superframes(&self, p: &Packet) -> bool {
        self.offload.is_some()
            && p.meta.is_superframe()
            && udp_outer(p.data(), usize::from(p.meta.gso_ip))
    }

    /// The uplink's interface index (in the namespace it was opened in).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The uplink's MAC when the socket was opened: the source of every frame
    /// Sluice sends out of it.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    pub fn filter(&self) -> &UplinkFilter {
        &self.filter
    }

    pub fn stats(&self) -> &PacketStats {
        &self.stats
    }

    /// Reads the kernel's count of frames it dropped for a full receive queue
    /// since the last call, adds it to [`PacketStats::rx_kernel_drops`] and
    /// returns that total.
    pub fn update_kernel_drops(&mut self) -> io::Result<u64> {
        let (_, drops) = sys::take_statistics(self.fd.as_fd())?;
        self.stats.rx_kernel_drops += u64::from(drops);
        Ok(self.stats.rx_kernel_drops)
    }
}

/// Sets a socket buffer to [`SOCKET_BUF_BYTES`]: past the system limit with
/// `force` where the process may (`CAP_NET_ADMIN`), else up to the limit.
fn set_buffer(
    fd: std::os::fd::BorrowedFd<'_>,
    force: libc::c_int,
    plain: libc::c_int,
) -> io::Result<()> {
    match sys::set_int_option(fd, libc::SOL_SOCKET, force, SOCKET_BUF_BYTES) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            sys::set_int_option(fd, libc::SOL_SOCKET, plain, SOCKET_BUF_BYTES)
        }
        r => r,
    }
}

impl Port for PacketSocket {
    fn name(&self) -> &str {
        &self.name
    }

    /// Takes up to `max` frames in one or more `recvmmsg(2)` calls, each
    /// offering [`PacketSocket::rx_width`] buffers: a call that fills them all
    /// is followed at once by a wider one, so a port that returns fewer than
    /// `max` is drained, as the worker expects.
    fn rx_burst(&mut self, pool: &mut Pool, batch: &mut Batch, max: usize) -> io::Result<usize> {
        let mut got = 0;
        loop {
            let (left, width) = (max - got, self.rx_width);
            let call = if self.offload.is_some() {
                self.rx_offload(pool, batch, left, width)
            } else {
                self.rx_plain(pool, batch, left, width)
            };
            let call = match call {
                Ok(c) => c,
                Err(e) if got == 0 => return Err(e),
                // Those taken already go on; the error comes back next call.
                Err(_) => break,
            };
            got += call.got;
            if call.offered == 0 || call.taken < call.offered {
                if call.offered > 0 {
                    self.rx_width = (call.taken * 2).clamp(RX_MIN_WIDTH, RX_SLOTS);
                }
                break;
            }
            // Every buffer offered was filled: more may be waiting.
            self.rx_width = (self.rx_width * 4).min(RX_SLOTS);
            if got >= max || batch.is_full() {
                break;
            }
        }
        Ok(got)
    }

    fn tx_burst(&mut self, pool: &mut Pool, batch: &mut Batch) -> io::Result<usize> {
        self.send_batch(pool, batch)
    }

    fn takes_superframes(&self) -> bool {
        self.offload.as_ref().is_some_and(|o| o.tx_join)
    }

    fn rx_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn offload_stats(&self) -> PortOffload {
        let s = &self.stats;
        PortOffload {
            rx_gso_superframes: s.rx_gso,
            rx_gso_segments: s.rx_gso_segments,
            rx_gso_cut: s.rx_gso_cut,
            tx_gro_superframes: s.tx_gso,
            tx_gro_segments: s.tx_gso_segments,
            rx_dropped: s.rx_truncated + s.rx_gso_bad,
            rx_kernel_drops: s.rx_kernel_drops,
        }
    }

    fn update_kernel_stats(&mut self) {
        // Only a closed socket fails this; the next receive says so.
        let _ = self.update_kernel_drops();
    }
}

impl PacketSocket {
    /// One receive call without the virtio-net header (IPIP): up to `max`
    /// frames into at most `width` buffers.
    fn rx_plain(
        &mut self,
        pool: &mut Pool,
        batch: &mut Batch,
        max: usize,
        width: usize,
    ) -> io::Result<RxCall> {
        let room = max
            .min(width)
            .min(MAX_BATCH.saturating_sub(batch.len()))
            .min(self.mmsg.capacity());
        // Pool empty: the frames wait in the socket queue until buffers return.
        let offered = pool.alloc_into(&mut self.staging, room);
        if offered == 0 {
            return Ok(RxCall::default());
        }
        let fd = self.fd.as_fd();
        let bufs = &mut self.staging;
        let mmsg = &mut self.mmsg;
        let got = loop {
            let msgs = bufs
                .as_mut_slice()
                .iter_mut()
                .map(|p| std::iter::once(p.rx_area()));
            match mmsg.recv(fd, msgs) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                r => break r,
            }
        };
        self.stats.rx_calls += 1;
        let taken = match got {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => 0,
            Err(e) => {
                self.staging.clear_into(pool);
                return Err(e);
            }
        };
        let mut n = 0;
        for (i, mut p) in self.staging.drain().enumerate() {
            match self.mmsg.received(i) {
                Some(r) if i < taken && !r.truncated && r.len <= p.capacity() => {
                    p.set_received(r.len);
                    batch.push(p);
                    n += 1;
                }
                Some(_) if i < taken => {
                    self.stats.rx_truncated += 1;
                    pool.free(p);
                }
                _ => pool.free(p),
            }
        }
        self.stats.rx_frames += n as u64;
        Ok(RxCall {
            got: n,
            offered,
            taken,
        })
    }

    /// One receive call with a virtio-net header in front of each frame: up to
    /// `max` frames (a superframe counts its segments) out of at most `width`
    /// messages. What a cut superframe has beyond `max` waits in `overflow`,
    /// and is only put there once `max` is reached: a burst that comes back
    /// short leaves nothing behind.
    fn rx_offload(
        &mut self,
        pool: &mut Pool,
        batch: &mut Batch,
        max: usize,
        width: usize,
    ) -> io::Result<RxCall> {
        let off = self.offload.as_mut().expect("offload on");
        let mut got = 0;
        // Frames cut from a superframe of the last call go first, in order.
        while got < max && !batch.is_full() {
            let Some(p) = off.overflow.pop_front() else {
                break;
            };
            // About the segments a superframe carries, as when it arrived.
            got += if p.meta.is_superframe() {
                (p.len() / usize::from(p.meta.gso_size)).max(1)
            } else {
                1
            };
            batch.push(p);
        }
        if !off.overflow.is_empty() || got >= max || batch.is_full() {
            return Ok(RxCall::frames(got));
        }
        let room = (max - got)
            .min(width)
            .min(MAX_BATCH.saturating_sub(batch.len()))
            .min(RX_SLOTS);
        let offered = pool.alloc_into(&mut self.staging, room);
        if offered == 0 {
            return Ok(RxCall::frames(got));
        }
        let buf_room = self.staging.as_slice()[0].capacity();
        let spill = buf_room < LARGE_BUF_SIZE - HEADROOM;
        let fd = self.fd.as_fd();
        let mmsg = &mut self.mmsg;
        let Offload {
            rx_hdrs,
            slots,
            overflow,
            ..
        } = &mut **off;
        if spill {
            for slot in slots.iter_mut().take(self.staging.len()) {
                slot.get_or_insert_with(|| pool.alloc_large());
            }
        }
        let r = loop {
            let msgs = self
                .staging
                .as_mut_slice()
                .iter_mut()
                .zip(rx_hdrs.iter_mut())
                .zip(slots.iter_mut())
                .map(|((p, h), slot)| {
                    let tail: &mut [u8] = match slot {
                        Some(l) if spill => l.rx_area().get_mut(buf_room..).unwrap_or_default(),
                        _ => &mut [],
                    };
                    [&mut h[..], p.rx_area(), tail].into_iter()
                });
            match mmsg.recv(fd, msgs) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                r => break r,
            }
        };
        self.stats.rx_calls += 1;
        let n = match r {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => 0,
            Err(e) => {
                self.staging.clear_into(pool);
                return if got > 0 {
                    Ok(RxCall::frames(got))
                } else {
                    Err(e)
                };
            }
        };
        let st = &mut self.stats;
        for (i, mut p) in self.staging.drain().enumerate() {
            let rcv = mmsg.received(i).filter(|_| i < n);
            let Some(rcv) = rcv else {
                pool.free(p);
                continue;
            };
            if rcv.truncated || rcv.len < VNET_HDR_LEN {
                st.rx_truncated += 1;
                pool.free(p);
                continue;
            }
            let len = rcv.len - VNET_HDR_LEN;
            let h = parse_vnet(&rx_hdrs[i]);
            if !h.is_gso() {
                if len > buf_room {
                    st.rx_truncated += 1;
                    pool.free(p);
                    continue;
                }
                p.set_received(len);
                if h.flags & VnetHdr::F_NEEDS_CSUM != 0 {
                    let (start, at) = (usize::from(h.csum_start), usize::from(h.csum_offset));
                    if !crate::port::tap::complete_checksum(p.data_mut(), start, at) {
                        st.rx_gso_bad += 1;
                        pool.free(p);
                        continue;
                    }
                    st.rx_csum_completed += 1;
                }
                if got < max && !batch.is_full() {
                    batch.push(p);
                    got += 1;
                } else {
                    overflow.push_back(p);
                }
                st.rx_frames += 1;
                continue;
            }
            // A superframe: whole in the buffer, or joined with its tail in the
            // slot's large buffer.
            st.rx_gso += 1;
            let in_slot = len > buf_room;
            let whole: &mut Packet = if !in_slot {
                p.set_received(len);
                &mut p
            } else {
                match slots[i].as_mut() {
                    Some(l) if len <= l.capacity() => {
                        let (front, _) = l.rx_area().split_at_mut(buf_room);
                        front.copy_from_slice(&p.rx_area()[..buf_room]);
                        l.set_received(len);
                        l
                    }
                    _ => {
                        st.rx_truncated += 1;
                        pool.free(p);
                        continue;
                    }
                }
            };
            // Partial: from a sender on this host, so what it carries (a
            // VXLAN packet's inner checksums) never crossed a wire.
            let trusted = h.flags & VnetHdr::F_NEEDS_CSUM != 0;
            let gso_type = h.gso_type & !VnetHdr::GSO_ECN;
            // Into the pipeline whole, with its segment count: a TCP superframe
            // (native routing), or VXLAN pieces of one TCP flow made one packet
            // carrying a TCP superframe.
            let kept = if gso_type == VnetHdr::GSO_TCPV4 {
                match mark_superframe(whole, h.gso_size) {
                    Ok(k) => Some(k),
                    Err(_) => {
                        st.rx_gso_bad += 1;
                        pool.free(p);
                        continue;
                    }
                }
            } else {
                match self.filter.vxlan_port {
                    Some(port) if gso_type == VnetHdr::GSO_UDP_L4 => {
                        Udp4Split::parse(whole.data(), h.gso_size, usize::MAX)
                            .ok()
                            .and_then(|split| split.join_vxlan_tcp(whole.data_mut(), port, trusted))
                            .map(|j| {
                                whole.truncate(j.len);
                                whole.set_superframe(j.gso_size, j.inner_ip_at as u8);
                                j.segments
                            })
                    }
                    _ => None,
                }
            };
            if let Some(k) = kept {
                st.rx_gso_segments += k as u64;
                st.rx_frames += 1;
                let q = if in_slot {
                    pool.free(p);
                    slots[i].take().expect("slot holds it")
                } else {
                    p
                };
                // Counted by its segments, as the TAP counts them.
                if got < max && !batch.is_full() {
                    batch.push(q);
                    got += k;
                } else {
                    overflow.push_back(q);
                }
                continue;
            }
            let frame: &[u8] = whole.data();
            let cut = cut_superframe(frame, &h, buf_room, pool, |mut q| {
                if trusted {
                    q.meta.flags |= Meta::FLAG_L4_CSUM_OK;
                }
                if got < max && !batch.is_full() {
                    batch.push(q);
                    got += 1;
                } else {
                    overflow.push_back(q);
                }
            });
            match cut {
                Ok(k) => {
                    st.rx_gso_segments += k as u64;
                    st.rx_gso_cut += 1;
                    st.rx_frames += k as u64;
                }
                Err(()) => st.rx_gso_bad += 1,
            }
            pool.free(p);
        }
        Ok(RxCall {
            got,
            offered,
            taken: n,
        })
    }

    /// Sends a batch in `sendmmsg(2)` calls. With the virtio-net header on, runs
    /// are joined into superframes first, superframes from the pipeline go
    /// whole ([`PacketSocket::plan_superframe`]), and each message starts with
    /// its header.
    fn send_batch(&mut self, pool: &mut Pool, batch: &mut Batch) -> io::Result<usize> {
        let vnet = self.offload.is_some();
        let join = self.offload.as_ref().is_some_and(|o| o.tx_join);
        self.tx_hdrs.clear();
        self.tx_msgs.clear();
        self.tx_pieces.clear();
        self.tx_scratch.clear();
        let pkts = batch.as_mut_slice();
        let mut i = 0;
        let mut unsendable = 0;
        while i < pkts.len() {
            if pkts[i].meta.is_superframe() {
                if !self.plan_superframe(i, &pkts[i], vnet) {
                    unsendable += 1;
                }
                i += 1;
                continue;
            }
            let run = if join {
                join_run(&mut pkts[i..])
            } else {
                Joined {
                    count: 1,
                    hdr: VnetHdr::default(),
                    payload_at: 0,
                }
            };
            let first = self.tx_pieces.len();
            if vnet {
                self.tx_pieces.push(Piece::Vnet(self.tx_hdrs.len()));
                self.tx_hdrs.push(vnet_bytes(&run.hdr));
            }
            self.tx_pieces.push(Piece::Pkt {
                pkt: i,
                from: 0,
                to: pkts[i].len(),
            });
            for (k, p) in pkts.iter().enumerate().take(i + run.count).skip(i + 1) {
                self.tx_pieces.push(Piece::Pkt {
                    pkt: k,
                    from: run.payload_at,
                    to: p.len(),
                });
            }
            self.tx_msgs.push(TxMsg {
                first,
                end: self.tx_pieces.len(),
                frames: run.count,
                pkts: run.count,
            });
            i += run.count;
        }
        self.stats.tx_errors += unsendable as u64;
        let (mut done_msgs, mut sent, mut frames_sent, mut frames_done) = (0, 0, 0, 0);
        let frames_total: usize = self.tx_msgs.iter().map(|m| m.frames).sum();
        let mut fatal = None;
        let fd = self.fd.as_fd();
        let pkts = batch.as_slice();
        let (hdrs, pieces, scratch) = (&self.tx_hdrs, &self.tx_pieces, &self.tx_scratch);
        while done_msgs < self.tx_msgs.len() {
            let msgs = self.tx_msgs[done_msgs..].iter().map(|m| {
                pieces[m.first..m.end].iter().map(|pc| match *pc {
                    Piece::Vnet(h) => &hdrs[h][..],
                    Piece::Pkt { pkt, from, to } => &pkts[pkt].data()[from..to],
                    Piece::Scratch { from, to } => &scratch[from..to],
                })
            });
            let r = self.mmsg.send(fd, msgs);
            self.stats.tx_calls += 1;
            match r.map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0))) {
                Ok(0) => break,
                Ok(k) => {
                    for m in &self.tx_msgs[done_msgs..done_msgs + k] {
                        sent += m.pkts;
                        frames_sent += m.frames;
                        frames_done += m.frames;
                        if m.frames > 1 {
                            self.stats.tx_gso += 1;
                            self.stats.tx_gso_segments += m.frames as u64;
                        }
                    }
                    done_msgs += k;
                }
                Err(Errno::EINTR) => {}
                // The send buffer or device queue is full, or the link is down: the
                // rest would be refused too.
                Err(Errno::EAGAIN | Errno::ENOBUFS | Errno::ENETDOWN) => break,
                // The link is gone from under the socket.
                Err(e @ (Errno::ENXIO | Errno::ENODEV | Errno::EBADF)) => {
                    fatal = Some(e);
                    break;
                }
                // This message only (shorter than a header, longer than the MTU).
                // A superframe refused turns joining off: its frames are lost
                // once, not again and again (the worker cuts superframes from
                // then on).
                Err(_) => {
                    let n = self.tx_msgs[done_msgs].frames;
                    self.stats.tx_errors += n as u64;
                    if n > 1 {
                        if let Some(off) = self.offload.as_mut() {
                            off.tx_join = false;
                        }
                    }
                    frames_done += n;
                    done_msgs += 1;
                }
            }
        }
        self.stats.tx_frames += frames_sent as u64;
        self.stats.tx_refused += (frames_total - frames_done) as u64;
        batch.clear_into(pool);
        match fatal {
            Some(e) if sent == 0 => Err(e.into()),
            _ => Ok(sent),
        }
    }

    /// Adds one segment to the message being planned: its headers (`hdr` in
    /// `tx_scratch`), then its payload (`body` of packet `pkt`), gathered.
    fn push_segment(
        &mut self,
        pkt: usize,
        hdr: std::ops::Range<usize>,
        body: std::ops::Range<usize>,
    ) {
        self.tx_pieces.push(Piece::Scratch {
            from: hdr.start,
            to: hdr.end,
        });
        self.tx_pieces.push(Piece::Pkt {
            pkt,
            from: body.start,
            to: body.end,
        });
    }

    /// Plans the messages that send superframe `p` (packet `idx` of the batch):
    /// - native (no outer headers), with the virtio-net header: whole, as one
    ///   TCP superframe (`GSO_TCPV4`) for the kernel or the NIC to cut;
    /// - VXLAN (outer IPv4/UDP), with the header: as UDP superframes
    ///   (`GSO_UDP_L4`) of up to 64 KiB whose pieces are its segments, each
    ///   segment's headers written into `tx_scratch` and its payload sent from
    ///   where it lies in the packet: a gather write, no copy;
    /// - otherwise one message per segment, gathered the same way.
    ///
    /// False (nothing planned) if it cannot be cut.
    fn plan_superframe(&mut self, idx: usize, p: &Packet, vnet: bool) -> bool {
        let frame = p.data();
        let ip_at = usize::from(p.meta.gso_ip);
        let Ok(g) = Tcp4Gso::parse_at(frame, ip_at, p.meta.gso_size) else {
            return false;
        };
        let count = g.count();
        if vnet && ip_at == ETH_LEN {
            let first = self.tx_pieces.len();
            self.tx_pieces.push(Piece::Vnet(self.tx_hdrs.len()));
            self.tx_hdrs
                .push(vnet_bytes(&superframe_vnet_hdr(frame, &g)));
            self.tx_pieces.push(Piece::Pkt {
                pkt: idx,
                from: 0,
                to: frame.len(),
            });
            self.tx_msgs.push(TxMsg {
                first,
                end: self.tx_pieces.len(),
                frames: count,
                pkts: 1,
            });
            return true;
        }
        // Every segment's headers, one after another.
        let hdrs = g.header_len();
        let base = self.tx_scratch.len();
        self.tx_scratch.resize(base + hdrs * count, 0);
        for i in 0..count {
            let at = base + i * hdrs;
            if g.write_headers(frame, i, &mut self.tx_scratch[at..at + hdrs])
                .is_err()
            {
                self.tx_scratch.truncate(base);
                return false;
            }
        }
        let seg_hdr = |i: usize| base + i * hdrs;
        if vnet && udp_outer(frame, ip_at) {
            // Each piece: the segment from its VXLAN header on.
            let per = hdrs - UDP_PAYLOAD_AT + g.gso_size();
            let most = MAX_RUN
                .min((MAX_UDP_SUPERFRAME - (UDP_PAYLOAD_AT - ETH_LEN)) / per)
                .max(1);
            let mut a = 0;
            while a < count {
                let b = (a + most).min(count);
                let first = self.tx_pieces.len();
                let h = if b - a > 1 {
                    let payload: usize = (a..b)
                        .map(|i| hdrs - UDP_PAYLOAD_AT + g.payload_range(i).len())
                        .sum();
                    let head = &mut self.tx_scratch[seg_hdr(a)..seg_hdr(a) + hdrs];
                    udp_superframe_head(head, payload, per)
                } else {
                    // One segment: its headers are complete as written.
                    VnetHdr::default()
                };
                self.tx_pieces.push(Piece::Vnet(self.tx_hdrs.len()));
                self.tx_hdrs.push(vnet_bytes(&h));
                for i in a..b {
                    let skip = if i == a { 0 } else { UDP_PAYLOAD_AT };
                    self.push_segment(
                        idx,
                        seg_hdr(i) + skip..seg_hdr(i) + hdrs,
                        g.payload_range(i),
                    );
                }
                self.tx_msgs.push(TxMsg {
                    first,
                    end: self.tx_pieces.len(),
                    frames: b - a,
                    pkts: usize::from(b == count),
                });
                a = b;
            }
            return true;
        }
        for i in 0..count {
            let first = self.tx_pieces.len();
            if vnet {
                self.tx_pieces.push(Piece::Vnet(self.tx_hdrs.len()));
                self.tx_hdrs.push([0; VNET_HDR_LEN]);
            }
            self.push_segment(idx, seg_hdr(i)..seg_hdr(i) + hdrs, g.payload_range(i));
            self.tx_msgs.push(TxMsg {
                first,
                end: self.tx_pieces.len(),
                frames: 1,
                pkts: usize::from(i + 1 == count),
            });
        }
        true
    }
}

/// Whether a superframe whose inner IPv4 header starts at `ip_at` is carried
/// in an outer IPv4/UDP header without options (VXLAN): then its segments can
/// leave as UDP superframes.
fn udp_outer(frame: &[u8], ip_at: usize) -> bool {
    ip_at >= UDP_PAYLOAD_AT
        && frame.get(ETH_LEN) == Some(&0x45)
        && frame.get(ETH_LEN + 9).map(|&b| u32::from(b)) == Some(IPPROTO_UDP)
}

/// Finds the run of frames that starts at `pkts[0]` and can go as one
/// superframe: UDP datagrams with the same headers, or TCP segments of one
/// flow. Rewrites the first frame's headers for it; returns the run's length,
/// its virtio-net header and where the payload of the others starts.
fn join_run(pkts: &mut [Packet]) -> Joined {
    let udp = Udp4Seg::parse(pkts[0].data()).filter(|s| s.payload_len >= MIN_UDP_JOIN);
    if let Some(first) = udp {
        return join_udp(pkts, first);
    }
    match Tcp4Seg::of(&pkts[0]) {
        Some(first) => join_tcp(pkts, first).0,
        None => Joined {
            count: 1,
            hdr: VnetHdr::default(),
            payload_at: 0,
        },
    }
}

/// Cuts a superframe received into frames in buffers from `pool`, each handed
/// to `out`; returns how many. `Err` (nothing handed over) for one that cannot
/// be cut: a GSO type other than UDP or TCP over IPv4, bad headers or sizes.
/// Each frame must fit `room` bytes (the pool's buffers). Frames the pool has
/// no buffer for are lost.
fn cut_superframe(
    frame: &[u8],
    h: &VnetHdr,
    room: usize,
    pool: &mut Pool,
    mut out: impl FnMut(Packet),
) -> Result<usize, ()> {
    match h.gso_type & !VnetHdr::GSO_ECN {
        VnetHdr::GSO_UDP_L4 => {
            let split = Udp4Split::parse(frame, h.gso_size, room).map_err(|_| ())?;
            let mut k = 0;
            for i in 0..split.count() {
                let Some(mut q) = pool.alloc() else { break };
                let n = split.write(frame, i, q.rx_area());
                q.set_received(n);
                out(q);
                k += 1;
            }
            Ok(k)
        }
        VnetHdr::GSO_TCPV4 => {
            let g = Tcp4Gso::parse(frame, h.gso_size).map_err(|_| ())?;
            if g.max_segment_len() > room {
                return Err(());
            }
            let mut k = 0;
            for i in 0..g.count() {
                let Some(mut q) = pool.alloc() else { break };
                match g.write_segment(frame, i, q.rx_area()) {
                    Ok(n) => {
                        q.set_received(n);
                        out(q);
                        k += 1;
                    }
                    Err(_) => {
                        pool.free(q);
                        break;
                    }
                }
            }
            Ok(k)
        }
        _ => Err(()),
    }
}

/// Sockets that give Sluice's tunnel packets a taker in the node's kernel, so
/// that it does not answer them with ICMP port or protocol unreachable: a UDP
/// socket on the VXLAN port and a raw IPIP socket, each bound to the node
/// address and each dropping everything it is given (the uplink socket has its
/// copy already). Hold them for the daemon's life; dropping closes them.
///
/// The kernel counts what the UDP socket's filter drops in the `Udp InErrors`
/// of `/proc/net/snmp`, and clones each IPIP packet once for the raw socket.
///
/// A raw socket quiets IPIP only where the kernel has no IPIP handler of its
/// own. With the `ipip` module loaded, its handler runs first and answers
/// packets that match no tunnel device (its `tunl0` fallback is down by
/// default) with ICMP unreachable whatever sockets exist; such nodes need the
/// kernel's module unloaded or a firewall rule instead.
#[derive(Debug)]
pub struct KernelSinks {
    node_ip: Ipv4Addr,
    udp: Option<(u16, OwnedFd)>,
    ipip: Option<OwnedFd>,
}

impl KernelSinks {
    /// Opens the sinks in the calling thread's network namespace, where
    /// `node_ip` must be a local address. A VXLAN port already bound there (a
    /// kernel VXLAN device, another CNI) is an error.
    pub fn open(
        node_ip: Ipv4Addr,
        vxlan_port: Option<u16>,
        ipip: bool,
    ) -> Result<KernelSinks, PacketError> {
        check_node_ip(node_ip)?;
        let drop_all = [Insn::ret(bpf::DROP)];
        let udp = match vxlan_port {
            None => None,
            Some(0) => {
                return Err(PacketError::InvalidFilter {
                    field: "vxlan_port",
                    value: "0".into(),
                    expected: "a UDP port from 1 to 65535",
                })
            }
            Some(port) => {
                let addr = SocketAddrV4::new(node_ip, port);
                let err = |op: &'static str| {
                    let target = format!("UDP sink {addr}");
                    move |source: io::Error| PacketError::Io { op, target, source }
                };
                let fd = nsock::socket(
                    AddressFamily::Inet,
                    SockType::Datagram,
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .map_err(|e| err("open")(e.into()))?;
                sys::attach_filter(fd.as_fd(), &drop_all).map_err(err("attach filter"))?;
                // Take UDP superframes (from a sender on this host, or the
                // link's GRO) whole: without it the kernel cuts each into its
                // datagrams in software first, only for the filter to drop
                // them one by one. Before Linux 5.0 there is no such option,
                // and the sink works as before.
                let _ = sys::set_int_option(fd.as_fd(), libc::SOL_UDP, UDP_GRO, 1);
                nsock::bind(fd.as_raw_fd(), &SockaddrIn::from(addr))
                    .map_err(|e| err("bind")(e.into()))?;
                Some((port, fd))
            }
        };
        let ipip = if ipip {
            let err = |op: &'static str| {
                let target = format!("IPIP sink {node_ip}");
                move |source: io::Error| PacketError::Io { op, target, source }
            };
            let fd = sys::raw_ipv4_socket(IPPROTO_IPIP).map_err(err("open"))?;
            sys::attach_filter(fd.as_fd(), &drop_all).map_err(err("attach filter"))?;
            nsock::bind(
                fd.as_raw_fd(),
                &SockaddrIn::from(SocketAddrV4::new(node_ip, 0)),
            )
            .map_err(|e| err("bind")(e.into()))?;
            // A raw socket receives from the moment it exists: discard what came
            // before the filter.
            sys::drain(fd.as_fd()).map_err(err("drain"))?;
            Some(fd)
        } else {
            None
        };
        Ok(KernelSinks { node_ip, udp, ipip })
    }

    /// The sinks an uplink with `filter` needs.
    pub fn for_filter(filter: &UplinkFilter) -> Result<KernelSinks, PacketError> {
        KernelSinks::open(filter.node_ip, filter.vxlan_port, filter.ipip)
    }

    pub fn node_ip(&self) -> Ipv4Addr {
        self.node_ip
    }

    /// The UDP port held, if any.
    pub fn vxlan_port(&self) -> Option<u16> {
        self.udp.as_ref().map(|(port, _)| *port)
    }

    /// Whether protocol 4 (IPIP) is held.
    pub fn holds_ipip(&self) -> bool {
        self.ipip.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::bpf_classic::{run, Skb, PACKET_BROADCAST, PACKET_HOST, PACKET_OTHERHOST};
    use crate::testkit;
    use crate::wire::{ipv4, udp};
    use proptest::prelude::*;

    const NODE: Ipv4Addr = testkit::NODE_A;
    const PEER: Ipv4Addr = testkit::NODE_B;

    fn verdict(f: &UplinkFilter, frame: &[u8], pkt_type: u32) -> u32 {
        let prog = f.program().expect("valid filter");
        run(
            &prog,
            Skb {
                data: frame,
                pkt_type,
            },
        )
        .expect("program runs to a return")
    }

    fn takes(f: &UplinkFilter, frame: &[u8]) -> bool {
        verdict(f, frame, PACKET_HOST) == bpf::ACCEPT
    }

    fn vxlan_to(dst: Ipv4Addr, port: u16) -> Vec<u8> {
        let inner = testkit::from_pod_a1(testkit::POD_B1, 80);
        let mut f = testkit::vxlan_from_b(&inner, 4096, PEER);
        let mut ip = ipv4::Packet::new_unchecked(&mut f[14..]);
        ip.set_dst_addr(dst);
        ip.fill_checksum();
        udp::Packet::new_unchecked(&mut f[34..]).set_dst_port(port);
        f
    }

    fn udp_to(dst: Ipv4Addr, port: u16) -> Vec<u8> {
        testkit::udp_frame(
            testkit::NODE_B_MAC,
            testkit::NODE_A_MAC,
            PEER,
            dst,
            40000,
            port,
            100,
        )
    }

    fn ipip_to(dst: Ipv4Addr) -> Vec<u8> {
        let inner = testkit::from_pod_a1(testkit::POD_B1, 80);
        let mut f = testkit::ipip_from_b(&inner[14..], PEER);
        let mut ip = ipv4::Packet::new_unchecked(&mut f[14..]);
        ip.set_dst_addr(dst);
        ip.fill_checksum();
        f
    }

    fn set_frag(f: &mut [u8], flags_frag: u16) {
        f[20..22].copy_from_slice(&flags_frag.to_be_bytes());
    }

    #[test]
    fn vxlan_filter_takes_vxlan_to_the_node_only() {
        let f = UplinkFilter::vxlan(NODE);
        assert!(takes(&f, &vxlan_to(NODE, 4789)));
        assert!(!takes(&f, &vxlan_to(PEER, 4789)), "another address");
        assert!(!takes(&f, &vxlan_to(NODE, 4790)), "another port");
        assert!(!takes(&f, &udp_to(NODE, 53)), "the node's DNS");
        assert!(!takes(&f, &ipip_to(NODE)), "IPIP is off");
        // Only frames addressed to this host.
        let v = vxlan_to(NODE, 4789);
        assert_eq!(verdict(&f, &v, PACKET_OTHERHOST), bpf::DROP);
        assert_eq!(verdict(&f, &v, PACKET_BROADCAST), bpf::DROP);
        // Not IPv4 (an ARP ethertype on the same bytes).
        let mut arp = v.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(!takes(&f, &arp));
    }

    #[test]
    fn fragments_after_the_first_are_left_alone() {
        let f = UplinkFilter::vxlan(NODE);
        let mut v = vxlan_to(NODE, 4789);
        set_frag(&mut v, ipv4::FLAG_MF);
        assert!(takes(&f, &v), "first fragment");
        // A later fragment whose payload happens to hold 4789 where a port would be.
        set_frag(&mut v, 185);
        assert!(!takes(&f, &v));
        let g = UplinkFilter::ipip(NODE);
        let mut p = ipip_to(NODE);
        assert!(takes(&g, &p));
        set_frag(&mut p, ipv4::FLAG_MF | 3);
        assert!(!takes(&g, &p));
    }

    #[test]
    fn the_port_is_found_behind_ip_options() {
        let f = UplinkFilter {
            vxlan_port: Some(8472),
            ..UplinkFilter::vxlan(NODE)
        };
        let plain = vxlan_to(NODE, 8472);
        // Insert 4 bytes of options (NOPs): IHL 6.
        let mut v = plain[..34].to_vec();
        v.extend_from_slice(&[1, 1, 1, 1]);
        v.extend_from_slice(&plain[34..]);
        v[14] = 0x46;
        assert!(takes(&f, &v));
        // The same bytes read with the wrong header length would not match.
        v[14] = 0x45;
        assert!(!takes(&f, &v));
    }

    #[test]
    fn ipip_and_native_prefixes() {
        let f = UplinkFilter {
            node_ip: NODE,
            vxlan_port: None,
            ipip: true,
            native_prefixes: vec![
                (Ipv4Addr::new(198, 19, 1, 0), 24),
                (Ipv4Addr::new(198, 19, 128, 0), 17),
                (Ipv4Addr::new(198, 19, 5, 7), 32),
            ],
        };
        assert!(takes(&f, &ipip_to(NODE)));
        assert!(!takes(&f, &ipip_to(PEER)));
        assert!(!takes(&f, &vxlan_to(NODE, 4789)), "VXLAN is off");
        for dst in [[198, 19, 1, 10], [198, 19, 200, 1], [198, 19, 5, 7]] {
            assert!(takes(&f, &udp_to(dst.into(), 80)), "{dst:?}");
        }
        for dst in [[198, 19, 2, 10], [198, 19, 5, 8], [198, 18, 0, 1]] {
            assert!(!takes(&f, &udp_to(dst.into(), 80)), "{dst:?}");
        }
        // Native takes fragments too: the kernel would forward them all the same.
        let mut later = udp_to([198, 19, 1, 10].into(), 80);
        set_frag(&mut later, 100);
        assert!(takes(&f, &later));
    }

    #[test]
    fn an_empty_filter_takes_nothing() {
        let f = UplinkFilter::new(NODE);
        assert!(f.takes_nothing());
        assert!(!UplinkFilter::vxlan(NODE).takes_nothing());
        for frame in [vxlan_to(NODE, 4789), ipip_to(NODE), udp_to(NODE, 53)] {
            assert!(!takes(&f, &frame));
        }
    }

    #[test]
    fn short_frames_are_dropped() {
        let f = UplinkFilter {
            native_prefixes: vec![(Ipv4Addr::new(198, 19, 0, 0), 16)],
            ipip: true,
            ..UplinkFilter::vxlan(NODE)
        };
        let v = vxlan_to(NODE, 4789);
        for len in 0..38 {
            assert!(!takes(&f, &v[..len]), "{len} bytes");
        }
        assert!(takes(&f, &v[..38]), "enough for the port");
    }

    #[test]
    fn bad_filters_are_refused_with_the_value() {
        let bad = [
            (
                UplinkFilter::vxlan(Ipv4Addr::UNSPECIFIED),
                "uplink filter node_ip is 0.0.0.0; expected a unicast IPv4 address",
            ),
            (
                UplinkFilter {
                    vxlan_port: Some(0),
                    ..UplinkFilter::vxlan(NODE)
                },
                "uplink filter vxlan_port is 0; expected a UDP port from 1 to 65535",
            ),
            (
                UplinkFilter {
                    native_prefixes: vec![(Ipv4Addr::new(198, 19, 1, 0), 33)],
                    ..UplinkFilter::new(NODE)
                },
                "uplink filter native_prefixes is 198.19.1.0/33; expected a prefix length from 0 to 32",
            ),
            (
                UplinkFilter {
                    native_prefixes: vec![(Ipv4Addr::new(198, 19, 1, 5), 24)],
                    ..UplinkFilter::new(NODE)
                },
                "uplink filter native_prefixes is 198.19.1.5/24; expected a network address, with no bits set past the prefix length",
            ),
            (
                UplinkFilter {
                    native_prefixes: vec![(Ipv4Addr::new(198, 16, 0, 0), 14)],
                    ..UplinkFilter::new(NODE)
                },
                "native prefix 198.16.0.0/14 holds the node address 198.18.0.1; expected pod prefixes only",
            ),
            (
                UplinkFilter {
                    native_prefixes: vec![(Ipv4Addr::UNSPECIFIED, 0)],
                    ..UplinkFilter::new(NODE)
                },
                "native prefix 0.0.0.0/0 holds the node address 198.18.0.1; expected pod prefixes only",
            ),
        ];
        for (f, msg) in bad {
            assert_eq!(f.program().unwrap_err().to_string(), msg);
        }
        let many = UplinkFilter {
            native_prefixes: (0..=MAX_NATIVE_PREFIXES as u32)
                .map(|i| (Ipv4Addr::from(0xc613_0000 + (i << 6)), 26))
                .collect(),
            ..UplinkFilter::new(NODE)
        };
        assert!(matches!(
            many.program(),
            Err(PacketError::TooManyPrefixes {
                count: 1001,
                max: 1000
            })
        ));
        let mut most = many;
        most.native_prefixes.pop();
        most.ipip = true;
        most.vxlan_port = Some(4789);
        assert!(most.program().unwrap().len() <= bpf::MAX_INSNS);
    }

    #[test]
    fn bad_names_and_sinks_are_refused_before_the_kernel() {
        let f = UplinkFilter::vxlan(NODE);
        assert!(matches!(
            PacketSocket::open("", &f),
            Err(PacketError::InvalidName { .. })
        ));
        assert!(matches!(
            PacketSocket::open("much-too-long-name", &f),
            Err(PacketError::InvalidName { .. })
        ));
        assert!(matches!(
            KernelSinks::open(NODE, Some(0), false),
            Err(PacketError::InvalidFilter {
                field: "vxlan_port",
                ..
            })
        ));
        assert!(matches!(
            KernelSinks::open(Ipv4Addr::BROADCAST, None, true),
            Err(PacketError::InvalidFilter {
                field: "node_ip",
                ..
            })
        ));
    }

    #[test]
    fn ports_move_to_worker_threads() {
        fn send<T: Send>() {}
        send::<PacketSocket>();
        send::<KernelSinks>();
    }

    proptest! {
        /// Whatever the bytes, the program ends in a return, and takes nothing that
        /// is not IPv4 to the node or to a pod prefix.
        #[test]
        fn any_bytes_reach_a_return(
            bytes in proptest::collection::vec(any::<u8>(), 0..128),
            pkt_type in 0u32..5,
        ) {
            let f = UplinkFilter {
                native_prefixes: vec![(Ipv4Addr::new(198, 19, 1, 0), 24)],
                ipip: true,
                ..UplinkFilter::vxlan(NODE)
            };
            let prog = f.program().unwrap();
            let v = run(&prog, Skb { data: &bytes, pkt_type });
            prop_assert!(v.is_ok());
            if v == Ok(bpf::ACCEPT) {
                prop_assert_eq!(pkt_type, PACKET_HOST);
                prop_assert_eq!(&bytes[12..14], &[0x08, 0x00]);
                let dst = Ipv4Addr::new(bytes[30], bytes[31], bytes[32], bytes[33]);
                prop_assert!(dst == NODE || dst.octets()[..3] == [198, 19, 1]);
            }
        }
    }
}
