//! ICMP for IPv4 (RFC 792): echo, destination unreachable (with the RFC 1191
//! next-hop MTU) and time exceeded; other types round-trip as `Other`.

use super::checksum;
use super::{be16, check_len, put16, put32, Result};

/// ICMP type numbers Sluice produces or reads.
pub mod kind {
    pub const ECHO_REPLY: u8 = 0;
    pub const DST_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
}

/// Destination unreachable code: fragmentation needed and DF set.
pub const CODE_FRAG_NEEDED: u8 = 4;
/// Time exceeded code: TTL exceeded in transit.
pub const CODE_TTL_EXCEEDED: u8 = 0;

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const REST: usize = 4;
    pub const DATA: usize = 8;
}

/// Length of the ICMP header (type, code, checksum, 4 bytes of rest-of-header).
pub const HEADER_LEN: usize = field::DATA;

/// Whether an ICMP type is an error message (an error must not cause another).
pub fn is_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

/// A view of an ICMP message.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        check_len(buffer.as_ref(), HEADER_LEN)?;
        Ok(Packet { buffer })
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    /// Echo identifier (first half of rest-of-header).
    pub fn echo_ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::REST)
    }
    /// Echo sequence number.
    pub fn echo_seq(&self) -> u16 {
        be16(self.buffer.as_ref(), field::REST + 2)
    }
    /// Next-hop MTU of a frag-needed message (RFC 1191).
    pub fn next_hop_mtu(&self) -> u16 {
        be16(self.buffer.as_ref(), field::REST + 2)
    }
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA..]
    }
    /// Whether the checksum over the whole message verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::sum(self.buffer.as_ref()) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }
    pub fn set_msg_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }
    pub fn set_rest(&mut self, v: u32) {
        put32(self.buffer.as_mut(), field::REST, v);
    }
    pub fn fill_checksum(&mut self) {
        put16(self.buffer.as_mut(), field::CHECKSUM, 0);
        let c = checksum::checksum(self.buffer.as_ref());
        put16(self.buffer.as_mut(), field::CHECKSUM, c);
    }
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA..]
    }
}

/// An ICMP message; the data it carries is borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr<'a> {
    EchoRequest {
        ident: u16,
        seq: u16,
        data: &'a [u8],
    },
    EchoReply {
        ident: u16,
        seq: u16,
        data: &'a [u8],
    },
    /// Fragmentation needed: `quote` is the offending IP header plus leading payload.
    FragNeeded {
        mtu: u16,
        quote: &'a [u8],
    },
    TimeExceeded {
        code: u8,
        quote: &'a [u8],
    },
    Other {
        msg_type: u8,
        code: u8,
        rest: u32,
        data: &'a [u8],
    },
}

impl<'a> Repr<'a> {
    /// Parses a message whose checksum verifies.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(p: &'a Packet<&'a T>) -> Result<Repr<'a>> {
        let b = p.buffer.as_ref();
        check_len(b, HEADER_LEN)?;
        if checksum::sum(b) != 0xffff {
            return Err(super::Error::Checksum);
        }
        let data = &b[HEADER_LEN..];
        let rest = super::be32(b, field::REST);
        Ok(match (b[field::TYPE], b[field::CODE]) {
            (kind::ECHO_REQUEST, 0) => Repr::EchoRequest {
                ident: (rest >> 16) as u16,
                seq: rest as u16,
                data,
            },
            (kind::ECHO_REPLY, 0) => Repr::EchoReply {
                ident: (rest >> 16) as u16,
                seq: rest as u16,
                data,
            },
            (kind::DST_UNREACHABLE, CODE_FRAG_NEEDED) => Repr::FragNeeded {
                mtu: rest as u16,
                quote: data,
            },
            (kind::TIME_EXCEEDED, code) => Repr::TimeExceeded { code, quote: data },
            (msg_type, code) => Repr::Other {
                msg_type,
                code,
                rest,
                data,
            },
        })
    }

    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Repr::EchoRequest { data, .. } | Repr::EchoReply { data, .. } => data.len(),
                Repr::FragNeeded { quote, .. } | Repr::TimeExceeded { quote, .. } => quote.len(),
                Repr::Other { data, .. } => data.len(),
            }
    }

    /// Writes the message, data and checksum into a buffer of `buffer_len()` bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        let (t, c, rest, data) = match *self {
            Repr::EchoRequest { ident, seq, data } => (
                kind::ECHO_REQUEST,
                0,
                (u32::from(ident) << 16) | u32::from(seq),
                data,
            ),
            Repr::EchoReply { ident, seq, data } => (
                kind::ECHO_REPLY,
                0,
                (u32::from(ident) << 16) | u32::from(seq),
                data,
            ),
            Repr::FragNeeded { mtu, quote } => (
                kind::DST_UNREACHABLE,
                CODE_FRAG_NEEDED,
                u32::from(mtu),
                quote,
            ),
            Repr::TimeExceeded { code, quote } => (kind::TIME_EXCEEDED, code, 0, quote),
            Repr::Other {
                msg_type,
                code,
                rest,
                data,
            } => (msg_type, code, rest, data),
        };
        p.set_msg_type(t);
        p.set_msg_code(c);
        p.set_rest(rest);
        p.data_mut()[..data.len()].copy_from_slice(data);
        p.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_round_trip_and_oracle() {
        let payload = *b"sluice!!";
        let r = Repr::EchoRequest {
            ident: 0x1234,
            seq: 7,
            data: &payload,
        };
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(Repr::parse(&p).unwrap(), r);
        let (hdr, rest) = etherparse::Icmpv4Header::from_slice(&buf).unwrap();
        assert_eq!(rest, &payload);
        assert_eq!(hdr.checksum, hdr.icmp_type.calc_checksum(&payload));
    }

    #[test]
    fn frag_needed_carries_mtu() {
        let quote = [0x45u8; 28];
        let r = Repr::FragNeeded {
            mtu: 1450,
            quote: &quote,
        };
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!((p.msg_type(), p.msg_code(), p.next_hop_mtu()), (3, 4, 1450));
        assert_eq!(Repr::parse(&p).unwrap(), r);
        let mut bad = buf.clone();
        bad[9] ^= 1;
        assert!(Repr::parse(&Packet::new_checked(&bad[..]).unwrap()).is_err());
    }
}
