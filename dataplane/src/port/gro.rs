//! Receive offload in software for TCP/IPv4 (GRO): consecutive segments of one
//! flow joined back into one superframe, the way the kernel's `tcp_gro_receive`
//! and VPP's `gro` node do it, so a port that takes superframes (a TAP with the
//! virtio-net header) gets one write and one pass through the receiving stack
//! per run instead of one per MSS-sized segment.
//!
//! A run joins segments only where the result means the same to TCP as the
//! segments did, and the kernel could cut it back into them (`gso_size` is the
//! first segment's payload):
//! - same Ethernet header, IPv4 header without options, not fragmented, same
//!   TOS, TTL, DF, addresses; IP IDs counting up by one or all the same;
//! - same ports, acknowledgement, window, header length and options (timestamps
//!   included), flags ACK and nothing else but PSH; PSH ends a run;
//! - each sequence number follows on from the one before; every payload but the
//!   last the same length, the last no longer; at most [`MAX_RUN`] segments and
//!   64 KiB of IPv4 datagram;
//! - every segment's IPv4 and TCP checksums verified first: the superframe is
//!   handed over with a partial checksum, which the receiving stack trusts, so a
//!   segment damaged on the wire must not be folded into it. A segment that fails
//!   goes alone, unchanged, for the receiver to drop.
//!
//! Pure functions over byte slices: [`Tcp4Seg::parse`] reads one segment,
//! [`Tcp4Run::push`] decides whether it extends a run, [`Tcp4Run::finish`]
//! rewrites the first segment's headers for the whole run. The port keeps the
//! segments where they are and writes the first one's headers and payload, then
//! the other payloads, in one gather write.

use crate::buf::{Meta, Packet};
use crate::port::gso::set_ipv4_len_id;
use crate::sys::tun::VnetHdr;
use crate::wire::checksum;
use crate::wire::vxlan::HEADER_LEN as VXLAN_LEN;

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const TCP_AT: usize = ETH_LEN + IP_LEN;
const TCP_MIN: usize = 20;
const PROTO_TCP: u8 = 6;

/// The most segments in one run: a 64 KiB superframe of 1448-byte segments is
/// 45; small segments stop here rather than build a long gather list.
pub const MAX_RUN: usize = 64;

/// The longest IPv4 datagram a run may make (its total-length field).
const MAX_DATAGRAM: usize = 65_535;

// TCP flag bits in byte 13 of the header.
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

/// Where a TCP/IPv4 segment that may join a run keeps what the run compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp4Seg {
    /// Offset of the payload: Ethernet, IPv4 and TCP headers before it.
    pub payload_at: usize,
    /// Payload bytes (at least 1).
    pub payload_len: usize,
    pub seq: u32,
    pub ip_id: u16,
    /// TCP flags: ACK, perhaps PSH.
    pub flags: u8,
}

impl Tcp4Seg {
    /// Reads `frame` as a segment that may join a run: Ethernet, IPv4 without
    /// options or fragmentation, TCP with a payload and only ACK (and PSH) set,
    /// no trailing bytes, both checksums valid. `None`: it goes alone.
    pub fn parse(frame: &[u8]) -> Option<Tcp4Seg> {
        Tcp4Seg::parse_checked(frame, false)
    }

    /// [`Tcp4Seg::parse`] of a packet: its TCP checksum is not summed again
    /// when its metadata says it is known good
    /// ([`Meta::FLAG_L4_CSUM_OK`](crate::buf::Meta::FLAG_L4_CSUM_OK)).
    pub fn of(p: &Packet) -> Option<Tcp4Seg> {
        Tcp4Seg::parse_checked(p.data(), p.meta.flags & Meta::FLAG_L4_CSUM_OK != 0)
    }

    fn parse_checked(frame: &[u8], csum_ok: bool) -> Option<Tcp4Seg> {
        let ip: &[u8; IP_LEN] = frame.get(ETH_LEN..TCP_AT)?.try_into().ok()?;
        if frame[12..14] != [0x08, 0x00] || ip[0] != 0x45 || ip[9] != PROTO_TCP {
            return None;
        }
        // Neither MF nor a fragment offset (DF is compared between segments).
        if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
            return None;
        }
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if total != frame.len() - ETH_LEN || !checksum::verify20(ip) {
            return None;
        }
        let tcp = frame.get(TCP_AT..TCP_AT + TCP_MIN)?;
        let flags = tcp[13];
        if flags & !TCP_PSH != TCP_ACK {
            return None;
        }
        let tcp_len = usize::from(tcp[12] >> 4) * 4;
        let payload_at = TCP_AT + tcp_len;
        if tcp_len < TCP_MIN || payload_at >= frame.len() {
            return None;
        }
        let l4_len = (frame.len() - TCP_AT) as u16;
        let pseudo = pseudo_sum(ip, l4_len);
        if !csum_ok
            && checksum::fold(u64::from(pseudo) + u64::from(checksum::sum(&frame[TCP_AT..])))
                != 0xffff
        {
            return None;
        }
        Some(Tcp4Seg {
            payload_at,
            payload_len: frame.len() - payload_at,
            seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            ip_id: u16::from_be_bytes([ip[4], ip[5]]),
            flags,
        })
    }
}

