//! TCP segmentation in software for IPv4 superframes (GSO), the way the kernel's
//! `tcp_gso_segment` and VPP's `gso` node do it.
//!
//! A TAP with TSO negotiated hands over one Ethernet/IPv4/TCP frame of up to
//! 64 KiB whose payload is to be cut into `gso_size` pieces. Each segment gets a
//! copy of the headers (IPv4 and TCP options included) with:
//! - IPv4 total length of the segment, ID advanced by one per segment, header
//!   checksum recomputed;
//! - TCP sequence number advanced by the payload before it; FIN and PSH only on
//!   the last segment, CWR only on the first;
//! - the full TCP checksum (pseudo-header and segment), so every segment is a
//!   valid frame whatever the superframe's checksum field held (it is partial).
//!
//! Pure functions over byte slices: [`Tcp4Gso::parse`] validates the headers
//! once, then [`Tcp4Gso::write_segment`] writes any segment into a buffer. The
//! port decides where the buffers come from and can stop and resume between
//! segments.

use std::net::Ipv4Addr;

use crate::buf::Packet;
use crate::sys::tun::VnetHdr;
use crate::wire::checksum;

/// Bytes of the Ethernet header (no VLAN tag: pods send untagged frames).
pub const ETH_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const UDP_LEN: usize = 8;
const IPV4_MIN: usize = 20;
const TCP_MIN: usize = 20;

/// The most segments one superframe may turn into. A 64 KiB superframe with
/// the smallest MSS the kernel uses (536 bytes) is 123; more means a bogus
/// `gso_size` that would flood the pipeline with tiny frames.
pub const MAX_SEGMENTS: usize = 1024;

// TCP flag bits in byte 13 of the header.
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a superframe cannot be segmented. The port drops it whole and counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    #[error("superframe of {len} bytes is shorter than its headers: expected at least {need}")]
    Truncated { len: usize, need: usize },
    #[error("ethertype {ethertype:#06x}: expected IPv4 (0x0800)")]
    NotIpv4 { ethertype: u16 },
    #[error("IPv4 version/IHL byte {byte:#04x}: expected version 4 and IHL 5 to 15")]
    BadIpv4Header { byte: u8 },
    #[error("IPv4 total length {total}: expected {min} to {avail} (headers to frame end)")]
    BadTotalLength {
        total: usize,
        min: usize,
        avail: usize,
    },
    #[error("IP protocol {proto}: expected TCP (6)")]
    NotTcp { proto: u8 },
    #[error("IPv4 flags/fragment offset {frag:#06x}: expected an unfragmented packet")]
    Fragment { frag: u16 },
    #[error("TCP data offset {words} words: expected 5 to 15")]
    BadTcpHeader { words: u8 },
    #[error("GSO segment size {gso_size} for {payload} payload bytes: expected 1 or more and at most {MAX_SEGMENTS} segments")]
    BadSegmentSize { gso_size: u16, payload: usize },
    #[error("segment of {len} bytes does not fit a {room}-byte buffer")]
    SegmentTooLong { len: usize, room: usize },
    #[error("segment {index} of a superframe of {count} segments")]
    NoSuchSegment { index: usize, count: usize },
}

/// The validated layout of one IPv4/TCP superframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp4Gso {
    /// Where the TCP/IPv4 header starts: after the Ethernet header, or after
    /// outer headers (VXLAN, IPIP) that every segment also gets.
    ip_at: usize,
    ip_hdr_len: usize,
    tcp_hdr_len: usize,
    /// End of the IPv4 packet in the frame (bytes after it are padding).
    end: usize,
    gso_size: usize,
    count: usize,
    ip_id: u16,
    seq: u32,
    flags: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
}

impl Tcp4Gso {
    /// Checks the Ethernet, IPv4 and TCP headers of `frame` and how `gso_size`
    /// cuts its payload. A frame with no payload is one segment (headers only).
    pub fn parse(frame: &[u8], gso_size: u16) -> Result<Tcp4Gso, GsoError> {
        Tcp4Gso::parse_at(frame, ETH_LEN, gso_size)
    }

