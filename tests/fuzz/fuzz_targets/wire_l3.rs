//! IPv4, ICMP and IPIP over arbitrary bytes: views, representations, checksums.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_dataplane::wire::{icmp, ipip, ipv4};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ipv4::Packet::new_checked(data) {
        let _ = (
            p.version(),
            p.header_len(),
            p.dscp_ecn(),
            p.total_len(),
            p.ident(),
        );
        let _ = (
            p.flags_frag(),
            p.dont_frag(),
            p.more_frags(),
            p.frag_offset(),
        );
        let _ = (p.is_fragment(), p.ttl(), p.protocol(), p.checksum());
        let _ = (p.src_addr(), p.dst_addr(), p.src_u32(), p.dst_u32());
        let _ = (p.verify_checksum(), p.payload().len());
        let _ = ipv4::Repr::parse(&p);
        let _ = ipip::Repr::parse(&p);
        icmp_of(p.payload());
    }
    icmp_of(data);
});

fn icmp_of(data: &[u8]) {
    if let Ok(p) = icmp::Packet::new_checked(data) {
        let _ = (p.msg_type(), p.msg_code(), p.checksum(), p.echo_ident());
        let _ = (
            p.echo_seq(),
            p.next_hop_mtu(),
            p.data().len(),
            p.verify_checksum(),
        );
        let _ = icmp::is_error(p.msg_type());
        if let Ok(r) = icmp::Repr::parse(&p) {
            let mut out = vec![0u8; r.buffer_len()];
            r.emit(&mut icmp::Packet::new_unchecked(&mut out[..]));
            let back = icmp::Packet::new_checked(&out[..]).expect("emitted ICMP is whole");
            assert!(back.verify_checksum(), "emitted ICMP checksum");
        }
    }
}