/// Sum of the TCP pseudo header for an IPv4 header and a TCP length, folded.
fn pseudo_sum(ip: &[u8; IP_LEN], l4_len: u16) -> u16 {
    let w = |i: usize| u64::from(u16::from_be_bytes([ip[i], ip[i + 1]]));
    checksum::fold(w(12) + w(14) + w(16) + w(18) + u64::from(PROTO_TCP) + u64::from(l4_len))
}

/// A run of segments being joined: the first, the last, and how much payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp4Run {
    first: Tcp4Seg,
    last: Tcp4Seg,
    count: usize,
    payload: usize,
}

impl Tcp4Run {
    /// A run of one segment.
    pub fn start(first: Tcp4Seg) -> Tcp4Run {
        Tcp4Run {
            first,
            last: first,
            count: 1,
            payload: first.payload_len,
        }
    }

    /// Segments in the run.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Offset of the payload in every segment of the run.
    pub fn payload_at(&self) -> usize {
        self.first.payload_at
    }

    /// Adds `seg` (read from `frame`) to the run if it continues it; `head` is the
    /// first segment's frame. False, run unchanged: `seg` starts its own.
    pub fn push(&mut self, head: &[u8], frame: &[u8], seg: &Tcp4Seg) -> bool {
        let (first, last) = (&self.first, &self.last);
        let follows = self.count < MAX_RUN
            && last.flags & TCP_PSH == 0
            && last.payload_len == first.payload_len
            && seg.payload_len <= first.payload_len
            && seg.payload_at == first.payload_at
            && seg.seq == last.seq.wrapping_add(last.payload_len as u32)
            && (seg.ip_id == last.ip_id.wrapping_add(1) || seg.ip_id == last.ip_id)
            && first.payload_at - ETH_LEN + self.payload + seg.payload_len <= MAX_DATAGRAM;
        if !follows || !same_flow(head, frame, first.payload_at) {
            return false;
        }
        self.last = *seg;
        self.count += 1;
        self.payload += seg.payload_len;
        true
    }

    /// Rewrites `head` (the first segment's frame) to head the whole run: IPv4
    /// total length and checksum, PSH if the last segment had it, the TCP
    /// checksum field partial (pseudo header only, as a sender with checksum
    /// offload leaves it). Returns the virtio-net header to write it with.
    /// A run of one segment is left as it is (no GSO header needed).
    pub fn finish(&self, head: &mut [u8]) -> VnetHdr {
        if self.count == 1 {
            return VnetHdr::default();
        }
        let at = self.first.payload_at;
        let total = (at - ETH_LEN + self.payload) as u16;
        head[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
        head[ETH_LEN + 10..ETH_LEN + 12].fill(0);
        let ip: &mut [u8; IP_LEN] = (&mut head[ETH_LEN..TCP_AT]).try_into().expect("20 bytes");
        let csum = !checksum::sum20(ip);
        ip[10..12].copy_from_slice(&csum.to_be_bytes());
        let pseudo = pseudo_sum(ip, total - IP_LEN as u16);
        head[TCP_AT + 13] |= self.last.flags & TCP_PSH;
        head[TCP_AT + 16..TCP_AT + 18].copy_from_slice(&pseudo.to_be_bytes());
        VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: VnetHdr::GSO_TCPV4,
            hdr_len: at as u16,
            gso_size: self.first.payload_len as u16,
            csum_start: TCP_AT as u16,
            csum_offset: 16,
            num_buffers: 0,
        }
    }
}

/// An IPv4/UDP datagram that may join a UDP superframe (`UDP_SEGMENT` GSO):
/// the outer datagram of a VXLAN packet, whose payload (VXLAN header and inner
/// frame) is carried as it is. Unlike TCP, any datagrams with the same headers
/// may be joined, whatever they carry: the kernel, or the NIC, cuts the payload
/// back at the same boundaries and gives each piece a copy of the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp4Seg {
    /// UDP payload bytes.
    pub payload_len: usize,
}

/// Ethernet, IPv4 without options and UDP: where a UDP datagram's payload starts.
pub const UDP_PAYLOAD_AT: usize = TCP_AT + 8;

impl Udp4Seg {
    /// Reads `frame` as a datagram that may join a UDP superframe: Ethernet,
    /// IPv4 without options or fragmentation, UDP whose length matches, a
    /// payload. `None`: it goes alone.
    pub fn parse(frame: &[u8]) -> Option<Udp4Seg> {
        let ip: &[u8; IP_LEN] = frame.get(ETH_LEN..TCP_AT)?.try_into().ok()?;
        if frame[12..14] != [0x08, 0x00] || ip[0] != 0x45 || ip[9] != 17 {
            return None;
        }
        if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
            return None;
        }
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let udp = frame.get(TCP_AT..UDP_PAYLOAD_AT)?;
        let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        if total != frame.len() - ETH_LEN
            || udp_len != total - IP_LEN
            || frame.len() <= UDP_PAYLOAD_AT
        {
            return None;
        }
        Some(Udp4Seg {
            payload_len: frame.len() - UDP_PAYLOAD_AT,
        })
    }
}

/// A run of UDP datagrams being joined into one superframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp4Run {
    first: Udp4Seg,
    last: Udp4Seg,
    count: usize,
    payload: usize,
}