    /// [`Tcp4Gso::parse`] of a superframe whose TCP/IPv4 header starts `ip_at`
    /// bytes in. With `ip_at` past the Ethernet header, an outer IPv4 header
    /// follows the Ethernet header (and for VXLAN, UDP, VXLAN and the inner
    /// Ethernet header): every segment gets a copy of all of it, with the outer
    /// IPv4 (and UDP) lengths, ID and checksum its own.
    pub fn parse_at(frame: &[u8], ip_at: usize, gso_size: u16) -> Result<Tcp4Gso, GsoError> {
        let truncated = |need| GsoError::Truncated {
            len: frame.len(),
            need,
        };
        let Some(eth) = frame.first_chunk::<ETH_LEN>() else {
            return Err(truncated(ETH_LEN));
        };
        let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
        if ethertype != ETHERTYPE_IPV4 {
            return Err(GsoError::NotIpv4 { ethertype });
        }
        if ip_at > ETH_LEN {
            Tcp4Gso::check_outer(frame, ip_at)?;
        }
        let Some(ip) = frame.get(ip_at..).and_then(|b| b.first_chunk::<IPV4_MIN>()) else {
            return Err(truncated(ip_at + IPV4_MIN));
        };
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[0] >> 4 != 4 || ihl < IPV4_MIN {
            return Err(GsoError::BadIpv4Header { byte: ip[0] });
        }
        if ip[9] != PROTO_TCP {
            return Err(GsoError::NotTcp { proto: ip[9] });
        }
        let frag = u16::from_be_bytes([ip[6], ip[7]]);
        // DF (0x4000) is fine; MF or an offset is a fragment.
        if frag & 0x3fff != 0 {
            return Err(GsoError::Fragment { frag });
        }
        let tcp_at = ip_at + ihl;
        if frame.len() < tcp_at + TCP_MIN {
            return Err(truncated(tcp_at + TCP_MIN));
        }
        let words = frame[tcp_at + 12] >> 4;
        let tcp_hdr_len = usize::from(words) * 4;
        if tcp_hdr_len < TCP_MIN {
            return Err(GsoError::BadTcpHeader { words });
        }
        let hdrs = tcp_at + tcp_hdr_len;
        if frame.len() < hdrs {
            return Err(truncated(hdrs));
        }
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let avail = frame.len() - ip_at;
        let min = ihl + tcp_hdr_len;
        if total < min || total > avail {
            return Err(GsoError::BadTotalLength { total, min, avail });
        }
        let end = ip_at + total;
        let payload = end - hdrs;
        if gso_size == 0 || payload.div_ceil(usize::from(gso_size)) > MAX_SEGMENTS {
            return Err(GsoError::BadSegmentSize { gso_size, payload });
        }
        let t = &frame[tcp_at..];
        Ok(Tcp4Gso {
            ip_at,
            ip_hdr_len: ihl,
            tcp_hdr_len,
            end,
            gso_size: usize::from(gso_size),
            count: payload.div_ceil(usize::from(gso_size)).max(1),
            ip_id: u16::from_be_bytes([ip[4], ip[5]]),
            seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            flags: t[13],
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        })
    }

    /// How many segments the superframe makes.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Header bytes copied into every segment: Ethernet, any outer headers,
    /// IPv4 and TCP.
    pub fn header_len(&self) -> usize {
        self.ip_at + self.ip_hdr_len + self.tcp_hdr_len
    }

    /// Where the TCP header starts.
    pub fn tcp_at(&self) -> usize {
        self.ip_at + self.ip_hdr_len
    }

    /// Payload bytes per segment (the last may have fewer).
    pub fn gso_size(&self) -> usize {
        self.gso_size
    }

    /// The IPv4 total length of a full-sized segment (what must fit the MTU).
    pub fn segment_ip_len(&self) -> usize {
        self.ip_hdr_len + self.tcp_hdr_len + self.gso_size
    }

    /// Where segment `index`'s payload lies in the superframe.
    pub fn payload_range(&self, index: usize) -> std::ops::Range<usize> {
        let from = self.header_len() + index * self.gso_size;
        from.min(self.end)..(from + self.gso_size).min(self.end)
    }

