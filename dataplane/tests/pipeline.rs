//! The pipeline driven through in-memory batches, in each mode: every case
//! checks the output bytes or the drop reason.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use sluice_dataplane::buf::{Batch, Pool, PortId, DEFAULT_BUF_SIZE};
use sluice_dataplane::drop::DropReason as R;
use sluice_dataplane::pipeline::{Pipeline, TxQueues};
use sluice_dataplane::table::{Mode, TableHandle, GATEWAY_IP, GATEWAY_MAC};
use sluice_dataplane::testkit::*;
use sluice_dataplane::wire::{arp, eth, icmp, ipv4, udp, vxlan, MacAddr};

struct Harness {
    tables: TableHandle,
    pl: Pipeline,
    pool: Pool,
    tx: TxQueues,
}

impl Harness {
    fn new(mode: Mode) -> Harness {
        let tables = node_a(mode, 0, 0);
        let pl = Pipeline::allow_all(&tables);
        Harness {
            tables,
            pl,
            pool: Pool::new(512, DEFAULT_BUF_SIZE),
            tx: TxQueues::default(),
        }
    }

    /// Runs frames received on `port` and returns what was transmitted, per port.
    fn run(&mut self, port: PortId, frames: &[Vec<u8>]) -> Vec<(PortId, Vec<u8>)> {
        let mut b = Batch::new();
        for f in frames {
            let mut p = self.pool.alloc().unwrap();
            assert!(p.load(f));
            b.push(p);
        }
        let before = self.pool.available();
        self.pl
            .process(port, &mut b, 0, &mut self.pool, &mut self.tx);
        let mut out = Vec::new();
        for (port, q) in self.tx.pending() {
            for p in q.iter() {
                out.push((port, p.data().to_vec()));
            }
        }
        self.tx.clear(&mut self.pool);
        assert!(b.is_empty());
        assert_eq!(
            self.pool.available(),
            before + frames.len(),
            "a packet leaked"
        );
        out
    }

    fn one(&mut self, port: PortId, frame: Vec<u8>) -> Option<(PortId, Vec<u8>)> {
        let mut out = self.run(port, &[frame]);
        assert!(out.len() <= 1);
        out.pop()
    }

    fn drops(&self, r: R) -> u64 {
        self.pl.counters().drop_count(r)
    }

    /// Asserts the frame was dropped for `r` (and nothing else happened).
    fn expect_drop(&mut self, port: PortId, frame: Vec<u8>, r: R) {
        let before = self.drops(r);
        let total = self.pl.counters().total_drops();
        assert_eq!(self.one(port, frame), None, "expected a drop for {r:?}");
        assert_eq!(
            self.drops(r),
            before + 1,
            "drop reason: wanted {r:?}, counters {:?}",
            self.pl.counters()
        );
        assert_eq!(self.pl.counters().total_drops(), total + 1);
    }
}

fn inner_to_a1(ttl: u8) -> Vec<u8> {
    let mut f = udp_frame(
        NODE_B_VTEP,
        sluice_dataplane::table::default_vtep_mac(NODE_A),
        POD_B1,
        POD_A1,
        5201,
        40000,
        200,
    );
    let mut ip = ipv4::Packet::new_unchecked(&mut f[14..]);
    ip.set_ttl(ttl);
    ip.fill_checksum();
    f
}

fn check_inner_delivered(frame: &[u8], dst_mac: MacAddr, orig: &[u8]) {
    let e = eth::Frame::new_checked(frame).unwrap();
    assert_eq!(e.dst_addr(), dst_mac);
    assert_eq!(e.src_addr(), GATEWAY_MAC);
    let ip = ipv4::Packet::new_checked(&frame[14..]).unwrap();
    assert!(ip.verify_checksum());
    let oip = ipv4::Packet::new_checked(&orig[14..]).unwrap();
    assert_eq!(ip.ttl(), oip.ttl() - 1);
    assert_eq!(ip.payload(), oip.payload());
    assert_eq!(
        (ip.src_addr(), ip.dst_addr()),
        (oip.src_addr(), oip.dst_addr())
    );
}