impl Udp4Run {
    pub fn start(first: Udp4Seg) -> Udp4Run {
        Udp4Run {
            first,
            last: first,
            count: 1,
            payload: first.payload_len,
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Adds `seg` (read from `frame`) if it has `head`'s headers, the run's
    /// payload size (or less, ending the run) and room below 64 KiB.
    pub fn push(&mut self, head: &[u8], frame: &[u8], seg: &Udp4Seg) -> bool {
        let follows = self.count < MAX_RUN
            && self.last.payload_len == self.first.payload_len
            && seg.payload_len <= self.first.payload_len
            && IP_LEN + 8 + self.payload + seg.payload_len <= MAX_DATAGRAM;
        let ip = ETH_LEN;
        let same = head[..ETH_LEN] == frame[..ETH_LEN]
            && head[ip + 1] == frame[ip + 1]
            && head[ip + 6] & 0x40 == frame[ip + 6] & 0x40
            && head[ip + 8..ip + 10] == frame[ip + 8..ip + 10]
            && head[ip + 12..TCP_AT + 4] == frame[ip + 12..TCP_AT + 4];
        if !follows || !same {
            return false;
        }
        self.last = *seg;
        self.count += 1;
        self.payload += seg.payload_len;
        true
    }

    /// Rewrites `head` for the whole run: IPv4 total length and checksum, UDP
    /// length, the UDP checksum partial (pseudo header only; the kernel or the
    /// NIC completes it in each piece). Returns the virtio-net header.
    pub fn finish(&self, head: &mut [u8]) -> VnetHdr {
        if self.count == 1 {
            return VnetHdr::default();
        }
        udp_superframe_head(head, self.payload, self.first.payload_len)
    }
}

/// Rewrites `head` (Ethernet, IPv4 without options, UDP) to head a UDP
/// superframe of `payload` bytes to be cut into `gso_size`-byte pieces: IPv4
/// total length and checksum, UDP length, the UDP checksum partial (pseudo
/// header only; the kernel or the NIC completes it in each piece). Returns the
/// virtio-net header to send it with.
pub fn udp_superframe_head(head: &mut [u8], payload: usize, gso_size: usize) -> VnetHdr {
    let udp_len = (8 + payload) as u16;
    let total = IP_LEN as u16 + udp_len;
    head[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
    head[ETH_LEN + 10..ETH_LEN + 12].fill(0);
    let ip: &mut [u8; IP_LEN] = (&mut head[ETH_LEN..TCP_AT]).try_into().expect("20 bytes");
    let csum = !checksum::sum20(ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let w = |i: usize| u64::from(u16::from_be_bytes([ip[i], ip[i + 1]]));
    let pseudo = checksum::fold(w(12) + w(14) + w(16) + w(18) + 17 + u64::from(udp_len));
    head[TCP_AT + 4..TCP_AT + 6].copy_from_slice(&udp_len.to_be_bytes());
    head[TCP_AT + 6..TCP_AT + 8].copy_from_slice(&pseudo.to_be_bytes());
    VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: VnetHdr::GSO_UDP_L4,
        hdr_len: UDP_PAYLOAD_AT as u16,
        gso_size: gso_size as u16,
        csum_start: TCP_AT as u16,
        csum_offset: 6,
        num_buffers: 0,
    }
}

/// Why a UDP superframe received could not be cut into datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UdpGsoError {
    #[error("UDP superframe headers are not Ethernet/IPv4/UDP (or are truncated)")]
    BadHeaders,
    #[error("UDP segment size {gso_size} for {payload} payload bytes: expected 1 or more and at most 128 pieces")]
    BadSegmentSize { gso_size: usize, payload: usize },
    #[error("UDP piece of {len} bytes does not fit a {room}-byte buffer")]
    TooLong { len: usize, room: usize },
}

/// The layout of a UDP superframe received (`GSO_UDP_L4`): where its payload
/// starts and how it is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp4Split {
    payload_at: usize,
    payload_len: usize,
    gso_size: usize,
}

impl Udp4Split {
    /// Checks an Ethernet/IPv4/UDP superframe of `frame.len()` bytes (IPv4
    /// options allowed) and a piece size; each piece must fit `room` bytes.
    pub fn parse(frame: &[u8], gso_size: u16, room: usize) -> Result<Udp4Split, UdpGsoError> {
        let bad = UdpGsoError::BadHeaders;
        let ip = frame.get(ETH_LEN..).ok_or(bad)?;
        if frame.get(12..14) != Some(&[0x08, 0x00][..]) || ip.first().map(|b| b >> 4) != Some(4) {
            return Err(bad);
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ihl < IP_LEN || ip.get(9) != Some(&17) {
            return Err(bad);
        }
        let payload_at = ETH_LEN + ihl + 8;
        if frame.len() <= payload_at {
            return Err(bad);
        }
        let payload_len = frame.len() - payload_at;
        let gso_size = usize::from(gso_size);
        if gso_size == 0 || payload_len.div_ceil(gso_size) > 128 {
            return Err(UdpGsoError::BadSegmentSize {
                gso_size,
                payload: payload_len,
            });
        }
        let need = payload_at + gso_size.min(payload_len);
        if need > room {
            return Err(UdpGsoError::TooLong { len: need, room });
        }
        Ok(Udp4Split {
            payload_at,
            payload_len,
            gso_size,
        })
    }

    /// How many datagrams it makes.
    pub fn count(&self) -> usize {
        self.payload_len.div_ceil(self.gso_size)
    }

    /// Writes datagram `i` (headers and its piece of payload) into `out`, which
    /// [`Udp4Split::parse`] checked is long enough; returns its length. IPv4
    /// total length, ID (+i) and checksum and the UDP length are set; the UDP
    /// checksum is 0 (none), as VXLAN senders leave it.
    pub fn write(&self, frame: &[u8], i: usize, out: &mut [u8]) -> usize {
        let at = self.payload_at;
        let start = at + i * self.gso_size;
        let len = self.gso_size.min(frame.len() - start);
        out[..at].copy_from_slice(&frame[..at]);
        out[at..at + len].copy_from_slice(&frame[start..start + len]);
        let ip_at = ETH_LEN;
        let ihl = at - 8 - ETH_LEN;
        let id = u16::from_be_bytes([frame[ip_at + 4], frame[ip_at + 5]]).wrapping_add(i as u16);
        set_ipv4_len_id(&mut out[ip_at..ip_at + ihl], (ihl + 8 + len) as u16, id);
        let udp = ip_at + ihl;
        out[udp + 4..udp + 6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
        out[udp + 6..udp + 8].fill(0);
        at + len
    }
}

/// A VXLAN UDP superframe made into one VXLAN packet that carries a TCP
/// superframe ([`Udp4Split::join_vxlan_tcp`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanTcpJoin {
    /// The frame's length now.
    pub len: usize,
    /// Payload bytes of each inner segment: the inner superframe's MSS.
    pub gso_size: u16,
    /// Where the inner IPv4 header starts.
    pub inner_ip_at: usize,
    /// Segments it carries.
    pub segments: usize,
}

impl Udp4Split {
    /// Turns a UDP superframe whose pieces are VXLAN packets (to `vxlan_port`)
    /// carrying consecutive segments of one TCP flow into one VXLAN packet
    /// whose inner frame is a TCP superframe of them, in place: the first piece
    /// keeps its headers, the others' payloads move up behind it. The receiving
    /// node then routes, polices and writes one packet, not each segment.
    ///
    /// Every piece must carry the first one's VXLAN header and continue its run
    /// by the rules GRO joins segments by ([`Tcp4Run::push`]); `csum_ok` says
    /// the inner TCP checksums are known good (a sender on this host), else
    /// each is verified, since the superframe leaves with a partial checksum
    /// the pod's stack trusts. `None`, `frame` untouched, when any piece does
    /// not: the caller cuts it into datagrams as before. The outer IPv4 length
    /// and checksum and the UDP length are rewritten, the UDP checksum is 0
    /// (none), as VXLAN senders leave it.
    pub fn join_vxlan_tcp(
        &self,
        frame: &mut [u8],
        vxlan_port: u16,
        csum_ok: bool,
    ) -> Option<VxlanTcpJoin> {
        let (at, g) = (self.payload_at, self.gso_size);
        let count = self.count();
        let udp = at - 8;
        if frame.len() != at + self.payload_len
            || count < 2
            || frame[udp + 2..udp + 4] != vxlan_port.to_be_bytes()
        {
            return None;
        }
        let len = frame.len();
        let piece = |k: usize| at + k * g..(at + (k + 1) * g).min(len);
        let f: &[u8] = frame;
        let first = &f[piece(0)];
        let vx = first.get(..VXLAN_LEN)?;
        let inner0 = &first[VXLAN_LEN..];
        let seg0 = Tcp4Seg::parse_checked(inner0, csum_ok)?;
        let skip = VXLAN_LEN + seg0.payload_at;
        let mut run = Tcp4Run::start(seg0);
        let mut end = piece(0).end;
        for k in 1..count {
            let p = &f[piece(k)];
            if p.get(..VXLAN_LEN)? != vx {
                return None;
            }
            let inner = &p[VXLAN_LEN..];
            let seg = Tcp4Seg::parse_checked(inner, csum_ok)?;
            // Same header length as the first piece: `push` checks it.
            if !run.push(inner0, inner, &seg) {
                return None;
            }
            end += seg.payload_len;
        }
        if end - ETH_LEN > MAX_DATAGRAM {
            return None;
        }
        // Every piece checked: now move the payloads up.
        let mut to = piece(0).end;
        for k in 1..count {
            let r = piece(k);
            let n = r.len() - skip;
            frame.copy_within(r.start + skip..r.end, to);
            to += n;
        }
        debug_assert_eq!(to, end);
        let inner_at = at + VXLAN_LEN;
        let h = run.finish(&mut frame[inner_at..end]);
        let id = u16::from_be_bytes([frame[ETH_LEN + 4], frame[ETH_LEN + 5]]);
        set_ipv4_len_id(&mut frame[ETH_LEN..udp], (end - ETH_LEN) as u16, id);
        frame[udp + 4..udp + 6].copy_from_slice(&((end - udp) as u16).to_be_bytes());
        frame[udp + 6..udp + 8].fill(0);
        Some(VxlanTcpJoin {
            len: end,
            gso_size: h.gso_size,
            inner_ip_at: inner_at + ETH_LEN,
            segments: count,
        })
    }
}

/// A run found at the head of a batch of packets and prepared for sending as
/// one superframe: how many packets, the virtio-net header to send the first
/// (rewritten) one with, and where the others' payload starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    pub count: usize,
    pub hdr: VnetHdr,
    pub payload_at: usize,
}

/// Joins the TCP run that starts at `pkts[0]` (`first` is its parse) and
/// rewrites `pkts[0]` to head it. Also returns the parse of the packet after
/// the run, if one was read, so the caller need not read it again.
pub fn join_tcp(pkts: &mut [Packet], first: Tcp4Seg) -> (Joined, Option<Option<Tcp4Seg>>) {
    let mut run = Tcp4Run::start(first);
    let mut after = None;
    for p in &pkts[1..] {
        let seg = Tcp4Seg::of(p);
        match seg {
            Some(ref n) if run.push(pkts[0].data(), p.data(), n) => {}
            _ => {
                after = Some(seg);
                break;
            }
        }
    }
    let hdr = run.finish(pkts[0].data_mut());
    let joined = Joined {
        count: run.count(),
        hdr,
        payload_at: run.payload_at(),
    };
    (joined, after)
}

/// Joins the run of UDP datagrams with `pkts[0]`'s headers that starts there
/// (`first` is its parse) and rewrites `pkts[0]` to head it.
pub fn join_udp(pkts: &mut [Packet], first: Udp4Seg) -> Joined {
    let mut run = Udp4Run::start(first);
    for p in &pkts[1..] {
        match Udp4Seg::parse(p.data()) {
            Some(s) if run.push(pkts[0].data(), p.data(), &s) => {}
            _ => break,
        }
    }
    let hdr = run.finish(pkts[0].data_mut());
    Joined {
        count: run.count(),
        hdr,
        payload_at: UDP_PAYLOAD_AT,
    }
}

/// Whether two segments' headers agree on everything but what changes from one
/// segment to the next (IP length, ID and checksum; sequence number; TCP
/// checksum; PSH). Both are known to have `payload_at` bytes of headers.
fn same_flow(a: &[u8], b: &[u8], payload_at: usize) -> bool {
    let ip = ETH_LEN;
    a[..ETH_LEN] == b[..ETH_LEN]
        && a[ip + 1] == b[ip + 1] // TOS
        && a[ip + 6] & 0x40 == b[ip + 6] & 0x40 // DF
        && a[ip + 8..ip + 10] == b[ip + 8..ip + 10] // TTL, protocol
        && a[ip + 12..TCP_AT] == b[ip + 12..TCP_AT] // addresses
        && a[TCP_AT..TCP_AT + 4] == b[TCP_AT..TCP_AT + 4] // ports
        && a[TCP_AT + 8..TCP_AT + 13] == b[TCP_AT + 8..TCP_AT + 13] // ack, data offset
        && a[TCP_AT + 14..TCP_AT + 16] == b[TCP_AT + 14..TCP_AT + 16] // window
        && a[TCP_AT + 18..payload_at] == b[TCP_AT + 18..payload_at] // urgent, options
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::gso::Tcp4Gso;

    fn superframe(payload: usize, tcp_options: &[u8], flags: u8) -> Vec<u8> {
        let data: Vec<u8> = (0..payload).map(|i| (i * 7 + 3) as u8).collect();
        let mut f = Vec::new();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let tcp_len = TCP_MIN + tcp_options.len();
        let total = (IP_LEN + tcp_len + payload) as u16;
        let mut ip = [0u8; IP_LEN];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = PROTO_TCP;
        ip[12..16].copy_from_slice(&[198, 19, 0, 2]);
        ip[16..20].copy_from_slice(&[198, 19, 1, 2]);
        let c = !checksum::sum20(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut tcp = vec![0u8; TCP_MIN];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&0xffff_f000u32.to_be_bytes());
        tcp[8..12].copy_from_slice(&77u32.to_be_bytes());
        tcp[12] = ((tcp_len / 4) as u8) << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&502u16.to_be_bytes());
        tcp.extend_from_slice(tcp_options);
        f.extend_from_slice(&tcp);
        f.extend_from_slice(&data);
        f
    }

