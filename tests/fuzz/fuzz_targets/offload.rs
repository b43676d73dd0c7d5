//! The superframe code a port runs on what it receives: TCP segmentation
//! (`Tcp4Gso`), UDP superframes cut into datagrams (`Udp4Split`) or made one
//! TCP superframe again (`join_vxlan_tcp`), and the GRO segment reader. The
//! first two bytes are the segment size, the third picks an IPv4 header offset
//! and whether inner checksums count as known good, the rest is the frame.
//!
//! Beyond not panicking: a joined VXLAN packet is never longer than what it was
//! made from, and its inner superframe cuts into as many segments as pieces
//! were joined.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_dataplane::port::gro::{Tcp4Seg, Udp4Split};
use sluice_dataplane::port::gso::Tcp4Gso;

/// Room for one cut piece, as the ports' pool buffers.
const ROOM: usize = 9216;

fuzz_target!(|data: &[u8]| {
    let [g0, g1, sel, frame @ ..] = data else {
        return;
    };
    let gso = u16::from_be_bytes([*g0, *g1]);
    let ip_at = 14 + usize::from(sel & 0x7f);
    let csum_ok = sel & 0x80 != 0;
    let mut out = vec![0u8; ROOM];
    for g in [Tcp4Gso::parse(frame, gso), Tcp4Gso::parse_at(frame, ip_at, gso)]
        .into_iter()
        .flatten()
    {
        if g.max_segment_len() <= ROOM {
            for i in 0..g.count().min(256) {
                let _ = g.write_segment(frame, i, &mut out);
            }
        }
    }
    let _ = Tcp4Seg::parse(frame);
    if let Ok(split) = Udp4Split::parse(frame, gso, ROOM) {
        for i in 0..split.count() {
            split.write(frame, i, &mut out);
        }
    }
    if let Ok(split) = Udp4Split::parse(frame, gso, usize::MAX) {
        let mut f = frame.to_vec();
        if let Some(j) = split.join_vxlan_tcp(&mut f, 4789, csum_ok) {
            assert!(j.len <= frame.len(), "joined longer than its pieces");
            f.truncate(j.len);
            let inner = Tcp4Gso::parse_at(&f, j.inner_ip_at, j.gso_size).expect("a TCP superframe");
            assert_eq!(inner.count(), j.segments, "segments joined");
        } else {
            assert_eq!(f, frame, "refused but changed");
        }
    }
});
