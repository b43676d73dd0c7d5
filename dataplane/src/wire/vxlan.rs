//! VXLAN (RFC 7348): an 8-byte header after UDP, carrying an Ethernet frame.
//!
//! ```text
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```

use super::{be32, check_len, put32, Error, Result};

pub const HEADER_LEN: usize = 8;
/// The IANA port.
pub const DEFAULT_PORT: u16 = 4789;
/// The "I" flag: the VNI is valid. It must be set; other flag bits are reserved.
pub const FLAG_I: u8 = 0x08;
/// Outer Ethernet + IPv4 + UDP + VXLAN: what a pod's MTU gives up.
pub const OVERHEAD: usize =
    super::eth::HEADER_LEN + super::ipv4::HEADER_LEN + super::udp::HEADER_LEN + HEADER_LEN;

const _: () = assert!(OVERHEAD == 50);

/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

mod field {
    pub const FLAGS: usize = 0;
    pub const VNI: usize = 4;
}

/// A view of a VXLAN header and the frame it carries.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    #[inline]
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        check_len(buffer.as_ref(), HEADER_LEN)?;
        Ok(Packet { buffer })
    }

    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The first word (flags and reserved bits).
    #[inline]
    pub fn first_word(&self) -> u32 {
        be32(self.buffer.as_ref(), field::FLAGS)
    }

    #[inline]
    pub fn vni(&self) -> u32 {
        be32(self.buffer.as_ref(), field::VNI) >> 8
    }

    /// Reserved byte after the VNI.
    #[inline]
    pub fn reserved2(&self) -> u8 {
        self.buffer.as_ref()[field::VNI + 3]
    }

    /// Flags are exactly I with every reserved bit zero (RFC 7348: "MUST be set
    /// to zero on transmission"; Linux ignores them on receipt, Sluice is strict).
    #[inline]
    pub fn is_valid(&self) -> bool {
        self.first_word() == u32::from(FLAG_I) << 24 && self.reserved2() == 0
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_header(&mut self, vni: u32) {
        let b = self.buffer.as_mut();
        put32(b, field::FLAGS, u32::from(FLAG_I) << 24);
        put32(b, field::VNI, (vni & MAX_VNI) << 8);
    }
}

/// A VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub vni: u32,
}

impl Repr {
    /// Parses a header, refusing a missing I flag or set reserved bits.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        check_len(p.buffer.as_ref(), HEADER_LEN)?;
        if !p.is_valid() {
            return Err(Error::Malformed {
                field: "vxlan flags",
                value: p.first_word(),
            });
        }
        Ok(Repr { vni: p.vni() })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_header(self.vni);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vni_4096() {
        // As the Linux VXLAN device writes VNI 4096.
        let b = [0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0x00];
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), Repr { vni: 4096 });
        let mut out = [0u8; 8];
        Repr { vni: 4096 }.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, b);
    }

    #[test]
    fn flags_are_strict() {
        for b in [
            [0u8, 0, 0, 0, 0, 0x10, 0, 0],
            [0x0c, 0, 0, 0, 0, 0x10, 0, 0],
            [0x08, 0, 0, 0, 0, 0x10, 0, 1],
        ] {
            assert!(
                Repr::parse(&Packet::new_checked(&b[..]).unwrap()).is_err(),
                "{b:?}"
            );
        }
        assert!(Packet::new_checked(&[0x08u8; 7][..]).is_err());
    }
}