    /// Cuts a superframe into segments with the GSO code (the sender's side).
    fn segments(frame: &[u8], mss: u16) -> Vec<Vec<u8>> {
        let g = Tcp4Gso::parse(frame, mss).unwrap();
        (0..g.count())
            .map(|i| {
                let mut buf = vec![0u8; g.max_segment_len()];
                let n = g.write_segment(frame, i, &mut buf).unwrap();
                buf.truncate(n);
                buf
            })
            .collect()
    }

    /// Joins what it can, as the TAP port does; returns each run's frame bytes
    /// (head then the other payloads) and virtio-net header.
    fn join(frames: &[Vec<u8>]) -> Vec<(Vec<u8>, VnetHdr)> {
        let mut frames = frames.to_vec();
        let mut out = Vec::new();
        let mut i = 0;
        while i < frames.len() {
            let mut j = i + 1;
            let mut run = None;
            if let Some(s) = Tcp4Seg::parse(&frames[i]) {
                let mut r = Tcp4Run::start(s);
                while j < frames.len() {
                    match Tcp4Seg::parse(&frames[j]) {
                        Some(n) if r.push(&frames[i], &frames[j], &n) => j += 1,
                        _ => break,
                    }
                }
                run = Some(r);
            }
            let h = run.map(|r| r.finish(&mut frames[i])).unwrap_or_default();
            let mut whole = frames[i].clone();
            if let Some(r) = run {
                for f in &frames[i + 1..j] {
                    whole.extend_from_slice(&f[r.payload_at()..]);
                }
            }
            out.push((whole, h));
            i = j;
        }
        out
    }

