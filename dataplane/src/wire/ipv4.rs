//! IPv4 (RFC 791): header checksum verify, compute and incremental update;
//! options are tolerated (kept, skipped by `payload`).

use std::net::Ipv4Addr;

use super::checksum;
use super::{be16, check_len, enum_with_unknown, put16, Error, Result};

enum_with_unknown! {
    /// IP protocol number.
    pub enum Protocol(u8) {
        Icmp = 1,
        /// IPv4-in-IPv4 (RFC 2003).
        Ipip = 4,
        Tcp = 6,
        Udp = 17,
        Sctp = 132,
    }
}

mod field {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;
/// Don't Fragment flag within the flags/offset word.
pub const FLAG_DF: u16 = 0x4000;
/// More Fragments flag.
pub const FLAG_MF: u16 = 0x2000;

/// A view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    #[inline]
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Checks that the buffer holds the fixed header, that the header length field
    /// is at least 20 and fits, and that the total length is at least the header
    /// length and fits. The version is not checked (see [`Repr::parse`]).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Packet { buffer };
        p.check_len()?;
        Ok(p)
    }

    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        check_len(b, HEADER_LEN)?;
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(Error::Malformed {
                field: "ipv4 header length",
                value: hl as u32,
            });
        }
        check_len(b, hl)?;
        let tl = usize::from(self.total_len());
        if tl < hl {
            return Err(Error::Malformed {
                field: "ipv4 total length",
                value: tl as u32,
            });
        }
        check_len(b, tl)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    #[inline]
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT)
    }

    #[inline]
    pub fn flags_frag(&self) -> u16 {
        be16(self.buffer.as_ref(), field::FLG_OFF)
    }

    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.flags_frag() & FLAG_DF != 0
    }

    #[inline]
    pub fn more_frags(&self) -> bool {
        self.flags_frag() & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (self.flags_frag() & 0x1fff) << 3
    }

    /// Part of a fragmented datagram (first or later).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.flags_frag() & 0x3fff != 0
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    #[inline]
    pub fn protocol(&self) -> Protocol {
        Protocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Source address as a host-order integer (table keys).
    #[inline]
    pub fn src_u32(&self) -> u32 {
        super::be32(self.buffer.as_ref(), field::SRC.start)
    }

    /// Destination address as a host-order integer (table keys).
    #[inline]
    pub fn dst_u32(&self) -> u32 {
        super::be32(self.buffer.as_ref(), field::DST.start)
    }

    /// Whether the header checksum verifies.
    #[inline(always)]
    pub fn verify_checksum(&self) -> bool {
        let b = self.buffer.as_ref();
        match b.first_chunk::<20>() {
            Some(h) if self.header_len() == HEADER_LEN => checksum::verify20(h),
            _ => checksum::sum(&b[..self.header_len()]) == 0xffff,
        }
    }

    /// The bytes after the header, up to the total length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_version_ihl(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }
    #[inline]
    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = v;
    }
    #[inline]
    pub fn set_total_len(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::LENGTH, v);
    }
    #[inline]
    pub fn set_ident(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::IDENT, v);
    }
    #[inline]
    pub fn set_flags_frag(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::FLG_OFF, v);
    }
    #[inline]
    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v;
    }
    #[inline]
    pub fn set_protocol(&mut self, p: Protocol) {
        self.buffer.as_mut()[field::PROTOCOL] = p.into();
    }
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM, v);
    }
    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }
    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }

    /// Computes and stores the header checksum.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len();
        let c = checksum::checksum(&self.buffer.as_ref()[..hl]);
        self.set_checksum(c);
    }

    /// Decrements the TTL and patches the checksum incrementally. The caller
    /// checks `ttl() > 1` first. TTL is the high byte of its 16-bit word, so the
    /// checksum grows by 0x0100 in one's-complement arithmetic (RFC 1141; the
    /// RFC 1624 corner case only picks between the two encodings of zero, both
    /// of which verify).
    #[inline(always)]
    pub fn decrement_ttl(&mut self) {
        let b = self.buffer.as_mut();
        b[field::TTL] = b[field::TTL].wrapping_sub(1);
        let sum = u32::from(be16(b, field::CHECKSUM)) + 0x0100;
        put16(b, field::CHECKSUM, (sum + (sum >> 16)) as u16);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        let tl = usize::from(self.total_len());
        &mut self.buffer.as_mut()[hl..tl]
    }
}

