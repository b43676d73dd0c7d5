//! UDP, TCP and VXLAN over arbitrary bytes. The first 8 bytes are the pseudo
//! header's addresses, the rest the segment.

#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use sluice_dataplane::wire::{tcp, udp, vxlan};

fuzz_target!(|data: &[u8]| {
    let (src, dst, seg) = match data {
        [a, b, c, d, e, f, g, h, rest @ ..] => (
            Ipv4Addr::new(*a, *b, *c, *d),
            Ipv4Addr::new(*e, *f, *g, *h),
            rest,
        ),
        _ => (Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, data),
    };
    if let Ok(u) = udp::Packet::new_checked(seg) {
        let _ = (
            u.src_port(),
            u.dst_port(),
            u.len(),
            u.is_empty(),
            u.checksum(),
        );
        let _ = udp::Repr::parse(&u, src, dst);
        vxlan_of(u.payload());
    }
    if let Ok(t) = tcp::Packet::new_checked(seg) {
        let _ = (t.src_port(), t.dst_port(), t.seq_number(), t.ack_number());
        let _ = (
            t.header_len(),
            t.flags(),
            t.window(),
            t.checksum(),
            t.payload().len(),
        );
        let _ = tcp::Repr::parse(&t, src, dst);
    }
    vxlan_of(seg);
});

fn vxlan_of(data: &[u8]) {
    if let Ok(v) = vxlan::Packet::new_checked(data) {
        let _ = (
            v.flags(),
            v.first_word(),
            v.vni(),
            v.reserved2(),
            v.is_valid(),
        );
        let _ = v.payload().len();
        let _ = vxlan::Repr::parse(&v);
    }
}
