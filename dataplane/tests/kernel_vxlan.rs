//! Byte-for-byte agreement with the Linux kernel's VXLAN device, on frames it
//! produced (fixtures/*.pcap, made by fixtures/capture-vxlan.sh; topology in
//! fixtures/README.md).
//!
//! Node A's tables are set up as the captured node A was wired; then
//! - every captured pod frame A → B, sent through Sluice's vxlan-encap,
//!   matches the kernel's outer frame except the fields that legitimately
//!   differ (outer IPv4 ID and so its checksum, UDP source port and so the UDP
//!   checksum, which Sluice leaves at zero as IPv4 allows);
//! - every captured outer frame B → A, decapsulated and delivered by Sluice,
//!   is exactly the frame the kernel delivered to pod A.

use std::net::Ipv4Addr;
use std::sync::Arc;

use sluice_dataplane::buf::{Batch, Pool, PortId, DEFAULT_BUF_SIZE};
use sluice_dataplane::pcap;
use sluice_dataplane::pipeline::{Pipeline, TxQueues};
use sluice_dataplane::table::*;
use sluice_dataplane::wire::{ipv4, udp, vxlan, MacAddr};

const UNDERLAY: &[u8] = include_bytes!("../../fixtures/vxlan-underlay.pcap");
const INNER: &[u8] = include_bytes!("../../fixtures/vxlan-inner.pcap");
const POD: &[u8] = include_bytes!("../../fixtures/vxlan-pod.pcap");

const NODE_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const POD_A: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
const POD_PORT: PortId = PortId(2);

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn node_a() -> TableHandle {
    let mut node = NodeParams::new(Mode::Vxlan, NODE_A, mac("02:00:c6:12:00:01"), 1500);
    node.vtep_mac = mac("02:5e:00:00:00:01");
    // The captured node answered its pod from its veth's MAC.
    node.gateway_mac = mac("02:00:c6:13:01:01");
    let tun = Tunnel::vxlan(
        &node,
        NODE_B,
        mac("02:5e:00:00:00:02"),
        Some(mac("02:00:c6:12:00:02")),
    );
    let routes = RouteTable::new([
        ("198.19.1.0/24".parse().unwrap(), NextHop::Local),
        (
            "198.19.2.0/24".parse().unwrap(),
            NextHop::Vxlan(TunnelId(0)),
        ),
    ]);
    let eps = EndpointTable::new([Endpoint {
        ip: POD_A,
        mac: mac("02:00:c6:13:01:0a"),
        port: POD_PORT,
        owner: Owner::default(),
    }])
    .unwrap();
    let mut t = Tables::new(node);
    t.routes = Arc::new(routes);
    t.endpoints = Arc::new(eps);
    t.tunnels = Arc::new(TunnelTable::new(vec![tun], [NODE_B]));
    TableHandle::new(t)
}

fn run(port: PortId, frame: &[u8]) -> Vec<(PortId, Vec<u8>)> {
    let tables = node_a();
    let mut pl = Pipeline::allow_all(&tables);
    let mut pool = Pool::new(8, DEFAULT_BUF_SIZE);
    let mut tx = TxQueues::default();
    let mut b = Batch::new();
    let mut p = pool.alloc().unwrap();
    assert!(p.load(frame));
    b.push(p);
    pl.process(port, &mut b, 0, &mut pool, &mut tx);
    let out = tx
        .pending()
        .flat_map(|(port, q)| q.iter().map(move |p| (port, p.data().to_vec())))
        .collect();
    assert_eq!(pl.counters().total_drops(), 0, "{:?}", pl.counters());
    out
}

fn frames(bytes: &[u8]) -> Vec<&[u8]> {
    let f = pcap::records(bytes).expect("fixture pcap");
    assert!(f.len() >= 20, "fixture has {} frames", f.len());
    f
}

fn outer_dst(frame: &[u8]) -> Ipv4Addr {
    ipv4::Packet::new_checked(&frame[14..]).unwrap().dst_addr()
}

/// Zeroes the fields Sluice and the kernel choose differently.
fn mask(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[18..20].fill(0); // outer IPv4 identification
    f[24..26].fill(0); // outer IPv4 checksum (covers the ID)
    f[34..36].fill(0); // UDP source port (entropy)
    f[40..42].fill(0); // UDP checksum (covers the source port)
    f
}

#[test]
fn decap_of_kernel_frames_yields_the_inner_frames() {
    let (under, inner) = (frames(UNDERLAY), frames(INNER));
    assert_eq!(under.len(), inner.len());
    for (i, (u, inn)) in under.iter().zip(&inner).enumerate() {
        let ip = ipv4::Packet::new_checked(&u[14..]).unwrap();
        assert!(ip.verify_checksum(), "frame {i}");
        let ud = udp::Packet::new_checked(ip.payload()).unwrap();
        assert!(
            ud.verify_checksum(ip.src_addr(), ip.dst_addr()),
            "frame {i}: kernel UDP checksum"
        );
        let vx = vxlan::Packet::new_checked(ud.payload()).unwrap();
        assert!(vx.is_valid() && vx.vni() == 4096);
        assert_eq!(vx.payload(), *inn, "frame {i}: inner frame");
    }
}

#[test]
fn sluice_delivers_what_the_kernel_delivered() {
    let (under, pod) = (frames(UNDERLAY), frames(POD));
    let mut n = 0;
    for (i, (u, delivered)) in under.iter().zip(&pod).enumerate() {
        if outer_dst(u) != NODE_A {
            continue;
        }
        let out = run(PortId::UPLINK, u);
        assert_eq!(out.len(), 1, "frame {i}");
        assert_eq!(out[0].0, POD_PORT);
        assert_eq!(
            out[0].1, *delivered,
            "frame {i}: Sluice's delivery differs from the kernel's"
        );
        n += 1;
    }
    assert!(n >= 8, "only {n} B -> A frames");
}

#[test]
fn sluice_encapsulates_like_the_kernel() {
    let (under, pod) = (frames(UNDERLAY), frames(POD));
    let mut n = 0;
    for (i, (kernel, sent)) in under.iter().zip(&pod).enumerate() {
        if outer_dst(kernel) != NODE_B {
            continue;
        }
        let out = run(POD_PORT, sent);
        assert_eq!(out.len(), 1, "frame {i}");
        let (port, ours) = &out[0];
        assert_eq!(*port, PortId::UPLINK);
        assert_eq!(
            mask(ours),
            mask(kernel),
            "frame {i}: outer frame differs beyond ID and source port"
        );
        let ip = ipv4::Packet::new_checked(&ours[14..]).unwrap();
        assert!(ip.verify_checksum(), "frame {i}: our outer IPv4 checksum");
        let ud = udp::Packet::new_checked(ip.payload()).unwrap();
        assert!(ud.checksum() == 0 || ud.verify_checksum(ip.src_addr(), ip.dst_addr()));
        assert!((32768..61000).contains(&ud.src_port()));
        let inner = ipv4::Packet::new_checked(&ours[64..]).unwrap();
        assert!(inner.verify_checksum(), "frame {i}: inner IPv4 checksum");
        n += 1;
    }
    assert!(n >= 8, "only {n} A -> B frames");
}