/// An IPv4 header without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: Protocol,
    pub payload_len: usize,
    pub ttl: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub dscp_ecn: u8,
}

impl Repr {
    /// Parses and validates: version 4, lengths, checksum. Options are skipped;
    /// fragments are represented (flags are not part of `Repr` beyond DF).
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        p.check_len()?;
        if p.version() != 4 {
            return Err(Error::Malformed {
                field: "ip version",
                value: u32::from(p.version()),
            });
        }
        if !p.verify_checksum() {
            return Err(Error::Checksum);
        }
        Ok(Repr {
            src: p.src_addr(),
            dst: p.dst_addr(),
            protocol: p.protocol(),
            payload_len: usize::from(p.total_len()) - p.header_len(),
            ttl: p.ttl(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
            dscp_ecn: p.dscp_ecn(),
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header (with checksum) into the first 20 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_version_ihl(HEADER_LEN);
        p.set_dscp_ecn(self.dscp_ecn);
        p.set_total_len((HEADER_LEN + self.payload_len) as u16);
        p.set_ident(self.ident);
        p.set_flags_frag(if self.dont_frag { FLAG_DF } else { 0 });
        p.set_ttl(self.ttl);
        p.set_protocol(self.protocol);
        p.set_src_addr(self.src);
        p.set_dst_addr(self.dst);
        p.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ICMP echo request 198.19.1.10 -> 198.19.2.10 as sent by Linux ping (header
    // plus 8 bytes of ICMP), checksum as the kernel computed it.
    pub(crate) const ECHO: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x6d, 0x8c, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 198, 19, 1, 10,
        198, 19, 2, 10, 0x08, 0x00, 0xf7, 0xfe, 0x00, 0x01, 0x00, 0x00,
    ];

    fn echo() -> [u8; 28] {
        let mut b = ECHO;
        Packet::new_unchecked(&mut b[..]).fill_checksum();
        b
    }

    #[test]
    fn parse_emit_round_trip() {
        let b = echo();
        let p = Packet::new_checked(&b[..]).unwrap();
        let r = Repr::parse(&p).unwrap();
        assert_eq!(r.src, Ipv4Addr::new(198, 19, 1, 10));
        assert_eq!(r.protocol, Protocol::Icmp);
        assert_eq!(r.payload_len, 8);
        assert!(r.dont_frag);
        let mut out = [0u8; 28];
        out[20..].copy_from_slice(&b[20..]);
        r.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, b);
        // Oracle: etherparse agrees on the header and its checksum.
        let h = etherparse::Ipv4HeaderSlice::from_slice(&b).unwrap();
        assert_eq!(h.header_checksum(), p.checksum());
        assert_eq!(h.to_header().calc_header_checksum(), p.checksum());
    }

    #[test]
    fn options_are_tolerated() {
        // IHL 6: one 4-byte option (NOP NOP NOP EOL).
        let b = echo();
        let mut v = Vec::new();
        v.extend_from_slice(&b[..20]);
        v.extend_from_slice(&[1, 1, 1, 0]);
        v.extend_from_slice(&b[20..]);
        v[0] = 0x46;
        v[3] = 32;
        let mut p = Packet::new_checked(&mut v[..]).unwrap();
        p.fill_checksum();
        let r = Repr::parse(&p).unwrap();
        assert_eq!(r.payload_len, 8);
        assert_eq!(p.payload()[0], 8);
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        let mut b = echo();
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        for ttl in (1..64).rev() {
            p.decrement_ttl();
            assert_eq!(p.ttl(), ttl);
            assert!(p.verify_checksum());
        }
    }

    #[test]
    fn rejects_bad_lengths_and_checksums() {
        let b = echo();
        assert!(Packet::new_checked(&b[..19]).is_err());
        let mut short = b;
        short[0] = 0x44; // IHL 16 bytes
        assert!(Packet::new_checked(&short[..]).is_err());
        let mut long = b;
        long[3] = 29; // total length past the buffer
        assert!(Packet::new_checked(&long[..]).is_err());
        let mut bad = b;
        bad[8] = 1;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bad[..]).unwrap()),
            Err(Error::Checksum)
        );
        let mut v6 = b;
        v6[0] = 0x65;
        assert!(matches!(
            Repr::parse(&Packet::new_checked(&v6[..]).unwrap()),
            Err(Error::Malformed { .. })
        ));
    }
}