    /// Completes the superframe's partial TCP checksum as the receiver would
    /// (sum from `csum_start`, inverted, stored at `csum_offset`) and checks the
    /// result against the pseudo header of the whole superframe.
    fn completes(frame: &[u8], h: &VnetHdr) -> bool {
        let mut f = frame.to_vec();
        let (start, at) = (
            usize::from(h.csum_start),
            usize::from(h.csum_start + h.csum_offset),
        );
        let c = !checksum::sum(&f[start..]);
        f[at..at + 2].copy_from_slice(&c.to_be_bytes());
        let ip: [u8; IP_LEN] = f[ETH_LEN..TCP_AT].try_into().unwrap();
        let pseudo = pseudo_sum(&ip, (f.len() - TCP_AT) as u16);
        checksum::fold(u64::from(pseudo) + u64::from(checksum::sum(&f[TCP_AT..]))) == 0xffff
    }

    #[test]
    fn segments_of_one_superframe_join_back_into_it() {
        for (payload, mss, opts) in [
            (
                65_000usize,
                1448u16,
                &[1u8, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2][..],
            ),
            (10_000, 1460, &[][..]),
            (4_000, 1000, &[][..]),
        ] {
            let sf = superframe(payload, opts, TCP_ACK | TCP_PSH);
            let segs = segments(&sf, mss);
            let runs = join(&segs);
            assert_eq!(runs.len(), 1, "payload {payload} mss {mss}");
            let (whole, h) = &runs[0];
            assert_eq!(whole.len(), sf.len());
            assert_eq!(h.gso_type, VnetHdr::GSO_TCPV4);
            assert_eq!(usize::from(h.gso_size), usize::from(mss));
            assert_eq!(usize::from(h.hdr_len), TCP_AT + TCP_MIN + opts.len());
            // Payload and all but the changing fields as the sender had them.
            assert_eq!(
                whole[usize::from(h.hdr_len)..],
                sf[usize::from(h.hdr_len)..]
            );
            assert_eq!(whole[TCP_AT + 13], TCP_ACK | TCP_PSH);
            assert!(checksum::verify20(
                whole[ETH_LEN..TCP_AT].try_into().unwrap()
            ));
            assert!(completes(whole, h));
            // And the kernel's own segmentation of it gives the segments back.
            let again = segments(whole, h.gso_size);
            assert_eq!(again.len(), segs.len());
            for (a, b) in again.iter().zip(&segs) {
                assert_eq!(a[TCP_AT..], b[TCP_AT..]);
            }
        }
    }

