//! IPv4-in-IPv4 (RFC 2003): an outer IPv4 header with protocol 4 directly in
//! front of the inner IPv4 packet. The header itself is [`super::ipv4`]; this
//! module holds what is particular to the tunnel.

use std::net::Ipv4Addr;

use super::ipv4::{self, Protocol};
use super::Result;

/// IP protocol number of IPIP.
pub const PROTOCOL: u8 = 4;
/// What a pod's MTU gives up: one IPv4 header.
pub const OVERHEAD: usize = ipv4::HEADER_LEN;
/// TTL of outer headers Sluice builds (Linux's default for tunnels inherits; a
/// fixed 64 is what Calico's IPIP device uses by default).
pub const OUTER_TTL: u8 = 64;

const _: () = assert!(OVERHEAD == 20);

/// The outer header of an IPIP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub inner_len: usize,
    pub ttl: u8,
}

impl Repr {
    /// Parses an outer header; an outer packet that is not protocol 4 is
    /// `Malformed`.
    pub fn parse<T: AsRef<[u8]>>(p: &ipv4::Packet<T>) -> Result<Repr> {
        let outer = ipv4::Repr::parse(p)?;
        if outer.protocol != Protocol::Ipip {
            return Err(super::Error::Malformed {
                field: "ipip protocol",
                value: u32::from(u8::from(outer.protocol)),
            });
        }
        Ok(Repr {
            src: outer.src,
            dst: outer.dst,
            inner_len: outer.payload_len,
            ttl: outer.ttl,
        })
    }

    pub const fn header_len(&self) -> usize {
        ipv4::HEADER_LEN
    }

    /// Writes the outer header in front of an inner packet already in place.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut ipv4::Packet<T>) {
        ipv4::Repr {
            src: self.src,
            dst: self.dst,
            protocol: Protocol::Ipip,
            payload_len: self.inner_len,
            ttl: self.ttl,
            ident: 0,
            dont_frag: true,
            dscp_ecn: 0,
        }
        .emit(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = [0u8; 48];
        let inner = &mut buf[20..];
        inner[0] = 0x45;
        let r = Repr {
            src: Ipv4Addr::new(198, 18, 0, 1),
            dst: Ipv4Addr::new(198, 18, 0, 2),
            inner_len: 28,
            ttl: OUTER_TTL,
        };
        r.emit(&mut ipv4::Packet::new_unchecked(&mut buf[..]));
        let p = ipv4::Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), r);
        assert_eq!(p.payload()[0], 0x45);
        let h = etherparse::Ipv4HeaderSlice::from_slice(&buf).unwrap();
        assert_eq!(h.protocol(), etherparse::IpNumber::IPV4);
        // Not IPIP.
        let mut udp = buf;
        udp[9] = 17;
        ipv4::Packet::new_unchecked(&mut udp[..]).fill_checksum();
        assert!(Repr::parse(&ipv4::Packet::new_checked(&udp[..]).unwrap()).is_err());
    }
}