// ---- VXLAN ----

#[test]
fn vxlan_pod_to_remote_pod() {
    let mut h = Harness::new(Mode::Vxlan);
    let f = from_pod_a1(POD_B1, 100);
    let (port, out) = h.one(POD_A1_PORT, f.clone()).unwrap();
    assert_eq!(port, PortId::UPLINK);
    assert_eq!(out.len(), f.len() + 50);
    let e = eth::Frame::new_checked(&out[..]).unwrap();
    assert_eq!((e.src_addr(), e.dst_addr()), (NODE_A_MAC, NODE_B_MAC));
    let ip = ipv4::Packet::new_checked(&out[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(
        (ip.src_addr(), ip.dst_addr(), ip.protocol()),
        (NODE_A, NODE_B, ipv4::Protocol::Udp)
    );
    assert_eq!(usize::from(ip.total_len()), out.len() - 14);
    let u = udp::Packet::new_checked(&out[34..]).unwrap();
    assert_eq!(u.dst_port(), 4789);
    assert_eq!(usize::from(u.len()), out.len() - 34);
    assert!(u.src_port() >= 32768);
    let v = vxlan::Packet::new_checked(&out[42..]).unwrap();
    assert!(v.is_valid());
    assert_eq!(v.vni(), 4096);
    // Inner frame: VTEP to VTEP, TTL one less, checksum valid, payload intact.
    let inner = &out[50..];
    let ie = eth::Frame::new_checked(inner).unwrap();
    assert_eq!(ie.dst_addr(), NODE_B_VTEP);
    assert_eq!(
        ie.src_addr(),
        sluice_dataplane::table::default_vtep_mac(NODE_A)
    );
    let iip = ipv4::Packet::new_checked(&inner[14..]).unwrap();
    assert!(iip.verify_checksum());
    assert_eq!(iip.ttl(), 63);
    assert_eq!(&inner[34..], &f[34..]);
    // Oracle: etherparse decodes the whole stack.
    let sl = etherparse::SlicedPacket::from_ethernet(&out).unwrap();
    assert!(matches!(
        sl.transport,
        Some(etherparse::TransportSlice::Udp(_))
    ));
    assert_eq!(h.pl.counters().vxlan_encap, 1);
}

#[test]
fn vxlan_entropy_port_follows_the_flow() {
    let mut h = Harness::new(Mode::Vxlan);
    let a = udp_frame(POD_A1_MAC, GATEWAY_MAC, POD_A1, POD_B1, 1000, 80, 80);
    let b = udp_frame(POD_A1_MAC, GATEWAY_MAC, POD_A1, POD_B1, 1001, 80, 80);
    let out = h.run(POD_A1_PORT, &[a.clone(), a, b]);
    let sport = |f: &Vec<u8>| u16::from_be_bytes([f[34], f[35]]);
    assert_eq!(sport(&out[0].1), sport(&out[1].1));
    assert_ne!(sport(&out[0].1), sport(&out[2].1));
}

#[test]
fn vxlan_remote_to_local_pod() {
    let mut h = Harness::new(Mode::Vxlan);
    let inner = inner_to_a1(64);
    let (port, out) = h
        .one(PortId::UPLINK, vxlan_from_b(&inner, 4096, NODE_B))
        .unwrap();
    assert_eq!(port, POD_A1_PORT);
    assert_eq!(out.len(), inner.len());
    check_inner_delivered(&out, POD_A1_MAC, &inner);
    assert_eq!(h.pl.counters().vxlan_decap, 1);
}

/// A TCP superframe inside one VXLAN packet (as the uplink socket makes the
/// pieces of a UDP superframe into): decapsulated once and handed to the pod
/// still marked, its TCP/IPv4 header now right behind the Ethernet header.
#[test]
fn vxlan_tcp_superframe_to_local_pod_stays_whole() {
    let mut h = Harness::new(Mode::Vxlan);
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + i / 300) as u8).collect();
    let mut tcp = etherparse::TcpHeader::new(5201, 40000, 1_000_000, 64240);
    tcp.ack = true;
    tcp.acknowledgment_number = 1;
    let mut inner = Vec::new();
    etherparse::PacketBuilder::ethernet2(
        NODE_B_VTEP.0,
        sluice_dataplane::table::default_vtep_mac(NODE_A).0,
    )
    .ipv4(POD_B1.octets(), POD_A1.octets(), 64)
    .tcp_header(tcp)
    .write(&mut inner, &data)
    .unwrap();
    let outer = vxlan_from_b(&inner, 4096, NODE_B);
    let mut p = h.pool.alloc_large();
    assert!(p.load(&outer));
    p.set_superframe(1398, 64);
    let mut b = Batch::new();
    b.push(p);
    h.pl.process(PortId::UPLINK, &mut b, 0, &mut h.pool, &mut h.tx);
    let mut out = Vec::new();
    for (port, q) in h.tx.pending() {
        for p in q.iter() {
            out.push((port, p.meta.gso_size, p.meta.gso_ip, p.data().to_vec()));
        }
    }
    h.tx.clear(&mut h.pool);
    assert_eq!(out.len(), 1, "one packet out");
    let (port, gso_size, gso_ip, f) = &out[0];
    assert_eq!(*port, POD_A1_PORT);
    assert_eq!((*gso_size, *gso_ip), (1398, 14));
    assert_eq!(f.len(), inner.len());
    check_inner_delivered(f, POD_A1_MAC, &inner);
    assert_eq!(h.pl.counters().vxlan_decap, 1);
}