    #[test]
    fn a_single_segment_is_left_alone() {
        let f = superframe(100, &[], TCP_ACK);
        let runs = join(std::slice::from_ref(&f));
        assert_eq!(runs, vec![(f, VnetHdr::default())]);
    }

    #[test]
    fn psh_gaps_flows_and_sizes_end_a_run() {
        let segs = segments(&superframe(6000, &[], TCP_ACK | TCP_PSH), 1000);
        // PSH in the middle: the run ends after it.
        let mut s = segs.clone();
        s[2][TCP_AT + 13] |= TCP_PSH;
        fix_tcp(&mut s[2]);
        assert_eq!(counts(&s), vec![3, 3]);
        // A lost segment: no join across the gap.
        let mut s = segs.clone();
        s.remove(3);
        assert_eq!(counts(&s), vec![3, 2]);
        // Reordered.
        let mut s = segs.clone();
        s.swap(1, 2);
        assert_eq!(counts(&s), vec![1, 1, 1, 3]);
        // Another flow in between.
        let mut s = segs.clone();
        let mut other = s[3].clone();
        other[TCP_AT + 1] ^= 1;
        fix_tcp(&mut other);
        s.insert(3, other);
        assert_eq!(counts(&s), vec![3, 1, 3]);
        // A short segment ends a run (only the last may be short).
        let short = segments(&superframe(2500, &[], TCP_ACK), 1000);
        let mut s = short.clone();
        s.extend(segments(&superframe(2500, &[], TCP_ACK), 1000));
        assert_eq!(counts(&s)[0], 3);
        // A different window, TTL or ack: separate runs.
        for at in [TCP_AT + 15, ETH_LEN + 8, TCP_AT + 11] {
            let mut s = segs.clone();
            for f in &mut s[3..] {
                f[at] ^= 1;
                fix_ip(f);
                fix_tcp(f);
            }
            assert_eq!(counts(&s), vec![3, 3], "byte {at}");
        }
    }

