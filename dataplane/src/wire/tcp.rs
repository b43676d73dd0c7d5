//! TCP (RFC 9293): ports, sequence numbers, flags, header length; options are
//! skipped, not interpreted.

use std::net::Ipv4Addr;

use super::checksum;
use super::{be16, be32, check_len, put16, put32, Error, Result};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const OFF_FLAGS: usize = 12;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
}

pub const HEADER_LEN: usize = 20;

/// TCP flag bits (low byte of the offset/flags word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;

    #[inline]
    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    #[inline]
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    #[inline]
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    #[inline]
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
}

/// A view of a TCP segment.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    #[inline]
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Checks the fixed header fits and the data offset is between 20 and the buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Packet { buffer };
        check_len(p.buffer.as_ref(), HEADER_LEN)?;
        let hl = p.header_len();
        if hl < HEADER_LEN {
            return Err(Error::Malformed {
                field: "tcp data offset",
                value: hl as u32,
            });
        }
        check_len(p.buffer.as_ref(), hl)?;
        Ok(p)
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }
    #[inline]
    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ)
    }
    #[inline]
    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::ACK)
    }
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::OFF_FLAGS] >> 4) * 4
    }
    #[inline]
    pub fn flags(&self) -> Flags {
        Flags(self.buffer.as_ref()[field::OFF_FLAGS + 1] & 0x3f)
    }
    #[inline]
    pub fn window(&self) -> u16 {
        be16(self.buffer.as_ref(), field::WINDOW)
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// Verifies the checksum; the buffer must end where the segment ends.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.buffer.as_ref();
        let ph = checksum::pseudo_header(src, dst, 6, b.len() as u16);
        checksum::combine(&[ph, checksum::sum(b)]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::SRC_PORT, v);
    }
    pub fn set_dst_port(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::DST_PORT, v);
    }
    pub fn set_seq_number(&mut self, v: u32) {
        put32(self.buffer.as_mut(), field::SEQ, v);
    }
    pub fn set_ack_number(&mut self, v: u32) {
        put32(self.buffer.as_mut(), field::ACK, v);
    }
    pub fn set_header_len_flags(&mut self, header_len: usize, flags: Flags) {
        let b = self.buffer.as_mut();
        b[field::OFF_FLAGS] = ((header_len / 4) as u8) << 4;
        b[field::OFF_FLAGS + 1] = flags.0;
    }
    pub fn set_window(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::WINDOW, v);
    }
    pub fn set_urgent(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::URGENT, v);
    }
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        put16(self.buffer.as_mut(), field::CHECKSUM, 0);
        let b = self.buffer.as_ref();
        let ph = checksum::pseudo_header(src, dst, 6, b.len() as u16);
        let c = !checksum::combine(&[ph, checksum::sum(b)]);
        put16(self.buffer.as_mut(), field::CHECKSUM, c);
    }
}

/// A TCP header without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: Flags,
    pub window: u16,
}

impl Repr {
    /// Parses a segment (options skipped) whose checksum verifies; the buffer ends
    /// where the segment ends.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Repr> {
        Packet::new_checked(p.buffer.as_ref())?;
        if !p.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        Ok(Repr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq: p.seq_number(),
            ack: p.ack_number(),
            flags: p.flags(),
            window: p.window(),
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header and checksum; the payload must already follow the header
    /// and the buffer must end where the segment ends.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        p: &mut Packet<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_seq_number(self.seq);
        p.set_ack_number(self.ack);
        p.set_header_len_flags(HEADER_LEN, self.flags);
        p.set_window(self.window);
        p.set_urgent(0);
        p.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_round_trip_with_oracle() {
        let src = Ipv4Addr::new(198, 19, 1, 10);
        let dst = Ipv4Addr::new(198, 19, 2, 10);
        let r = Repr {
            src_port: 43210,
            dst_port: 80,
            seq: 0xdead_beef,
            ack: 0,
            flags: Flags(Flags::SYN),
            window: 64240,
        };
        let mut buf = [0u8; 20];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]), src, dst);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(p.flags().syn() && !p.flags().ack());
        assert_eq!(Repr::parse(&p, src, dst).unwrap(), r);
        let h = etherparse::TcpHeader::from_slice(&buf).unwrap().0;
        assert!(h.syn);
        assert_eq!(
            h.calc_checksum_ipv4_raw(src.octets(), dst.octets(), &[])
                .unwrap(),
            p.checksum()
        );
    }

    #[test]
    fn bad_offset() {
        let mut b = [0u8; 24];
        b[12] = 0x40; // 16 bytes: below minimum
        assert!(Packet::new_checked(&b[..]).is_err());
        b[12] = 0x70; // 28 bytes: past the buffer
        assert!(Packet::new_checked(&b[..]).is_err());
        b[12] = 0x60;
        assert_eq!(Packet::new_checked(&b[..]).unwrap().payload().len(), 0);
    }
}
