//! Frame builders and a ready-made two-node topology, for tests, benches and
//! fuzz targets (not used by the fast path).

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::buf::PortId;
use crate::table::{
    Endpoint, EndpointTable, Mode, NextHop, NodeParams, Owner, Prefix, RouteTable, TableHandle,
    Tables, Tunnel, TunnelId, TunnelTable,
};
use crate::wire::{checksum, eth, ipv4, udp, vxlan, MacAddr};

/// This node (A): underlay address and uplink MAC.
pub const NODE_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const NODE_A_MAC: MacAddr = MacAddr([0x02, 0x00, 0xc6, 0x12, 0x00, 0x01]);
/// The peer (B).
pub const NODE_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const NODE_B_MAC: MacAddr = MacAddr([0x02, 0x00, 0xc6, 0x12, 0x00, 0x02]);
pub const NODE_B_VTEP: MacAddr = MacAddr([0x02, 0x53, 198, 18, 0, 2]);
/// Pod CIDRs of A and B.
pub const PODS_A: &str = "198.19.1.0/24";
pub const PODS_B: &str = "198.19.2.0/24";
/// A local pod on A (port 2) and its MAC.
pub const POD_A1: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
pub const POD_A1_MAC: MacAddr = MacAddr([0x02, 0x00, 198, 19, 1, 10]);
pub const POD_A1_PORT: PortId = PortId(2);
/// A second local pod on A (port 3).
pub const POD_A2: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 11);
pub const POD_A2_MAC: MacAddr = MacAddr([0x02, 0x00, 198, 19, 1, 11]);
pub const POD_A2_PORT: PortId = PortId(3);
/// A pod on B.
pub const POD_B1: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 10);
/// The host port's kernel MAC.
pub const HOST_MAC: MacAddr = MacAddr([0x02, 0x00, 0x00, 0x00, 0x00, 0xfe]);

/// Node A's tables in `mode`: two local pods, peer B at tunnel 0 (routes to
/// B's pods use the mode's next hop), `extra_routes` more remote /26 routes via
/// the same tunnel, `extra_endpoints` more local pods, and a default route to
/// the host port.
pub fn node_a(mode: Mode, extra_routes: usize, extra_endpoints: usize) -> TableHandle {
    let mut node = NodeParams::new(mode, NODE_A, NODE_A_MAC, 1500);
    node.host_mac = Some(HOST_MAC);
    let tun = match mode {
        Mode::Vxlan => Tunnel::vxlan(&node, NODE_B, NODE_B_VTEP, Some(NODE_B_MAC)),
        Mode::Ipip => Tunnel::ipip(&node, NODE_B, Some(NODE_B_MAC)),
        Mode::Native => Tunnel::native(&node, NODE_B, Some(NODE_B_MAC)),
    };
    let nh = match mode {
        Mode::Vxlan => NextHop::Vxlan(TunnelId(0)),
        Mode::Ipip => NextHop::Ipip(TunnelId(0)),
        Mode::Native => NextHop::Native(TunnelId(0)),
    };
    let mut routes = vec![
        ("0.0.0.0/0".parse::<Prefix>().unwrap(), NextHop::Host),
        (PODS_A.parse().unwrap(), NextHop::Local),
        (PODS_B.parse().unwrap(), nh),
    ];
    for i in 0..extra_routes as u32 {
        // 198.20.0.0/14 carved into /26s: distinct, non-overlapping, all remote.
        let a = Ipv4Addr::from(0xc614_0000 + (i << 6));
        routes.push((Prefix::new(a, 26).unwrap(), nh));
    }
    let mut eps = vec![
        Endpoint {
            ip: POD_A1,
            mac: POD_A1_MAC,
            port: POD_A1_PORT,
            owner: owner("a1"),
        },
        Endpoint {
            ip: POD_A2,
            mac: POD_A2_MAC,
            port: POD_A2_PORT,
            owner: owner("a2"),
        },
    ];
    for i in 0..extra_endpoints as u32 {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 1, 0)) + 20 + (i % 200));
        if i >= 200 {
            break;
        }
        let o = ip.octets();
        eps.push(Endpoint {
            ip,
            mac: MacAddr([2, 0, o[0], o[1], o[2], o[3]]),
            port: PortId(10 + i as u16),
            owner: Owner::default(),
        });
    }
    // More endpoints than one /24 holds live in further pod blocks of this node.
    for i in 200..extra_endpoints as u32 {
        let ip = Ipv4Addr::from(0xc613_8000 + i);
        let o = ip.octets();
        eps.push(Endpoint {
            ip,
            mac: MacAddr([2, 0, o[0], o[1], o[2], o[3]]),
            port: PortId(10 + i as u16),
            owner: Owner::default(),
        });
    }
    if extra_endpoints > 200 {
        routes.push(("198.19.128.0/17".parse().unwrap(), NextHop::Local));
    }
    let t = Tables {
        routes: Arc::new(RouteTable::new(routes)),
        tunnels: Arc::new(TunnelTable::new(vec![tun], [NODE_B])),
        endpoints: Arc::new(EndpointTable::new(eps).expect("distinct endpoints")),
        node: Arc::new(node),
        policy: Arc::default(),
        generation: 0,
    };
    TableHandle::new(t)
}