    /// An outer IPv4 header (and UDP, if that is its protocol) in front of the
    /// TCP/IPv4 one at `ip_at`: checked enough that patching it stays in bounds.
    fn check_outer(frame: &[u8], ip_at: usize) -> Result<(), GsoError> {
        let Some(o) = frame.get(ETH_LEN..ip_at) else {
            return Err(GsoError::Truncated {
                len: frame.len(),
                need: ip_at,
            });
        };
        let ihl = usize::from(o.first().map_or(0, |b| b & 0x0f)) * 4;
        let byte = o.first().copied().unwrap_or(0);
        if byte >> 4 != 4 || ihl < IPV4_MIN || o.len() < ihl {
            return Err(GsoError::BadIpv4Header { byte });
        }
        if o[9] == PROTO_UDP && o.len() < ihl + UDP_LEN {
            return Err(GsoError::Truncated {
                len: frame.len(),
                need: ETH_LEN + ihl + UDP_LEN,
            });
        }
        Ok(())
    }

    /// TCP payload bytes in the whole superframe.
    pub fn payload_len(&self) -> usize {
        self.end - self.header_len()
    }

    /// The longest segment (the first): what each output buffer must hold.
    pub fn max_segment_len(&self) -> usize {
        self.header_len() + self.payload_len().min(self.gso_size)
    }

    /// Writes segment `index` (from 0) of the superframe `frame` (the one given to
    /// [`Tcp4Gso::parse`]) into the front of `out`; returns its length.
    pub fn write_segment(
        &self,
        frame: &[u8],
        index: usize,
        out: &mut [u8],
    ) -> Result<usize, GsoError> {
        let body = self.payload_range(index);
        let hdrs = self.header_len();
        let len = hdrs + body.len();
        let Some(seg) = out.get_mut(..len) else {
            return Err(GsoError::SegmentTooLong {
                len,
                room: out.len(),
            });
        };
        let (head, rest) = seg.split_at_mut(hdrs);
        self.copy_headers(frame, index, head)?;
        rest.copy_from_slice(&frame[body]);
        self.patch(head, rest, index);
        Ok(len)
    }

    /// Writes only segment `index`'s headers into the front of `out` (its
    /// checksums computed over the payload where it lies in `frame`); returns
    /// their length and where the payload is. The segment is those headers
    /// followed by that payload: a gather write sends it without a copy.
    pub fn write_headers(
        &self,
        frame: &[u8],
        index: usize,
        out: &mut [u8],
    ) -> Result<(usize, std::ops::Range<usize>), GsoError> {
        let hdrs = self.header_len();
        let Some(head) = out.get_mut(..hdrs) else {
            return Err(GsoError::SegmentTooLong {
                len: hdrs,
                room: out.len(),
            });
        };
        self.copy_headers(frame, index, head)?;
        let body = self.payload_range(index);
        self.patch(head, &frame[body.clone()], index);
        Ok((hdrs, body))
    }

    /// Copies the superframe's headers into `head` (exactly
    /// [`Tcp4Gso::header_len`] bytes), checking that `frame` is the parsed one.
    fn copy_headers(&self, frame: &[u8], index: usize, head: &mut [u8]) -> Result<(), GsoError> {
        if index >= self.count {
            return Err(GsoError::NoSuchSegment {
                index,
                count: self.count,
            });
        }
        // `frame` is the parsed one, so `end` is within it; a different, shorter
        // frame is refused rather than read past.
        if frame.len() < self.end {
            return Err(GsoError::Truncated {
                len: frame.len(),
                need: self.end,
            });
        }
        head.copy_from_slice(&frame[..head.len()]);
        Ok(())
    }

