//! Ethernet and ARP views and representations over arbitrary bytes: `new_checked`
//! must refuse what is too short, and after it no accessor may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_dataplane::wire::{arp, eth};

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = eth::Frame::new_checked(data) {
        let _ = (f.dst_addr(), f.src_addr(), f.ethertype(), f.payload().len());
        let _ = (f.dst_addr().is_multicast(), f.src_addr().is_local_unicast());
        if let Ok(r) = eth::Repr::parse(&f) {
            let mut out = [0u8; eth::HEADER_LEN];
            r.emit(&mut eth::Frame::new_unchecked(&mut out[..]));
            let again = eth::Repr::parse(&eth::Frame::new_checked(&out[..]).unwrap());
            assert_eq!(again.ok(), Some(r), "Ethernet header round trip");
        }
        arp_of(f.payload());
    }
    arp_of(data);
});

fn arp_of(data: &[u8]) {
    if let Ok(p) = arp::Packet::new_checked(data) {
        let _ = (p.hardware_type(), p.protocol_type(), p.hardware_len());
        let _ = (
            p.protocol_len(),
            p.operation(),
            p.sender_hw(),
            p.sender_ip(),
        );
        let _ = (p.target_hw(), p.target_ip());
        if let Ok(r) = arp::Repr::parse(&p) {
            let mut out = [0u8; arp::PACKET_LEN];
            r.emit(&mut arp::Packet::new_unchecked(&mut out[..]));
            let again = arp::Repr::parse(&arp::Packet::new_checked(&out[..]).unwrap());
            assert_eq!(again.ok(), Some(r), "ARP round trip");
        }
    }
}
