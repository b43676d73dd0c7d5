//! UDP (RFC 768).

use std::net::Ipv4Addr;

use super::checksum;
use super::{be16, check_len, put16, Error, Result};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

pub const HEADER_LEN: usize = 8;

/// A view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    #[inline]
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Checks the header fits and the length field is between 8 and the buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let b = buffer.as_ref();
        check_len(b, HEADER_LEN)?;
        let len = usize::from(be16(b, field::LENGTH));
        if len < HEADER_LEN {
            return Err(Error::Malformed {
                field: "udp length",
                value: len as u32,
            });
        }
        check_len(b, len)?;
        Ok(Packet { buffer })
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
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() <= HEADER_LEN as u16
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }

    /// Verifies the checksum against the pseudo-header; a zero checksum means
    /// "not computed" over IPv4 and verifies.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let b = &self.buffer.as_ref()[..usize::from(self.len())];
        let ph = checksum::pseudo_header(src, dst, 17, self.len());
        checksum::combine(&[ph, checksum::sum(b)]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_src_port(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::SRC_PORT, v);
    }
    #[inline]
    pub fn set_dst_port(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::DST_PORT, v);
    }
    #[inline]
    pub fn set_len(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::LENGTH, v);
    }
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    /// Computes the checksum over pseudo-header, header and payload.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let len = self.len();
        let ph = checksum::pseudo_header(src, dst, 17, len);
        let s = checksum::sum(&self.buffer.as_ref()[..usize::from(len)]);
        let mut c = !checksum::combine(&[ph, s]);
        if c == 0 {
            c = 0xffff; // RFC 768: a computed zero is sent as all ones.
        }
        self.set_checksum(c);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..len]
    }
}

/// A UDP header (the payload length is implied by the caller's buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: usize,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Repr> {
        Packet::new_checked(p.buffer.as_ref())?;
        if !p.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        Ok(Repr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            payload_len: usize::from(p.len()) - HEADER_LEN,
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header; with addresses, also the checksum (payload must be in
    /// place already), else a zero checksum.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        p: &mut Packet<T>,
        addrs: Option<(Ipv4Addr, Ipv4Addr)>,
    ) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_len((HEADER_LEN + self.payload_len) as u16);
        match addrs {
            Some((s, d)) => p.fill_checksum(s, d),
            None => p.set_checksum(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_oracle() {
        let src = Ipv4Addr::new(198, 19, 1, 10);
        let dst = Ipv4Addr::new(198, 19, 2, 10);
        let mut buf = [0u8; 13];
        buf[8..].copy_from_slice(b"hello");
        let r = Repr {
            src_port: 40000,
            dst_port: 5201,
            payload_len: 5,
        };
        r.emit(&mut Packet::new_unchecked(&mut buf[..]), Some((src, dst)));
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&p, src, dst).unwrap(), r);
        assert_eq!(p.payload(), b"hello");
        let h = etherparse::UdpHeader::from_slice(&buf).unwrap().0;
        assert_eq!(
            h.calc_checksum_ipv4_raw(src.octets(), dst.octets(), b"hello")
                .unwrap(),
            p.checksum()
        );
        let mut bad = buf;
        bad[9] ^= 0xff;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bad[..]).unwrap(), src, dst),
            Err(Error::Checksum)
        );
    }

    #[test]
    fn length_field_is_checked() {
        let mut b = [0u8; 8];
        b[5] = 7;
        assert!(Packet::new_checked(&b[..]).is_err());
        b[5] = 9;
        assert!(Packet::new_checked(&b[..]).is_err());
    }
}