#[test]
fn vxlan_wrong_vni_unknown_source_bad_flags() {
    let mut h = Harness::new(Mode::Vxlan);
    let inner = inner_to_a1(64);
    h.expect_drop(
        PortId::UPLINK,
        vxlan_from_b(&inner, 4097, NODE_B),
        R::VxlanWrongVni,
    );
    h.expect_drop(
        PortId::UPLINK,
        vxlan_from_b(&inner, 4096, Ipv4Addr::new(198, 18, 9, 9)),
        R::UnknownTunnelSource,
    );
    let mut bad = vxlan_from_b(&inner, 4096, NODE_B);
    bad[42] = 0x0c;
    h.expect_drop(PortId::UPLINK, bad, R::VxlanBadFlags);
    let mut notv4 = vxlan_from_b(&inner, 4096, NODE_B);
    notv4[50 + 12] = 0x86;
    notv4[50 + 13] = 0xdd;
    h.expect_drop(PortId::UPLINK, notv4, R::InnerNotIpv4);
    // Truncated: outer says more than there is.
    let f = vxlan_from_b(&inner, 4096, NODE_B);
    h.expect_drop(PortId::UPLINK, f[..60].to_vec(), R::Ipv4Truncated);
    // A VXLAN node does not take IPIP.
    h.expect_drop(
        PortId::UPLINK,
        ipip_from_b(&inner[14..], NODE_B),
        R::TunnelModeMismatch,
    );
}

#[test]
fn vxlan_inner_checksum_and_ttl_are_checked_after_decap() {
    let mut h = Harness::new(Mode::Vxlan);
    let mut inner = inner_to_a1(64);
    inner[24] ^= 0xff; // inner IPv4 checksum
    h.expect_drop(
        PortId::UPLINK,
        vxlan_from_b(&inner, 4096, NODE_B),
        R::Ipv4BadChecksum,
    );
    // A remote sender's expired packet is dropped, no ICMP back through the tunnel.
    h.expect_drop(
        PortId::UPLINK,
        vxlan_from_b(&inner_to_a1(1), 4096, NODE_B),
        R::TtlExpired,
    );
    // Decapsulated traffic never goes back out of the uplink.
    let to_b = udp_frame(
        NODE_B_VTEP,
        NODE_A_MAC,
        POD_B1,
        Ipv4Addr::new(198, 19, 2, 99),
        1,
        2,
        80,
    );
    h.expect_drop(
        PortId::UPLINK,
        vxlan_from_b(&to_b, 4096, NODE_B),
        R::Hairpin,
    );
}

// ---- IPIP ----

