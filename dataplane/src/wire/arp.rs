//! ARP for IPv4 over Ethernet (RFC 826). Only this hardware/protocol pair is
//! represented; anything else is [`super::Error::Malformed`].

use std::net::Ipv4Addr;

use super::eth::{EtherType, MacAddr};
use super::{be16, check_len, enum_with_unknown, put16, Error, Result};

enum_with_unknown! {
    /// ARP operation.
    pub enum Operation(u16) {
        Request = 1,
        Reply = 2,
    }
}

mod field {
    use std::ops::Range;
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

/// A view of an ARP packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        check_len(buffer.as_ref(), PACKET_LEN)?;
        Ok(Packet { buffer })
    }

    pub fn hardware_type(&self) -> u16 {
        be16(self.buffer.as_ref(), field::HTYPE)
    }
    pub fn protocol_type(&self) -> u16 {
        be16(self.buffer.as_ref(), field::PTYPE)
    }
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }
    pub fn operation(&self) -> Operation {
        Operation::from(be16(self.buffer.as_ref(), field::OPER))
    }
    pub fn sender_hw(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::SHA])
    }
    pub fn sender_ip(&self) -> Ipv4Addr {
        ip(&self.buffer.as_ref()[field::SPA])
    }
    pub fn target_hw(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::THA])
    }
    pub fn target_ip(&self) -> Ipv4Addr {
        ip(&self.buffer.as_ref()[field::TPA])
    }
}

fn ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_fixed(&mut self) {
        let b = self.buffer.as_mut();
        put16(b, field::HTYPE, 1);
        put16(b, field::PTYPE, EtherType::Ipv4.into());
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
    }
    pub fn set_operation(&mut self, op: Operation) {
        put16(self.buffer.as_mut(), field::OPER, op.into());
    }
    pub fn set_sender(&mut self, hw: MacAddr, ip: Ipv4Addr) {
        let b = self.buffer.as_mut();
        b[field::SHA].copy_from_slice(&hw.0);
        b[field::SPA].copy_from_slice(&ip.octets());
    }
    pub fn set_target(&mut self, hw: MacAddr, ip: Ipv4Addr) {
        let b = self.buffer.as_mut();
        b[field::THA].copy_from_slice(&hw.0);
        b[field::TPA].copy_from_slice(&ip.octets());
    }
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub operation: Operation,
    pub sender_hw: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_hw: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        check_len(p.buffer.as_ref(), PACKET_LEN)?;
        if p.hardware_type() != 1 || p.hardware_len() != 6 {
            return Err(Error::Malformed {
                field: "arp hardware",
                value: u32::from(p.hardware_type()),
            });
        }
        if p.protocol_type() != u16::from(EtherType::Ipv4) || p.protocol_len() != 4 {
            return Err(Error::Malformed {
                field: "arp protocol",
                value: u32::from(p.protocol_type()),
            });
        }
        Ok(Repr {
            operation: p.operation(),
            sender_hw: p.sender_hw(),
            sender_ip: p.sender_ip(),
            target_hw: p.target_hw(),
            target_ip: p.target_ip(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_fixed();
        p.set_operation(self.operation);
        p.set_sender(self.sender_hw, self.sender_ip);
        p.set_target(self.target_hw, self.target_ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ARP request "who has 169.254.1.1 tell 198.19.1.10" as a Linux pod sends it.
    const REQ: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0xc6, 0x13, 0x01, 0x0a, 198,
        19, 1, 10, 0, 0, 0, 0, 0, 0, 169, 254, 1, 1,
    ];

    #[test]
    fn parse_emit_round_trip() {
        let r = Repr::parse(&Packet::new_checked(&REQ[..]).unwrap()).unwrap();
        assert_eq!(r.operation, Operation::Request);
        assert_eq!(r.sender_ip, Ipv4Addr::new(198, 19, 1, 10));
        assert_eq!(r.target_ip, Ipv4Addr::new(169, 254, 1, 1));
        let mut out = [0u8; 28];
        r.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, REQ);
        let ep = etherparse::ArpPacketSlice::from_slice(&REQ).unwrap();
        assert_eq!(ep.target_protocol_addr(), &[169, 254, 1, 1]);
    }

    #[test]
    fn rejects_non_ethernet_ipv4() {
        let mut b = REQ;
        b[1] = 6; // IEEE 802
        assert!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).is_err());
        assert!(Packet::new_checked(&REQ[..27]).is_err());
    }
}