    #[test]
    fn damaged_or_unusual_segments_go_alone() {
        let segs = segments(&superframe(5000, &[], TCP_ACK), 1000);
        // A flipped payload bit: the TCP checksum fails.
        let mut s = segs.clone();
        s[2][TCP_AT + 30] ^= 0x10;
        assert_eq!(counts(&s), vec![2, 1, 2]);
        // A bad IP checksum.
        let mut s = segs.clone();
        s[2][ETH_LEN + 10] ^= 1;
        assert_eq!(counts(&s), vec![2, 1, 2]);
        // SYN, FIN, RST, URG; a fragment; padding after the datagram; no payload.
        for (at, bits) in [
            (TCP_AT + 13, 0x02u8),
            (TCP_AT + 13, 0x01),
            (TCP_AT + 13, 0x04),
            (TCP_AT + 13, 0x20),
        ] {
            let mut s = segs.clone();
            s[2][at] |= bits;
            fix_tcp(&mut s[2]);
            assert_eq!(counts(&s), vec![2, 1, 2], "flags {bits:#x}");
        }
        let mut s = segs.clone();
        s[2][ETH_LEN + 6] |= 0x20;
        fix_ip(&mut s[2]);
        assert_eq!(counts(&s), vec![2, 1, 2]);
        let mut s = segs.clone();
        s[2].push(0);
        assert_eq!(counts(&s), vec![2, 1, 2]);
        let ack = superframe(0, &[], TCP_ACK);
        assert_eq!(Tcp4Seg::parse(&ack), None);
    }

    #[test]
    fn a_checksum_known_good_is_not_summed_again() {
        let segs = segments(&superframe(3000, &[], TCP_ACK), 1000);
        let mut bad = segs[1].clone();
        bad[TCP_AT + 30] ^= 0x10;
        let mut p = Packet::with_capacity(2240);
        assert!(p.load(&bad));
        assert_eq!(Tcp4Seg::of(&p), None, "summed: the damage is seen");
        p.meta.flags |= Meta::FLAG_L4_CSUM_OK;
        assert_eq!(Tcp4Seg::of(&p), Tcp4Seg::parse(&segs[1]), "taken on trust");
        // The IPv4 header is still checked.
        bad[ETH_LEN + 10] ^= 1;
        assert!(p.load(&bad));
        p.meta.flags |= Meta::FLAG_L4_CSUM_OK;
        assert_eq!(Tcp4Seg::of(&p), None);
        // A new use of the buffer forgets the flag.
        assert!(p.load(&segs[1]));
        assert_eq!(p.meta.flags, 0);
    }

    #[test]
    fn runs_stop_below_64k_and_at_max_run() {
        // 65,000 bytes as 100-byte segments: more than MAX_RUN of them.
        let segs = segments(&superframe(65_000, &[], TCP_ACK), 100);
        let c = counts(&segs);
        assert!(c.iter().all(|&n| n <= MAX_RUN));
        assert_eq!(c[0], MAX_RUN);
        assert_eq!(c.iter().sum::<usize>(), segs.len());
        // A stream of 1460-byte segments runs on past 64 KiB: the datagram
        // limit ends the first run at 44 segments (64,240 bytes + headers).
        let mut s = segments(&superframe(64_240, &[], TCP_ACK), 1460);
        let next = segments(&superframe(2920, &[], TCP_ACK), 1460);
        let seq_after = 0xffff_f000u32.wrapping_add(64_240);
        for (k, mut f) in next.into_iter().enumerate() {
            let seq = u32::from_be_bytes(f[TCP_AT + 4..TCP_AT + 8].try_into().unwrap());
            let seq = seq.wrapping_sub(0xffff_f000).wrapping_add(seq_after);
            f[TCP_AT + 4..TCP_AT + 8].copy_from_slice(&seq.to_be_bytes());
            let id = 0x1234u16 + 44 + k as u16;
            f[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&id.to_be_bytes());
            fix_ip(&mut f);
            fix_tcp(&mut f);
            s.push(f);
        }
        assert_eq!(counts(&s), vec![44, 2]);
        for (whole, _) in join(&s) {
            assert!(whole.len() - ETH_LEN <= MAX_DATAGRAM);
        }
    }