#[test]
fn ipip_pod_to_remote_pod() {
    let mut h = Harness::new(Mode::Ipip);
    let f = from_pod_a1(POD_B1, 100);
    let (port, out) = h.one(POD_A1_PORT, f.clone()).unwrap();
    assert_eq!(port, PortId::UPLINK);
    assert_eq!(out.len(), f.len() + 20);
    let ip = ipv4::Packet::new_checked(&out[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(
        (ip.src_addr(), ip.dst_addr(), ip.protocol()),
        (NODE_A, NODE_B, ipv4::Protocol::Ipip)
    );
    let inner = ipv4::Packet::new_checked(ip.payload()).unwrap();
    assert!(inner.verify_checksum());
    assert_eq!(inner.ttl(), 63);
    assert_eq!(&out[54..], &f[34..]);
    let outer = etherparse::Ipv4Slice::from_slice(&out[14..]).unwrap();
    assert_eq!(outer.header().protocol(), etherparse::IpNumber::IPV4);
    let sl = etherparse::SlicedPacket::from_ip(outer.payload().payload).unwrap();
    assert!(matches!(
        sl.transport,
        Some(etherparse::TransportSlice::Udp(_))
    ));
}

#[test]
fn ipip_remote_to_local_pod() {
    let mut h = Harness::new(Mode::Ipip);
    let inner = inner_to_a1(64);
    let (port, out) = h
        .one(PortId::UPLINK, ipip_from_b(&inner[14..], NODE_B))
        .unwrap();
    assert_eq!(port, POD_A1_PORT);
    check_inner_delivered(&out, POD_A1_MAC, &inner);
    h.expect_drop(
        PortId::UPLINK,
        ipip_from_b(&inner[14..], Ipv4Addr::new(198, 18, 7, 7)),
        R::UnknownTunnelSource,
    );
    h.expect_drop(
        PortId::UPLINK,
        vxlan_from_b(&inner, 4096, NODE_B),
        R::TunnelModeMismatch,
    );
}

// ---- native ----

#[test]
fn native_pod_to_remote_pod() {
    let mut h = Harness::new(Mode::Native);
    let f = from_pod_a1(POD_B1, 100);
    let (port, out) = h.one(POD_A1_PORT, f.clone()).unwrap();
    assert_eq!(port, PortId::UPLINK);
    assert_eq!(out.len(), f.len());
    let e = eth::Frame::new_checked(&out[..]).unwrap();
    assert_eq!((e.src_addr(), e.dst_addr()), (NODE_A_MAC, NODE_B_MAC));
    let ip = ipv4::Packet::new_checked(&out[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(ip.ttl(), 63);
    assert_eq!(&out[34..], &f[34..]);
}

#[test]
fn native_remote_to_local_pod() {
    let mut h = Harness::new(Mode::Native);
    let mut f = inner_to_a1(64);
    f[0..6].copy_from_slice(&NODE_A_MAC.0);
    f[6..12].copy_from_slice(&NODE_B_MAC.0);
    let (port, out) = h.one(PortId::UPLINK, f.clone()).unwrap();
    assert_eq!(port, POD_A1_PORT);
    check_inner_delivered(&out, POD_A1_MAC, &f);
    assert_eq!(h.pl.counters().native_in, 1);
    // An address that is not a local pod is not ours to take from the uplink.
    let mut other = f.clone();
    let mut ip = ipv4::Packet::new_unchecked(&mut other[14..]);
    ip.set_dst_addr(Ipv4Addr::new(198, 18, 0, 77));
    ip.fill_checksum();
    h.expect_drop(PortId::UPLINK, other, R::NotForNode);
}

// ---- every mode ----

const MODES: [Mode; 3] = [Mode::Vxlan, Mode::Ipip, Mode::Native];

#[test]
fn same_node_pod_to_pod() {
    for mode in MODES {
        let mut h = Harness::new(mode);
        let f = udp_frame(POD_A1_MAC, GATEWAY_MAC, POD_A1, POD_A2, 1, 2, 300);
        let (port, out) = h.one(POD_A1_PORT, f.clone()).unwrap();
        assert_eq!(port, POD_A2_PORT, "{mode}");
        check_inner_delivered(&out, POD_A2_MAC, &f);
    }
}

#[test]
fn arp_for_the_gateway_and_others() {
    for mode in MODES {
        let mut h = Harness::new(mode);
        for target in [GATEWAY_IP, POD_B1, POD_A2] {
            let mut f = vec![0u8; 42];
            eth::Repr {
                src: POD_A1_MAC,
                dst: MacAddr::BROADCAST,
                ethertype: eth::EtherType::Arp,
            }
            .emit(&mut eth::Frame::new_unchecked(&mut f[..]));
            arp::Repr {
                operation: arp::Operation::Request,
                sender_hw: POD_A1_MAC,
                sender_ip: POD_A1,
                target_hw: MacAddr::ZERO,
                target_ip: target,
            }
            .emit(&mut arp::Packet::new_unchecked(&mut f[14..]));
            let (port, out) = h.one(POD_A1_PORT, f).unwrap();
            assert_eq!(port, POD_A1_PORT);
            let e = eth::Frame::new_checked(&out[..]).unwrap();
            assert_eq!(
                (e.dst_addr(), e.src_addr(), e.ethertype()),
                (POD_A1_MAC, GATEWAY_MAC, eth::EtherType::Arp)
            );
            let r = arp::Repr::parse(&arp::Packet::new_checked(&out[14..]).unwrap()).unwrap();
            assert_eq!(r.operation, arp::Operation::Reply);
            assert_eq!((r.sender_hw, r.sender_ip), (GATEWAY_MAC, target));
            assert_eq!((r.target_hw, r.target_ip), (POD_A1_MAC, POD_A1));
        }
        // Duplicate address detection: no answer for the pod's own address.
        let mut f = vec![0u8; 42];
        eth::Repr {
            src: POD_A1_MAC,
            dst: MacAddr::BROADCAST,
            ethertype: eth::EtherType::Arp,
        }
        .emit(&mut eth::Frame::new_unchecked(&mut f[..]));
        arp::Repr {
            operation: arp::Operation::Request,
            sender_hw: POD_A1_MAC,
            sender_ip: Ipv4Addr::UNSPECIFIED,
            target_hw: MacAddr::ZERO,
            target_ip: POD_A1,
        }
        .emit(&mut arp::Packet::new_unchecked(&mut f[14..]));
        h.expect_drop(POD_A1_PORT, f.clone(), R::ArpNotRequest);
        h.expect_drop(POD_A1_PORT, f[..30].to_vec(), R::ArpMalformed);
        h.expect_drop(PortId::UPLINK, f, R::ArpOnUplink);
    }
}

fn check_icmp_error(out: &[u8], orig: &[u8], kind: u8, code: u8) -> u16 {
    let e = eth::Frame::new_checked(out).unwrap();
    assert_eq!((e.dst_addr(), e.src_addr()), (POD_A1_MAC, GATEWAY_MAC));
    let ip = ipv4::Packet::new_checked(&out[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(
        (ip.src_addr(), ip.dst_addr(), ip.protocol()),
        (NODE_A, POD_A1, ipv4::Protocol::Icmp)
    );
    let m = icmp::Packet::new_checked(ip.payload()).unwrap();
    assert!(m.verify_checksum());
    assert_eq!((m.msg_type(), m.msg_code()), (kind, code));
    // The quote is the original IP header and its leading payload, unchanged.
    let q = m.data();
    assert_eq!(q, &orig[14..14 + q.len()]);
    assert!(q.len() >= 28);
    m.next_hop_mtu()
}

#[test]
fn ttl_expiry_sends_time_exceeded() {
    for mode in MODES {
        let mut h = Harness::new(mode);
        let mut f = from_pod_a1(POD_B1, 100);
        let mut ip = ipv4::Packet::new_unchecked(&mut f[14..]);
        ip.set_ttl(1);
        ip.fill_checksum();
        let (port, out) = h.one(POD_A1_PORT, f.clone()).unwrap();
        assert_eq!(port, POD_A1_PORT);
        check_icmp_error(&out, &f, 11, 0);
        assert_eq!(h.drops(R::TtlExpired), 1);
        assert_eq!(h.pl.counters().icmp_errors, 1);
    }
}

#[test]
fn oversize_df_sends_frag_needed() {
    for (mode, mtu) in [
        (Mode::Vxlan, 1450u16),
        (Mode::Ipip, 1480),
        (Mode::Native, 1500),
    ] {
        let mut h = Harness::new(mode);
        // One byte over the path MTU.
        let f = from_pod_a1(POD_B1, 14 + usize::from(mtu) + 1);
        let (port, out) = h.one(POD_A1_PORT, f.clone()).unwrap();
        assert_eq!(port, POD_A1_PORT);
        assert!(out.len() <= 14 + 576);
        assert_eq!(check_icmp_error(&out, &f, 3, 4), mtu, "{mode}");
        // Exactly the MTU passes.
        let ok = from_pod_a1(POD_B1, 14 + usize::from(mtu));
        assert_eq!(h.one(POD_A1_PORT, ok).unwrap().0, PortId::UPLINK);
        // Without DF it is dropped (Sluice does not fragment).
        let mut nodf = from_pod_a1(POD_B1, 14 + usize::from(mtu) + 1);
        let mut ip = ipv4::Packet::new_unchecked(&mut nodf[14..]);
        ip.set_flags_frag(0);
        ip.fill_checksum();
        h.expect_drop(POD_A1_PORT, nodf, R::TooBig);
    }
}

#[test]
fn unknown_destinations() {
    for mode in MODES {
        let mut h = Harness::new(mode);
        // In this node's range but no such pod.
        h.expect_drop(
            POD_A1_PORT,
            from_pod_a1(Ipv4Addr::new(198, 19, 1, 99), 80),
            R::NoEndpoint,
        );
        // Outside the cluster: to the host port.
        let (port, out) = h
            .one(POD_A1_PORT, from_pod_a1(Ipv4Addr::new(203, 0, 113, 1), 80))
            .unwrap();
        assert_eq!(port, PortId::HOST);
        assert_eq!(&out[0..6], &HOST_MAC.0);
        // With no default route there is no route.
        h.tables.update(|t| sluice_dataplane::table::Tables {
            routes: std::sync::Arc::new(sluice_dataplane::table::RouteTable::new(
                t.routes
                    .routes()
                    .iter()
                    .copied()
                    .filter(|(p, _)| p.prefix_len() > 0),
            )),
            ..t.clone()
        });
        h.expect_drop(
            POD_A1_PORT,
            from_pod_a1(Ipv4Addr::new(203, 0, 113, 1), 80),
            R::NoRoute,
        );
    }
}

#[test]
fn host_port_reaches_pods() {
    let mut h = Harness::new(Mode::Vxlan);
    let f = udp_frame(HOST_MAC, GATEWAY_MAC, NODE_A, POD_A1, 33000, 8080, 100);
    let (port, out) = h.one(PortId::HOST, f.clone()).unwrap();
    assert_eq!(port, POD_A1_PORT);
    check_inner_delivered(&out, POD_A1_MAC, &f);
}

#[test]
fn spoofed_sources_are_dropped() {
    let mut h = Harness::new(Mode::Vxlan);
    let f = udp_frame(POD_A2_MAC, GATEWAY_MAC, POD_A1, POD_B1, 1, 2, 80);
    h.expect_drop(POD_A1_PORT, f, R::SpoofedSourceMac);
    let f = udp_frame(POD_A1_MAC, GATEWAY_MAC, POD_A2, POD_B1, 1, 2, 80);
    h.expect_drop(POD_A1_PORT, f, R::SpoofedSourceIp);
    h.expect_drop(PortId(77), from_pod_a1(POD_B1, 80), R::UnknownPort);
}

#[test]
fn truncated_and_garbage_frames() {
    for mode in MODES {
        let mut h = Harness::new(mode);
        for port in [POD_A1_PORT, PortId::UPLINK, PortId::HOST] {
            h.expect_drop(port, vec![], R::EthTruncated);
            h.expect_drop(port, vec![0xff; 13], R::EthTruncated);
        }
        let f = from_pod_a1(POD_B1, 100);
        h.expect_drop(POD_A1_PORT, f[..30].to_vec(), R::Ipv4Truncated);
        let mut v6 = f.clone();
        v6[12] = 0x86;
        v6[13] = 0xdd;
        h.expect_drop(POD_A1_PORT, v6, R::UnsupportedEthertype);
        let mut bad = f.clone();
        bad[14] = 0x65;
        h.expect_drop(POD_A1_PORT, bad, R::Ipv4BadVersion);
        let mut bad = f.clone();
        bad[22] ^= 1;
        h.expect_drop(POD_A1_PORT, bad, R::Ipv4BadChecksum);
        let mut ihl = f.clone();
        ihl[14] = 0x44;
        h.expect_drop(POD_A1_PORT, ihl, R::Ipv4BadVersion);
    }
}

#[test]
fn ethernet_padding_is_trimmed() {
    let mut h = Harness::new(Mode::Vxlan);
    // A minimal UDP frame padded to 60 bytes, as on a real wire.
    let mut f = from_pod_a1(POD_A2, 42);
    f.resize(60, 0);
    let (_, out) = h.one(POD_A1_PORT, f).unwrap();
    assert_eq!(out.len(), 42);
}

#[test]
fn table_updates_apply_between_batches() {
    let mut h = Harness::new(Mode::Vxlan);
    assert_eq!(
        h.one(POD_A1_PORT, from_pod_a1(POD_B1, 80)).unwrap().0,
        PortId::UPLINK
    );
    h.tables.update(|t| sluice_dataplane::table::Tables {
        tunnels: std::sync::Arc::new(sluice_dataplane::table::TunnelTable::default()),
        ..t.clone()
    });
    h.expect_drop(POD_A1_PORT, from_pod_a1(POD_B1, 80), R::NoRoute);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes on every port: no panic, and every packet is either
    /// transmitted or dropped with a counted reason.
    #[test]
    fn arbitrary_frames_are_forwarded_or_dropped(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..40),
        port in prop_oneof![Just(PortId::UPLINK), Just(PortId::HOST), Just(POD_A1_PORT), Just(PortId(9))],
        mode in prop_oneof![Just(Mode::Vxlan), Just(Mode::Ipip), Just(Mode::Native)],
    ) {
        let mut h = Harness::new(mode);
        let out = h.run(port, &frames);
        let c = h.pl.counters();
        prop_assert_eq!(out.len() as u64 + c.total_drops() - c.icmp_errors, frames.len() as u64);
        prop_assert_eq!(c.drop_count(R::None), 0);
    }

    /// Mutations of valid frames (the interesting neighbourhood of the parsers).
    #[test]
    fn mutated_valid_frames(idx in 0usize..120, val in any::<u8>(), cut in 0usize..160, which in 0u8..4) {
        let mut h = Harness::new(if which == 1 { Mode::Ipip } else { Mode::Vxlan });
        let inner = inner_to_a1(64);
        let (port, mut f) = match which {
            0 => (PortId::UPLINK, vxlan_from_b(&inner, 4096, NODE_B)),
            1 => (PortId::UPLINK, ipip_from_b(&inner[14..], NODE_B)),
            2 => (POD_A1_PORT, from_pod_a1(POD_B1, 120)),
            _ => (POD_A1_PORT, from_pod_a1(POD_A2, 120)),
        };
        let i = idx % f.len();
        f[i] = val;
        f.truncate(cut.max(1).min(f.len()));
        let out = h.run(port, &[f]);
        let c = h.pl.counters();
        prop_assert_eq!(out.len() as u64 + c.total_drops() - c.icmp_errors, 1);
        for (_, o) in &out {
            // Whatever leaves has a valid outer IPv4 header (or is ARP).
            if o.len() >= 34 && o[12..14] == [8, 0] {
                prop_assert!(ipv4_ok(o, 14));
            }
        }
    }
}
