//! icmp-error: turns a packet that cannot go on (TTL expired, too big with DF
//! set) into the ICMP error its sender needs, in place: 28 bytes of headroom
//! are taken for the new IPv4 and ICMP headers and the original IP header and
//! leading payload stay where they are, as the quote.
//!
//! Errors are sent only to local senders (pods, the host port); a remote
//! sender's packet is dropped and counted. No error answers an ICMP error, a
//! non-first fragment or a packet from a non-unicast source (RFC 1812 4.3.2.7).

use super::{at, drop, goto, icmp_kind, Counters, Next};
use crate::buf::{Meta, Packet, PortId};
use crate::drop::DropReason as R;
use crate::table::Tables;
use crate::wire::{eth, icmp, ipv4};

const ETH: usize = eth::HEADER_LEN;
const NEW_HDRS: usize = ipv4::HEADER_LEN + icmp::HEADER_LEN;
/// Like Linux: the whole error fits in 576 bytes.
const MAX_QUOTE: usize = 576 - NEW_HDRS;

pub fn icmp_error(t: &Tables, c: &mut Counters, pkts: &mut [Packet]) -> u32 {
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::IcmpError)) {
        let reason = p.meta.drop;
        let local = p.meta.src_ep != Meta::NO_EP || p.meta.in_port == PortId::HOST;
        if !local {
            pending |= drop(p, reason);
            continue;
        }
        let l3 = usize::from(p.meta.l3);
        let d = p.data();
        let ip = ipv4::Packet::new_unchecked(&d[l3..]);
        let hl = ip.header_len();
        let src = ip.src_addr();
        let is_icmp_error = ip.protocol() == ipv4::Protocol::Icmp
            && d.len() > l3 + hl
            && icmp::is_error(d[l3 + hl]);
        if is_icmp_error
            || ip.frag_offset() != 0
            || src.is_unspecified()
            || src.is_broadcast()
            || src.is_multicast()
        {
            pending |= drop(p, R::IcmpErrorSuppressed);
            continue;
        }
        if l3 != ETH || d.len() < ETH + hl + 8 {
            pending |= drop(p, R::TooShortForIcmp);
            continue;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&d[6..12]);
        let quote = (d.len() - ETH).min(MAX_QUOTE);
        p.truncate(ETH + quote);
        if p.prepend(NEW_HDRS).is_none() {
            pending |= drop(p, R::NoHeadroom);
            continue;
        }
        let d = p.data_mut();
        d[0..6].copy_from_slice(&mac);
        d[6..12].copy_from_slice(&t.node.gateway_mac.0);
        d[12..14].copy_from_slice(&[0x08, 0x00]);
        ipv4::Repr {
            src: t.node.node_ip,
            dst: src,
            protocol: ipv4::Protocol::Icmp,
            payload_len: icmp::HEADER_LEN + quote,
            ttl: 64,
            ident: 0,
            dont_frag: false,
            dscp_ecn: 0xc0, // CS6, as Linux marks ICMP errors
        }
        .emit(&mut ipv4::Packet::new_unchecked(&mut d[ETH..]));
        let (kind, code, rest) = match p.meta.aux & 0xffff_0000 {
            icmp_kind::FRAG_NEEDED => (
                icmp::kind::DST_UNREACHABLE,
                icmp::CODE_FRAG_NEEDED,
                p.meta.aux & 0xffff,
            ),
            _ => (icmp::kind::TIME_EXCEEDED, icmp::CODE_TTL_EXCEEDED, 0),
        };
        let d = p.data_mut();
        let mut m = icmp::Packet::new_unchecked(&mut d[ETH + ipv4::HEADER_LEN..]);
        m.set_msg_type(kind);
        m.set_msg_code(code);
        m.set_rest(rest);
        m.fill_checksum();
        p.meta.l3 = ETH as u16;
        p.meta.out_port = p.meta.in_port;
        // The original packet still counts as dropped for its reason.
        c.drops[reason as usize] += 1;
        c.icmp_errors += 1;
        pending |= goto(p, Next::Tx);
    }
    pending
}