    #[test]
    fn no_input_panics() {
        let base = superframe(3000, &[], TCP_ACK);
        for len in 0..base.len().min(200) {
            let f = &base[..len];
            if let Some(s) = Tcp4Seg::parse(f) {
                let mut r = Tcp4Run::start(s);
                let _ = r.push(f, f, &s);
            }
        }
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut f = base.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = x as usize % f.len();
                f[i] = (x >> 8) as u8;
            }
            let _ = join(&[f.clone(), base.clone(), f]);
        }
    }

    /// A UDP superframe as a sending node hands it over: each segment in a
    /// VXLAN packet (VNI 4096), the pieces back to back behind one outer
    /// Ethernet/IPv4/UDP header to port 4789. Returns it and its piece size.
    fn vxlan_superframe(segs: &[Vec<u8>]) -> (Vec<u8>, u16) {
        let g = VXLAN_LEN + segs[0].len();
        let mut f = vec![2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa, 0x08, 0x00];
        let mut ip = [0u8; IP_LEN];
        ip[0] = 0x45;
        ip[4..6].copy_from_slice(&0x4000u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
        ip[16..20].copy_from_slice(&[198, 18, 0, 2]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&50000u16.to_be_bytes());
        f.extend_from_slice(&4789u16.to_be_bytes());
        f.extend_from_slice(&[0; 4]);
        for s in segs {
            f.extend_from_slice(&[0x08, 0, 0, 0, 0, 0x10, 0, 0]);
            f.extend_from_slice(s);
        }
        (f, g as u16)
    }

    fn vxlan_join(f: &mut Vec<u8>, g: u16, csum_ok: bool) -> Option<VxlanTcpJoin> {
        let split = Udp4Split::parse(f, g, usize::MAX).unwrap();
        let j = split.join_vxlan_tcp(f, 4789, csum_ok)?;
        f.truncate(j.len);
        Some(j)
    }

    #[test]
    fn vxlan_pieces_of_one_flow_become_one_tcp_superframe() {
        let ts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        for (payload, mss, opts) in [(20_000, 1398, &ts[..]), (1398 * 3, 1398, &[][..])] {
            let segs = segments(&superframe(payload, opts, TCP_ACK | TCP_PSH), mss);
            let (mut f, g) = vxlan_superframe(&segs);
            let j = vxlan_join(&mut f, g, false).expect("joined");
            assert_eq!(j.segments, segs.len());
            assert_eq!(j.gso_size, mss);
            assert_eq!(j.inner_ip_at, 14 + 20 + 8 + VXLAN_LEN + 14);
            // The outer headers describe the packet as it is now.
            let ip: [u8; IP_LEN] = f[ETH_LEN..TCP_AT].try_into().unwrap();
            assert!(checksum::verify20(&ip));
            assert_eq!(
                usize::from(u16::from_be_bytes([ip[2], ip[3]])),
                f.len() - ETH_LEN
            );
            assert_eq!(
                usize::from(u16::from_be_bytes([f[TCP_AT + 4], f[TCP_AT + 5]])),
                f.len() - TCP_AT
            );
            assert_eq!(f[TCP_AT + 6..TCP_AT + 8], [0, 0]);
            assert_eq!(
                f[UDP_PAYLOAD_AT..UDP_PAYLOAD_AT + 8],
                [0x08, 0, 0, 0, 0, 0x10, 0, 0]
            );
            // The inner superframe cuts back into exactly the segments sent,
            // and its partial checksum completes.
            let inner = &f[j.inner_ip_at - ETH_LEN..];
            assert_eq!(segments(inner, j.gso_size), segs);
            let hdr = VnetHdr {
                csum_start: TCP_AT as u16,
                csum_offset: 16,
                ..VnetHdr::default()
            };
            assert!(completes(inner, &hdr));
        }
    }

    #[test]
    fn vxlan_pieces_that_are_not_one_run_are_left_to_cut() {
        let segs = segments(&superframe(8 * 1398, &[], TCP_ACK), 1398);
        let (base, g) = vxlan_superframe(&segs);
        let refused = |f: &mut Vec<u8>, csum_ok: bool| {
            let before = f.clone();
            let r = vxlan_join(f, g, csum_ok);
            assert_eq!(*f, before, "refused, untouched");
            r.is_none()
        };
        // A payload byte damaged on the wire: verified unless known good.
        let mut f = base.clone();
        let at = UDP_PAYLOAD_AT + 3 * usize::from(g) + 100;
        f[at] ^= 0xff;
        assert!(refused(&mut f.clone(), false));
        assert!(vxlan_join(&mut f, g, true).is_some());
        // Another VNI, another flow, a segment missing, SYN, another port.
        let mut f = base.clone();
        f[UDP_PAYLOAD_AT + 2 * usize::from(g) + 5] = 0x11;
        assert!(refused(&mut f, true));
        let mut other = segs.clone();
        other[4][TCP_AT + 1] ^= 1;
        fix_tcp(&mut other[4]);
        assert!(refused(&mut vxlan_superframe(&other).0, false));
        let mut gap = segs.clone();
        gap.remove(2);
        assert!(refused(&mut vxlan_superframe(&gap).0, false));
        let mut syn = segs.clone();
        syn[5][TCP_AT + 13] |= 0x02;
        fix_tcp(&mut syn[5]);
        assert!(refused(&mut vxlan_superframe(&syn).0, false));
        let mut f = base.clone();
        let split = Udp4Split::parse(&f, g, usize::MAX).unwrap();
        assert!(split.join_vxlan_tcp(&mut f, 8472, true).is_none());
        // One piece: nothing to join.
        let (mut one, g1) = vxlan_superframe(&segs[..1]);
        let split = Udp4Split::parse(&one, g1, usize::MAX).unwrap();
        assert!(split.join_vxlan_tcp(&mut one, 4789, true).is_none());
    }

    fn counts(frames: &[Vec<u8>]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < frames.len() {
            let mut n = 1;
            if let Some(s) = Tcp4Seg::parse(&frames[i]) {
                let mut r = Tcp4Run::start(s);
                while i + n < frames.len() {
                    match Tcp4Seg::parse(&frames[i + n]) {
                        Some(seg) if r.push(&frames[i], &frames[i + n], &seg) => n += 1,
                        _ => break,
                    }
                }
            }
            out.push(n);
            i += n;
        }
        out
    }

    fn fix_ip(f: &mut [u8]) {
        f[ETH_LEN + 10..ETH_LEN + 12].fill(0);
        let c = !checksum::sum20(f[ETH_LEN..TCP_AT].try_into().unwrap());
        f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
    }

    fn fix_tcp(f: &mut [u8]) {
        f[TCP_AT + 16..TCP_AT + 18].fill(0);
        let ip: [u8; IP_LEN] = f[ETH_LEN..TCP_AT].try_into().unwrap();
        let p = pseudo_sum(&ip, (f.len() - TCP_AT) as u16);
        let c = !checksum::fold(u64::from(p) + u64::from(checksum::sum(&f[TCP_AT..])));
        f[TCP_AT + 16..TCP_AT + 18].copy_from_slice(&c.to_be_bytes());
    }
}
