//! The 5-tuple of a packet, extracted once by ipv4-input and used by the policy
//! hook, connection tracking and the entropy hash.

use std::net::Ipv4Addr;

/// Addresses, protocol and ports (ICMP echo: identifier as both ports; other
/// protocols and non-first fragments: ports zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl FlowKey {
    /// Extracts the key from an IPv4 packet whose header was validated (`ip`
    /// ends at the total length); L4 fields that are not there (short packet,
    /// later fragment) stay zero, and so does everything if `ip` is shorter
    /// than an IPv4 header.
    #[inline(always)]
    pub fn from_ipv4(ip: &[u8]) -> FlowKey {
        let Some(h) = ip.first_chunk::<20>() else {
            return FlowKey::default();
        };
        let mut k = FlowKey::from_header(h);
        if h[6] & 0x1f != 0 || h[7] != 0 {
            return k; // a later fragment: no L4 header
        }
        let hl = usize::from(h[0] & 0x0f) * 4;
        let l4 = ip.get(hl..).unwrap_or_default();
        match k.proto {
            6 | 17 | 132 => {
                if let Some(w) = l4.first_chunk::<4>() {
                    k.sport = u16::from_be_bytes([w[0], w[1]]);
                    k.dport = u16::from_be_bytes([w[2], w[3]]);
                }
            }
            1 => {
                if let Some(w) = l4.first_chunk::<8>() {
                    if w[0] == 8 || w[0] == 0 {
                        let id = u16::from_be_bytes([w[4], w[5]]);
                        k.sport = id;
                        k.dport = id;
                    }
                }
            }
            _ => {}
        }
        k
    }

    /// Addresses and protocol from a 20-byte IPv4 header, ports zero.
    #[inline(always)]
    pub fn from_header(h: &[u8; 20]) -> FlowKey {
        FlowKey {
            src: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
            dst: u32::from_be_bytes([h[16], h[17], h[18], h[19]]),
            sport: 0,
            dport: 0,
            proto: h[9],
        }
    }

    /// The key of the reply direction.
    #[inline]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// A fast, well-mixed hash (entropy port, table buckets).
    #[inline(always)]
    pub fn hash(&self) -> u32 {
        let a =
            ((u64::from(self.src) << 32) | u64::from(self.dst)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let b =
            ((u64::from(self.sport) << 24) | (u64::from(self.dport) << 8) | u64::from(self.proto))
                .wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let h = a ^ b.rotate_left(31);
        ((h ^ (h >> 29)) >> 32) as u32
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.src)
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst)
    }
}

impl std::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.proto {
            1 => "icmp".to_owned(),
            6 => "tcp".to_owned(),
            17 => "udp".to_owned(),
            132 => "sctp".to_owned(),
            n => format!("proto{n}"),
        };
        write!(
            f,
            "{proto} {}:{} -> {}:{}",
            self.src_addr(),
            self.sport,
            self.dst_addr(),
            self.dport
        )
    }
}