    /// Makes `head` (a copy of the superframe's headers) segment `index`'s,
    /// whose payload is `body`.
    fn patch(&self, head: &mut [u8], body: &[u8], index: usize) {
        let ip_at = self.ip_at;
        let tcp_at = ip_at + self.ip_hdr_len;
        let len = head.len() + body.len();
        let id = self.ip_id.wrapping_add(index as u16);
        set_ipv4_len_id(&mut head[ip_at..tcp_at], (len - ip_at) as u16, id);

        // TCP: sequence number, flags, checksum.
        let seq = self
            .seq
            .wrapping_add((index as u32).wrapping_mul(self.gso_size as u32));
        head[tcp_at + 4..tcp_at + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = self.flags;
        if index + 1 < self.count {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if index > 0 {
            flags &= !TCP_CWR;
        }
        head[tcp_at + 13] = flags;
        head[tcp_at + 16..tcp_at + 18].fill(0);
        let tcp_len = (len - tcp_at) as u16;
        let pseudo = checksum::pseudo_header(self.src, self.dst, PROTO_TCP, tcp_len);
        // The TCP header is a whole number of 32-bit words, so the payload's
        // sum starts on an even byte and adds to the header's as it is.
        let sum = checksum::fold(
            u64::from(pseudo)
                + u64::from(checksum::sum(&head[tcp_at..]))
                + u64::from(checksum::sum(body)),
        );
        head[tcp_at + 16..tcp_at + 18].copy_from_slice(&(!sum).to_be_bytes());

        if ip_at > ETH_LEN {
            // Outer IPv4 (and UDP): this segment's lengths, the next ID.
            let o = ETH_LEN;
            let ihl = usize::from(head[o] & 0x0f) * 4;
            let oid = u16::from_be_bytes([head[o + 4], head[o + 5]]).wrapping_add(index as u16);
            set_ipv4_len_id(&mut head[o..o + ihl], (len - o) as u16, oid);
            if head[o + 9] == PROTO_UDP {
                let u = o + ihl;
                let ulen = (len - u) as u16;
                head[u + 4..u + 6].copy_from_slice(&ulen.to_be_bytes());
                // No UDP checksum (allowed over IPv4; VXLAN senders leave it out).
                head[u + 6..u + 8].fill(0);
            }
        }
    }
}

/// Gives the IPv4 header `ip` (options included) a piece's total length and
/// ID and recomputes its checksum: what every segment or datagram cut from a
/// superframe needs.
pub(crate) fn set_ipv4_len_id(ip: &mut [u8], total: u16, id: u16) {
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[10..12].fill(0);
    let csum = match <&[u8; IPV4_MIN]>::try_from(&*ip) {
        // Without options (nearly always): five word loads, no loop.
        Ok(h) => !checksum::sum20(h),
        Err(_) => checksum::checksum(ip),
    };
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
}

/// Checks a superframe just received into `p` (Ethernet/IPv4/TCP, cut into
/// `gso_size`-byte segments) and marks it to travel the pipeline whole; returns
/// how many segments it stands for. Its TCP checksum field is set to the
/// pseudo-header sum (the partial form every port that passes it on or cuts it
/// expects), whatever the sender left there.
pub fn mark_superframe(p: &mut Packet, gso_size: u16) -> Result<usize, GsoError> {
    let g = Tcp4Gso::parse(p.data(), gso_size)?;
    let tcp_at = g.tcp_at();
    let tcp_len = (g.end - tcp_at) as u16;
    let pseudo = checksum::pseudo_header(g.src, g.dst, PROTO_TCP, tcp_len);
    let f = p.data_mut();
    f[tcp_at + 16..tcp_at + 18].copy_from_slice(&checksum::fold(u64::from(pseudo)).to_be_bytes());
    p.set_superframe(gso_size, ETH_LEN as u8);
    Ok(g.count())
}

/// The virtio-net header that hands the superframe `frame` (parsed as `g`,
/// its checksum partial) to a kernel whole: the kernel, or the NIC, cuts it.
pub fn superframe_vnet_hdr(frame: &[u8], g: &Tcp4Gso) -> VnetHdr {
    let cwr = frame.get(g.tcp_at() + 13).is_some_and(|f| f & TCP_CWR != 0);
    VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: VnetHdr::GSO_TCPV4 | if cwr { VnetHdr::GSO_ECN } else { 0 },
        hdr_len: g.header_len() as u16,
        gso_size: g.gso_size as u16,
        csum_start: g.tcp_at() as u16,
        csum_offset: 16,
        num_buffers: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{IpNumber, Ipv4Header, Ipv4Options, PacketBuilder, SlicedPacket, TcpHeader};

    const SRC: [u8; 4] = [198, 19, 1, 2];
    const DST: [u8; 4] = [198, 19, 2, 3];

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// A superframe the way the kernel hands it over: one IPv4/TCP packet with
    /// the whole payload and the flags of the send (PSH, maybe FIN and CWR).
    fn superframe(data: &[u8], ip_options: &[u8], tcp_options: &[u8], flags: u8) -> Vec<u8> {
        let mut tcp = TcpHeader::new(40000, 5201, 0xffff_f000, 64240);
        tcp.acknowledgment_number = 77;
        tcp.ack = true;
        tcp.psh = flags & TCP_PSH != 0;
        tcp.fin = flags & TCP_FIN != 0;
        tcp.cwr = flags & TCP_CWR != 0;
        tcp.set_options_raw(tcp_options).unwrap();
        let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, SRC, DST).unwrap();
        ip.identification = 0xfffe;
        ip.dont_fragment = true;
        ip.options = Ipv4Options::try_from(ip_options).unwrap();
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .tcp_header(tcp);
        let mut v = Vec::new();
        b.write(&mut v, data).unwrap();
        // As the kernel leaves it: checksum partial, nothing to rely on.
        let tcp_at = ETH_LEN + 20 + ip_options.len();
        v[tcp_at + 16] = 0x12;
        v[tcp_at + 17] = 0x34;
        v
    }

    /// Segments `frame` and checks every segment with etherparse; returns the
    /// payloads joined.
    fn check_all(frame: &[u8], gso_size: u16, flags: u8) -> (Vec<u8>, usize) {
        let g = Tcp4Gso::parse(frame, gso_size).unwrap();
        let mut joined = Vec::new();
        let mut out = vec![0u8; 65536];
        let first = SlicedPacket::from_ethernet(frame).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip0)) = first.net else {
            panic!("not ipv4")
        };
        let Some(etherparse::TransportSlice::Tcp(t0)) = first.transport else {
            panic!("not tcp")
        };
        for i in 0..g.count() {
            let n = g.write_segment(frame, i, &mut out).unwrap();
            let seg = &out[..n];
            assert!(n <= g.max_segment_len());
            let sp = SlicedPacket::from_ethernet(seg).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = sp.net else {
                panic!("segment {i} not ipv4")
            };
            let Some(etherparse::TransportSlice::Tcp(tcp)) = sp.transport else {
                panic!("segment {i} not tcp")
            };
            let ih = ip.header().to_header();
            assert_eq!(usize::from(ih.total_len), n - ETH_LEN);
            assert_eq!(ih.header_checksum, ih.calc_header_checksum(), "segment {i}");
            assert_eq!(
                ih.identification,
                ip0.header().identification().wrapping_add(i as u16)
            );
            assert_eq!(&ih.options[..], ip0.header().options());
            assert!(ih.dont_fragment);
            let th = tcp.to_header();
            let data = tcp.payload();
            assert_eq!(
                th.sequence_number,
                t0.sequence_number()
                    .wrapping_add((i * usize::from(gso_size)) as u32)
            );
            assert_eq!(th.acknowledgment_number, 77);
            assert_eq!(th.options.as_slice(), t0.options());
            assert_eq!(
                th.checksum,
                th.calc_checksum_ipv4(&ih, data).unwrap(),
                "segment {i}"
            );
            let last = i + 1 == g.count();
            assert_eq!(th.psh, last && flags & TCP_PSH != 0, "segment {i}");
            assert_eq!(th.fin, last && flags & TCP_FIN != 0, "segment {i}");
            assert_eq!(th.cwr, i == 0 && flags & TCP_CWR != 0, "segment {i}");
            assert!(th.ack);
            if !last {
                assert_eq!(data.len(), usize::from(gso_size));
            }
            joined.extend_from_slice(data);
        }
        (joined, g.count())
    }

    #[test]
    fn a_64k_superframe_becomes_valid_mss_segments() {
        let data = payload(65535 - 20 - 32);
        let f = superframe(&data, &[], &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2], TCP_PSH);
        let (joined, count) = check_all(&f, 1448, TCP_PSH);
        assert_eq!(joined, data);
        assert_eq!(count, data.len().div_ceil(1448));
        assert_eq!(count, 46);
    }

    #[test]
    fn odd_tails_and_sizes() {
        for (len, mss) in [
            (1, 1448),
            (1448, 1448),
            (1449, 1448),
            (2 * 1398 + 1, 1398),
            (10_001, 536),
            (1000, 1),
            (3000, 3000),
        ] {
            let data = payload(len);
            let f = superframe(&data, &[], &[], TCP_PSH | TCP_FIN | TCP_CWR);
            let (joined, count) = check_all(&f, mss, TCP_PSH | TCP_FIN | TCP_CWR);
            assert_eq!(joined, data, "len {len} mss {mss}");
            assert_eq!(count, len.div_ceil(usize::from(mss)));
        }
    }

    /// `inner` (an Ethernet frame) behind outer headers as the encapsulating
    /// stages leave a superframe: Ethernet, IPv4 (ID 0x7000, lengths wrong on
    /// purpose), then UDP and VXLAN with the inner Ethernet header (VXLAN), or
    /// the inner IPv4 packet right away (IPIP). Returns the frame and where the
    /// inner IPv4 header starts.
    fn encapsulated(inner: &[u8], vxlan: bool) -> (Vec<u8>, usize) {
        let mut f = vec![2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 8, 0x08, 0x00];
        let proto = if vxlan { 17 } else { 4 };
        f.extend_from_slice(&[0x45, 0, 0xff, 0xff, 0x70, 0, 0x40, 0, 64, proto, 0, 0]);
        f.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
        if vxlan {
            f.extend_from_slice(&[0xc0, 0x01, 0x12, 0xb5, 0xff, 0xff, 0xab, 0xcd]);
            f.extend_from_slice(&[0x08, 0, 0, 0, 0, 0x10, 0, 0]);
            f.extend_from_slice(inner);
        } else {
            f.extend_from_slice(&inner[ETH_LEN..]);
        }
        let ip_at = if vxlan { 64 } else { 34 };
        (f, ip_at)
    }

    #[test]
    fn outer_headers_are_made_each_segments_own() {
        let data = payload(20_000);
        let inner = superframe(&data, &[], &[1, 1, 1, 1], TCP_PSH);
        for vxlan in [true, false] {
            let (f, ip_at) = encapsulated(&inner, vxlan);
            let g = Tcp4Gso::parse_at(&f, ip_at, 1398).unwrap();
            assert_eq!(g.header_len(), ip_at + 20 + 24);
            let mut joined = Vec::new();
            let mut out = vec![0u8; 4096];
            for i in 0..g.count() {
                let n = g.write_segment(&f, i, &mut out).unwrap();
                let seg = &out[..n];
                let outer = Ipv4Header::from_slice(&seg[ETH_LEN..]).unwrap().0;
                assert_eq!(
                    usize::from(outer.total_len),
                    n - ETH_LEN,
                    "vxlan {vxlan} {i}"
                );
                assert_eq!(outer.header_checksum, outer.calc_header_checksum());
                assert_eq!(outer.identification, 0x7000 + i as u16);
                assert_eq!(&seg[..ETH_LEN], &f[..ETH_LEN]);
                let inner_eth = if vxlan {
                    let udp = &seg[34..42];
                    assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), n - 34);
                    assert_eq!(&udp[6..8], &[0, 0], "no UDP checksum");
                    assert_eq!(&seg[34..36], &f[34..36], "source port kept");
                    assert_eq!(&seg[42..50], &f[42..50], "VXLAN header kept");
                    seg[50..].to_vec()
                } else {
                    // Give the inner packet an Ethernet header to check it as one.
                    [&f[..ETH_LEN], &seg[34..]].concat()
                };
                let sp = SlicedPacket::from_ethernet(&inner_eth).unwrap();
                let Some(etherparse::NetSlice::Ipv4(ip)) = sp.net else {
                    panic!("inner not ipv4")
                };
                let Some(etherparse::TransportSlice::Tcp(tcp)) = sp.transport else {
                    panic!("inner not tcp")
                };
                let ih = ip.header().to_header();
                assert_eq!(ih.header_checksum, ih.calc_header_checksum());
                let th = tcp.to_header();
                assert_eq!(
                    th.checksum,
                    th.calc_checksum_ipv4(&ih, tcp.payload()).unwrap()
                );
                joined.extend_from_slice(tcp.payload());
            }
            assert_eq!(joined, data, "vxlan {vxlan}");
        }
    }

    #[test]
    fn headers_with_the_payload_in_place_are_the_segment() {
        let data = payload(9_999);
        let inner = superframe(&data, &[], &[], TCP_PSH | TCP_CWR);
        let (vx, vx_at) = encapsulated(&inner, true);
        for (f, ip_at) in [(inner.clone(), ETH_LEN), (vx, vx_at)] {
            let g = Tcp4Gso::parse_at(&f, ip_at, 1000).unwrap();
            let mut whole = vec![0u8; 2048];
            let mut head = vec![0u8; 256];
            for i in 0..g.count() {
                let n = g.write_segment(&f, i, &mut whole).unwrap();
                let (h, body) = g.write_headers(&f, i, &mut head).unwrap();
                assert_eq!([&head[..h], &f[body]].concat(), &whole[..n], "segment {i}");
            }
            assert_eq!(
                g.write_headers(&f, g.count(), &mut head),
                Err(GsoError::NoSuchSegment {
                    index: g.count(),
                    count: g.count()
                })
            );
            assert!(matches!(
                g.write_headers(&f, 0, &mut head[..10]),
                Err(GsoError::SegmentTooLong { .. })
            ));
        }
    }

    #[test]
    fn bad_outer_headers_are_refused() {
        let inner = superframe(&payload(3000), &[], &[], TCP_PSH);
        let (mut f, ip_at) = encapsulated(&inner, true);
        // Past the frame, and an outer header that is not IPv4.
        assert!(Tcp4Gso::parse_at(&f, f.len() + 1, 1000).is_err());
        f[ETH_LEN] = 0x65;
        assert_eq!(
            Tcp4Gso::parse_at(&f, ip_at, 1000),
            Err(GsoError::BadIpv4Header { byte: 0x65 })
        );
        // An outer IHL longer than the room before the inner header.
        f[ETH_LEN] = 0x4f;
        assert!(Tcp4Gso::parse_at(&f, ip_at, 1000).is_err());
        // UDP outer too short for its header.
        let (f, _) = encapsulated(&inner, true);
        assert!(Tcp4Gso::parse_at(&f, ETH_LEN + 24, 1000).is_err());
    }

    #[test]
    fn marking_leaves_the_pseudo_header_sum_and_the_size() {
        let data = payload(4000);
        let f = superframe(&data, &[], &[], TCP_PSH);
        let mut p = Packet::with_capacity(crate::buf::LARGE_BUF_SIZE);
        assert!(p.load(&f));
        assert_eq!(mark_superframe(&mut p, 1448), Ok(3));
        assert!(p.meta.is_superframe());
        assert_eq!((p.meta.gso_size, p.meta.gso_ip), (1448, ETH_LEN as u8));
        let tcp_len = (f.len() - 34) as u16;
        let want = checksum::fold(u64::from(checksum::pseudo_header(
            SRC.into(),
            DST.into(),
            PROTO_TCP,
            tcp_len,
        )));
        assert_eq!(&p.data()[50..52], &want.to_be_bytes());
        let g = Tcp4Gso::parse(p.data(), 1448).unwrap();
        let h = superframe_vnet_hdr(p.data(), &g);
        assert_eq!(
            (
                h.gso_type,
                h.hdr_len,
                h.gso_size,
                h.csum_start,
                h.csum_offset
            ),
            (VnetHdr::GSO_TCPV4, 54, 1448, 34, 16)
        );
        // Not TCP: refused, the packet not marked.
        let mut q = Packet::with_capacity(2240);
        let mut bad = f[..200].to_vec();
        bad[14 + 9] = 17;
        assert!(q.load(&bad));
        assert!(mark_superframe(&mut q, 1448).is_err());
        assert!(!q.meta.is_superframe());
    }

    #[test]
    fn ip_and_tcp_options_are_copied_into_every_segment() {
        // Record route (7) with room for two addresses, then NOP padding.
        let ip_opts = [7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let data = payload(5000);
        let f = superframe(&data, &ip_opts, &[1, 1, 1, 1], TCP_PSH);
        let (joined, count) = check_all(&f, 1400, TCP_PSH);
        assert_eq!(joined, data);
        assert_eq!(count, 4);
        let g = Tcp4Gso::parse(&f, 1400).unwrap();
        assert_eq!(g.header_len(), 14 + 32 + 24);
    }

    #[test]
    fn headers_only_is_one_segment() {
        let f = superframe(&[], &[], &[], TCP_FIN);
        let (joined, count) = check_all(&f, 1448, TCP_FIN);
        assert!(joined.is_empty());
        assert_eq!(count, 1);
    }

    #[test]
    fn trailing_padding_is_not_payload() {
        let data = payload(3000);
        let mut f = superframe(&data, &[], &[], 0);
        f.extend_from_slice(&[0xee; 7]);
        let (joined, _) = check_all(&f, 1448, 0);
        assert_eq!(joined, data);
    }

    #[test]
    fn sequence_numbers_wrap() {
        // The builder starts at 0xffff_f000: the third segment crosses 2^32.
        let data = payload(5000);
        let f = superframe(&data, &[], &[], 0);
        let (joined, _) = check_all(&f, 2000, 0);
        assert_eq!(joined, data);
    }

    #[test]
    fn a_short_buffer_is_refused_not_overrun() {
        let data = payload(3000);
        let f = superframe(&data, &[], &[], 0);
        let g = Tcp4Gso::parse(&f, 1448).unwrap();
        let mut out = [0u8; 100];
        assert_eq!(
            g.write_segment(&f, 0, &mut out),
            Err(GsoError::SegmentTooLong {
                len: 54 + 1448,
                room: 100
            })
        );
        assert_eq!(
            g.write_segment(&f, 3, &mut out),
            Err(GsoError::NoSuchSegment { index: 3, count: 3 })
        );
        assert!(matches!(
            g.write_segment(&f[..100], 1, &mut [0u8; 2000]),
            Err(GsoError::Truncated { .. })
        ));
    }

    #[test]
    fn bad_headers_are_named() {
        let data = payload(3000);
        let good = superframe(&data, &[], &[], 0);
        let with = |i: usize, b: u8| {
            let mut f = good.clone();
            f[i] = b;
            f
        };
        let cases: Vec<(Vec<u8>, u16, GsoError)> = vec![
            (
                good[..20].to_vec(),
                1448,
                GsoError::Truncated { len: 20, need: 34 },
            ),
            (
                good[..40].to_vec(),
                1448,
                GsoError::Truncated { len: 40, need: 54 },
            ),
            (
                with(12, 0x86),
                1448,
                GsoError::NotIpv4 { ethertype: 0x8600 },
            ),
            (with(14, 0x65), 1448, GsoError::BadIpv4Header { byte: 0x65 }),
            (with(14, 0x44), 1448, GsoError::BadIpv4Header { byte: 0x44 }),
            (with(23, 17), 1448, GsoError::NotTcp { proto: 17 }),
            (with(20, 0x60), 1448, GsoError::Fragment { frag: 0x6000 }),
            (with(46, 0x40), 1448, GsoError::BadTcpHeader { words: 4 }),
            (
                with(46, 0xf0)[..60].to_vec(),
                1448,
                GsoError::Truncated { len: 60, need: 94 },
            ),
            (
                with(16, 0xff),
                1448,
                GsoError::BadTotalLength {
                    total: 0xffe0,
                    min: 40,
                    avail: 3040,
                },
            ),
            (
                good.clone(),
                0,
                GsoError::BadSegmentSize {
                    gso_size: 0,
                    payload: 3000,
                },
            ),
            (
                good.clone(),
                2,
                GsoError::BadSegmentSize {
                    gso_size: 2,
                    payload: 3000,
                },
            ),
        ];
        for (f, mss, want) in cases {
            assert_eq!(Tcp4Gso::parse(&f, mss), Err(want));
        }
    }

    #[test]
    fn no_input_panics() {
        // Every prefix and every single-byte corruption of a small superframe.
        let f = superframe(&payload(300), &[1, 1, 1, 0], &[1, 1, 1, 1], TCP_PSH);
        let mut out = vec![0u8; 2048];
        let mut run = |f: &[u8]| {
            for mss in [0u16, 1, 7, 100, 1448, u16::MAX] {
                if let Ok(g) = Tcp4Gso::parse(f, mss) {
                    for i in 0..=g.count() {
                        let _ = g.write_segment(f, i, &mut out);
                    }
                }
            }
        };
        for n in 0..=f.len() {
            run(&f[..n]);
        }
        for i in 0..f.len() {
            for b in [0u8, 0x0f, 0x45, 0x4f, 0xf0, 0xff] {
                let mut g = f.clone();
                g[i] = b;
                run(&g);
            }
        }
    }
}