fn owner(name: &str) -> Owner {
    Owner {
        namespace: "default".into(),
        name: name.into(),
        container_id: format!("ctr-{name}").into(),
    }
}

/// An Ethernet + IPv4 + UDP frame with valid checksums; `len` is the whole frame.
pub fn udp_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    len: usize,
) -> Vec<u8> {
    let len = len.max(eth::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN);
    let mut f = vec![0u8; len];
    eth::Repr {
        src: src_mac,
        dst: dst_mac,
        ethertype: eth::EtherType::Ipv4,
    }
    .emit(&mut eth::Frame::new_unchecked(&mut f[..]));
    let ip_len = len - eth::HEADER_LEN;
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = i as u8;
    }
    {
        let mut u = udp::Packet::new_unchecked(&mut f[34..]);
        udp::Repr {
            src_port: sport,
            dst_port: dport,
            payload_len: ip_len - 28,
        }
        .emit(&mut u, Some((src, dst)));
    }
    ipv4::Repr {
        src,
        dst,
        protocol: ipv4::Protocol::Udp,
        payload_len: ip_len - 20,
        ttl: 64,
        ident: 0x1234,
        dont_frag: true,
        dscp_ecn: 0,
    }
    .emit(&mut ipv4::Packet::new_unchecked(&mut f[14..]));
    f
}

/// A pod-A1 → `dst` UDP frame of `len` bytes, as pod A1 sends it (to the gateway MAC).
pub fn from_pod_a1(dst: Ipv4Addr, len: usize) -> Vec<u8> {
    udp_frame(
        POD_A1_MAC,
        crate::table::GATEWAY_MAC,
        POD_A1,
        dst,
        40000,
        5201,
        len,
    )
}

/// Wraps an inner Ethernet frame in VXLAN as node B would send it to A.
pub fn vxlan_from_b(inner: &[u8], vni: u32, src_node: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; vxlan::OVERHEAD + inner.len()];
    eth::Repr {
        src: NODE_B_MAC,
        dst: NODE_A_MAC,
        ethertype: eth::EtherType::Ipv4,
    }
    .emit(&mut eth::Frame::new_unchecked(&mut f[..]));
    f[50..].copy_from_slice(inner);
    vxlan::Repr { vni }.emit(&mut vxlan::Packet::new_unchecked(&mut f[42..]));
    udp::Repr {
        src_port: 50000,
        dst_port: vxlan::DEFAULT_PORT,
        payload_len: 8 + inner.len(),
    }
    .emit(&mut udp::Packet::new_unchecked(&mut f[34..]), None);
    ipv4::Repr {
        src: src_node,
        dst: NODE_A,
        protocol: ipv4::Protocol::Udp,
        payload_len: 16 + inner.len(),
        ttl: 64,
        ident: 1,
        dont_frag: false,
        dscp_ecn: 0,
    }
    .emit(&mut ipv4::Packet::new_unchecked(&mut f[14..]));
    f
}

/// Wraps an inner IPv4 packet in IPIP as node B would send it to A.
pub fn ipip_from_b(inner_ip: &[u8], src_node: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; 34 + inner_ip.len()];
    eth::Repr {
        src: NODE_B_MAC,
        dst: NODE_A_MAC,
        ethertype: eth::EtherType::Ipv4,
    }
    .emit(&mut eth::Frame::new_unchecked(&mut f[..]));
    f[34..].copy_from_slice(inner_ip);
    ipv4::Repr {
        src: src_node,
        dst: NODE_A,
        protocol: ipv4::Protocol::Ipip,
        payload_len: inner_ip.len(),
        ttl: 64,
        ident: 1,
        dont_frag: true,
        dscp_ecn: 0,
    }
    .emit(&mut ipv4::Packet::new_unchecked(&mut f[14..]));
    f
}

/// Verifies the IPv4 header checksum of the packet at `l3`.
pub fn ipv4_ok(frame: &[u8], l3: usize) -> bool {
    checksum::sum(&frame[l3..l3 + 20]) == 0xffff
}
