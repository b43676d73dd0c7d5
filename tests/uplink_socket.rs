//! The kernel-socket uplink against real kernels: two "node" namespaces A and B
//! joined by a veth pair (198.18.0.1/24 and 198.18.0.2/24). A opens a
//! [`PacketSocket`] on its end; B sends with ordinary kernel sockets (python3)
//! and receives with a kernel VXLAN device.
//!
//! Needs root (skips otherwise). Every link, address and route is made inside
//! the test's own namespaces, and all traffic stays on the veth between them.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use common::{skip_unless_root, unique, unique_ifname, vxlan_inner_tcp, Netns};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use sluice_dataplane::buf::{Batch, Packet, Pool, DEFAULT_BUF_SIZE};
use sluice_dataplane::port::packet::{KernelSinks, PacketError, PacketSocket, UplinkFilter};
use sluice_dataplane::port::{gso, Port};
use sluice_dataplane::sys::netns::in_netns;
use sluice_dataplane::testkit;
use sluice_dataplane::wire::{udp, vxlan, MacAddr};

const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VNI: u32 = 4096;

/// Sends each hex payload after the first two arguments as one UDP datagram to
/// `argv[1]:argv[2]`, from an ordinary socket.
const UDP_SEND: &str = "import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for p in sys.argv[3:]:
    s.sendto(bytes.fromhex(p), (sys.argv[1], int(sys.argv[2])))
";

/// Sends each hex payload after the first argument to `argv[1]` as IPv4
/// protocol 4: the kernel adds the outer header, the payload is the inner packet.
const IPIP_SEND: &str = "import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)
for p in sys.argv[2:]:
    s.sendto(bytes.fromhex(p), (sys.argv[1], 0))
";

/// Sends `argv[4]` (hex) to `argv[1]:argv[2]` in one call with UDP GSO
/// (`UDP_SEGMENT`, 103) of `argv[3]` bytes: the kernel hands the link one
/// superframe that stands for that many datagrams.
const UDP_GSO_SEND: &str = "import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_UDP, 103, int(sys.argv[3]))
s.sendto(bytes.fromhex(sys.argv[4]), (sys.argv[1], int(sys.argv[2])))
";

/// Node namespaces A and B and the veth between them (`va` in A, `vb` in B).
/// Whatever a test opens in A must be declared after this, so it closes first.
struct Nodes {
    a: Netns,
    b: Netns,
    va: String,
    vb: String,
    b_mac: MacAddr,
}

impl Nodes {
    fn new() -> Nodes {
        let a = Netns::new(&unique("sluice-upa-"));
        let b = Netns::new(&unique("sluice-upb-"));
        let va = unique_ifname("slua");
        let vb = unique_ifname("slub");
        // Made inside A, its peer moved straight to B: nothing in the root namespace.
        a.exec_ok(
            "ip",
            &[
                "link",
                "add",
                &va,
                "type",
                "veth",
                "peer",
                "name",
                &vb,
                "netns",
                b.name(),
            ],
        );
        a.exec_ok("ip", &["addr", "add", "198.18.0.1/24", "dev", &va]);
        a.exec_ok("ip", &["link", "set", &va, "up"]);
        b.exec_ok("ip", &["addr", "add", "198.18.0.2/24", "dev", &vb]);
        b.exec_ok("ip", &["link", "set", &vb, "up"]);
        let b_mac = read_mac(&b, &vb);
        Nodes {
            a,
            b,
            va,
            vb,
            b_mac,
        }
    }

    /// A's uplink socket, opened on a thread inside A.
    fn open(&self, filter: &UplinkFilter) -> PacketSocket {
        in_netns(&self.a.handle(), || PacketSocket::open(&self.va, filter))
            .expect("entering A")
            .expect("opening the uplink socket")
    }

    fn sinks(&self, vxlan_port: Option<u16>, ipip: bool) -> Result<KernelSinks, PacketError> {
        in_netns(&self.a.handle(), || {
            KernelSinks::open(A_IP, vxlan_port, ipip)
        })
        .expect("entering A")
    }

    /// A's uplink socket taking VXLAN, its kernel sinks, and a pool of 256.
    fn vxlan_on_a(&self) -> (PacketSocket, KernelSinks, Pool) {
        let sock = self.open(&UplinkFilter::vxlan(A_IP));
        let sinks = self.sinks(Some(4789), false).expect("sinks");
        (sock, sinks, Pool::new(256, DEFAULT_BUF_SIZE))
    }

    fn udp_from_b(&self, dst: Ipv4Addr, port: u16, payloads: &[&[u8]]) {
        let hex: Vec<String> = payloads.iter().map(|p| hex(p)).collect();
        let (dst, port) = (dst.to_string(), port.to_string());
        let mut args = vec!["-c", UDP_SEND, &dst, &port];
        args.extend(hex.iter().map(String::as_str));
        self.b.exec_ok("python3", &args);
    }

    fn ipip_from_b(&self, dst: Ipv4Addr, inner: &[&[u8]]) {
        let hex: Vec<String> = inner.iter().map(|p| hex(p)).collect();
        let dst = dst.to_string();
        let mut args = vec!["-c", IPIP_SEND, &dst];
        args.extend(hex.iter().map(String::as_str));
        self.b.exec_ok("python3", &args);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read_mac(ns: &Netns, ifname: &str) -> MacAddr {
    let s = ns.exec_ok("cat", &[&format!("/sys/class/net/{ifname}/address")]);
    s.trim().parse().expect("a MAC address")
}

/// Whether the tools these tests drive are here (python3 for B's senders).
fn skip_unless_tools() -> bool {
    if skip_unless_root() {
        return true;
    }
    if std::process::Command::new("python3")
        .arg("-V")
        .output()
        .is_err()
    {
        eprintln!("skipped: python3 is missing");
        return true;
    }
    false
}

/// Receives until `want` frames have arrived or `timeout` passed, then keeps
/// listening for `linger` to catch any that should not have come.
fn receive(
    sock: &mut PacketSocket,
    pool: &mut Pool,
    want: usize,
    timeout: Duration,
    linger: Duration,
) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut batch = Batch::new();
    let start = Instant::now();
    let mut deadline = start + timeout;
    let mut lingering = false;
    while Instant::now() < deadline {
        let n = sock
            .rx_burst(pool, &mut batch, 64)
            .expect("receiving from the uplink");
        frames.extend(batch.iter().map(|p| p.data().to_vec()));
        batch.clear_into(pool);
        if !lingering && frames.len() >= want {
            lingering = true;
            deadline = Instant::now() + linger;
        }
        if n == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    frames
}

/// The one packet `sock` receives within 3 s, with its metadata; fails if
/// none or more come.
fn receive_one(sock: &mut PacketSocket, pool: &mut Pool) -> Batch {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut rx = Batch::new();
    while rx.is_empty() && Instant::now() < deadline {
        sock.rx_burst(pool, &mut rx, 64).expect("receiving");
        if rx.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    sock.rx_burst(pool, &mut rx, 64).expect("receiving");
    assert_eq!(rx.len(), 1, "one packet");
    rx
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A VXLAN header and an inner frame, as the UDP payload.
fn vxlan_payload(inner: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; vxlan::HEADER_LEN];
    vxlan::Repr { vni: VNI }.emit(&mut vxlan::Packet::new_unchecked(&mut p[..]));
    p.extend_from_slice(inner);
    p
}

/// A whole VXLAN frame from A to `dst` (outer headers as Sluice prebuilds them).
fn vxlan_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    dst: Ipv4Addr,
    sport: u16,
    inner: &[u8],
) -> Vec<u8> {
    let payload = vxlan_payload(inner);
    let mut f = testkit::udp_frame(
        src_mac,
        dst_mac,
        A_IP,
        dst,
        sport,
        vxlan::DEFAULT_PORT,
        42 + payload.len(),
    );
    f[42..].copy_from_slice(&payload);
    udp::Packet::new_unchecked(&mut f[34..]).fill_checksum(A_IP, dst);
    f
}

/// `Icmp OutDestUnreachs` of the namespace, from its `/proc/net/snmp`.
fn out_dest_unreachs(ns: &Netns) -> u64 {
    let snmp = ns.exec_ok("cat", &["/proc/net/snmp"]);
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (Some(names), Some(values)) = (icmp.next(), icmp.next()) else {
        panic!("no Icmp lines in /proc/net/snmp:\n{snmp}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutDestUnreachs")
        .and_then(|(_, v)| v.parse().ok())
        .expect("an OutDestUnreachs count")
}

fn rx_packets(ns: &Netns, ifname: &str) -> u64 {
    ns.link_counter(ifname, "rx_packets")
}

/// Sends `count` copies of `payload` from B to `dst` as fast as one socket
/// can; returns how many the kernel took.
fn flood_from_b(nodes: &Nodes, dst: (Ipv4Addr, u16), payload: &[u8], count: u64) -> u64 {
    in_netns(&nodes.b.handle(), || {
        let s = UdpSocket::bind((B_IP, 0)).expect("UDP socket in B");
        (0..count)
            .filter(|_| s.send_to(payload, dst).is_ok())
            .count() as u64
    })
    .expect("entering B")
}

/// Frames the kernel drops because the socket's receive queue is full are
/// read from the kernel (which clears its count on reading) and added up in
/// the port's counters: every one counted once, and none the port received.
#[test]
fn a_full_receive_queue_is_counted_as_kernel_drops() {
    if skip_unless_tools() {
        return;
    }
    let nodes = Nodes::new();
    let (mut sock, _sinks, mut pool) = nodes.vxlan_on_a();
    sock.update_kernel_stats();
    assert_eq!(sock.offload_stats().rx_kernel_drops, 0);

    // Far more than the 4 MiB receive buffer holds, and nobody reading.
    let payload = vxlan_payload(&testkit::from_pod_a1(testkit::POD_B1, 1000));
    let sent = flood_from_b(&nodes, (A_IP, 4789), &payload, 20_000);
    sock.update_kernel_stats();
    let drops = sock.offload_stats().rx_kernel_drops;
    let got = receive(
        &mut sock,
        &mut pool,
        sent as usize,
        Duration::from_secs(2),
        Duration::ZERO,
    )
    .len() as u64;
    assert!(
        drops > 0 && got > 0 && got + drops <= sent,
        "{sent} sent, {got} received, {drops} dropped by the kernel"
    );
    sock.update_kernel_stats();
    assert_eq!(sock.offload_stats().rx_kernel_drops, drops, "counted twice");
    assert_eq!(pool.available(), 256, "every buffer back in the pool");
}

#[test]
fn vxlan_is_taken_whole_and_the_node_traffic_is_not() {
    if skip_unless_tools() {
        return;
    }
    let nodes = Nodes::new();
    let (mut sock, _sinks, mut pool) = nodes.vxlan_on_a();
    let a_mac = sock.mac();

    // (b) The node's own traffic still works, and is not taken.
    nodes.b.exec_ok(
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "2", &A_IP.to_string()],
    );
    // Decoys: UDP to another port of the node, and VXLAN to an address on the
    // link that is not the node's (B is told it is at A's MAC).
    let inner = testkit::from_pod_a1(testkit::POD_B1, 120);
    let payload = vxlan_payload(&inner);
    nodes.udp_from_b(A_IP, 5000, &[b"not for sluice"]);
    nodes.b.exec_ok(
        "ip",
        &[
            "neigh",
            "replace",
            "198.18.0.9",
            "lladdr",
            &a_mac.to_string(),
            "dev",
            &nodes.vb,
            "nud",
            "permanent",
        ],
    );
    nodes.udp_from_b(Ipv4Addr::new(198, 18, 0, 9), 4789, &[&payload]);
    // (a) The real thing.
    nodes.udp_from_b(A_IP, 4789, &[&payload]);

    let frames = receive(
        &mut sock,
        &mut pool,
        1,
        Duration::from_secs(5),
        Duration::from_millis(300),
    );
    assert_eq!(frames.len(), 1, "exactly the VXLAN frame: {frames:02x?}");

    // (c) Whole: Ethernet, IPv4 and UDP as the kernel sent them, payload unchanged.
    let f = &frames[0];
    assert_eq!(&f[0..6], a_mac.as_bytes(), "to A's MAC");
    assert_eq!(&f[6..12], nodes.b_mac.as_bytes(), "from B's MAC");
    let pkt = SlicedPacket::from_ethernet(f).expect("an Ethernet frame");
    let Some(NetSlice::Ipv4(ip)) = &pkt.net else {
        panic!("not IPv4: {f:02x?}");
    };
    assert_eq!(ip.header().source_addr(), B_IP);
    assert_eq!(ip.header().destination_addr(), A_IP);
    let Some(TransportSlice::Udp(u)) = &pkt.transport else {
        panic!("not UDP: {f:02x?}");
    };
    assert_eq!(u.destination_port(), 4789);
    assert_eq!(u.payload(), &payload[..], "VXLAN header and inner frame");
    assert_eq!(&f[f.len() - inner.len()..], &inner[..]);

    let st = sock.stats();
    assert_eq!((st.rx_frames, st.rx_truncated), (1, 0), "{st:?}");
    assert_eq!(sock.update_kernel_drops().unwrap(), 0);
}

#[test]
fn ipip_and_native_prefixes_are_taken() {
    if skip_unless_tools() {
        return;
    }
    let nodes = Nodes::new();
    let filter = UplinkFilter {
        node_ip: A_IP,
        vxlan_port: None,
        ipip: true,
        native_prefixes: vec![(Ipv4Addr::new(198, 19, 1, 0), 24)],
    };
    let mut sock = nodes.open(&filter);
    let _sinks = nodes.sinks(None, true).expect("sinks");
    let mut pool = Pool::new(256, DEFAULT_BUF_SIZE);
    nodes.b.exec_ok(
        "ip",
        &["route", "add", "198.19.0.0/16", "via", &A_IP.to_string()],
    );

    let inner = testkit::from_pod_a1(testkit::POD_B1, 100);
    let inner_ip = &inner[14..];
    // Decoys: VXLAN (off in this filter) and a pod address outside the prefix.
    nodes.udp_from_b(A_IP, 4789, &[&vxlan_payload(&inner)]);
    nodes.udp_from_b(Ipv4Addr::new(198, 19, 2, 10), 80, &[b"other pods"]);
    nodes.ipip_from_b(A_IP, &[inner_ip]);
    nodes.udp_from_b(Ipv4Addr::new(198, 19, 1, 10), 80, &[b"native"]);

    let mut frames = receive(
        &mut sock,
        &mut pool,
        2,
        Duration::from_secs(5),
        Duration::from_millis(300),
    );
    assert_eq!(frames.len(), 2, "IPIP and native only: {frames:02x?}");
    // The kernel keeps the order B sent them in.
    let native = frames.pop().unwrap();
    let ipip = frames.pop().unwrap();

    let pkt = SlicedPacket::from_ethernet(&ipip).expect("an Ethernet frame");
    let Some(NetSlice::Ipv4(ip)) = &pkt.net else {
        panic!("not IPv4: {ipip:02x?}");
    };
    assert_eq!(ip.header().protocol().0, 4);
    assert_eq!(ip.header().destination_addr(), A_IP);
    assert_eq!(ip.payload().payload, inner_ip, "the inner packet, whole");

    let pkt = SlicedPacket::from_ethernet(&native).expect("an Ethernet frame");
    let Some(NetSlice::Ipv4(ip)) = &pkt.net else {
        panic!("not IPv4: {native:02x?}");
    };
    assert_eq!(
        ip.header().destination_addr(),
        Ipv4Addr::new(198, 19, 1, 10)
    );
    let Some(TransportSlice::Udp(u)) = &pkt.transport else {
        panic!("not UDP: {native:02x?}");
    };
    assert_eq!(u.payload(), b"native");
}

/// Takes what `sock` holds in bursts of at most 64: (frames, receive calls) of
/// each burst, until one comes back short. Fails if one is empty before
/// `want` frames have come, or if the frames are not `0..want` in order (the
/// first byte after `at`, a little-endian u16, numbers them).
fn take_bursts(
    sock: &mut PacketSocket,
    pool: &mut Pool,
    want: usize,
    at: usize,
) -> Vec<(usize, u64)> {
    let mut seen = Vec::new();
    let mut bursts = Vec::new();
    let mut batch = Batch::new();
    loop {
        let calls = sock.stats().rx_calls;
        let n = sock.rx_burst(pool, &mut batch, 64).expect("receiving");
        bursts.push((n, sock.stats().rx_calls - calls));
        assert_eq!(n, batch.len(), "one frame per datagram");
        seen.extend(
            batch
                .iter()
                .map(|p| u16::from_le_bytes([p.data()[at], p.data()[at + 1]])),
        );
        batch.clear_into(pool);
        if n < 64 {
            break;
        }
    }
    let expected: Vec<u16> = (0..want as u16).collect();
    assert_eq!(seen, expected, "every datagram once, in order");
    bursts
}

/// A 64-byte inner frame from pod A1 whose UDP payload starts with `i`
/// (little-endian), as [`take_bursts`] reads it.
fn numbered_inner(i: u16) -> Vec<u8> {
    let mut f = testkit::from_pod_a1(testkit::POD_B1, 64);
    f[42..44].copy_from_slice(&i.to_le_bytes());
    f
}

#[test]
fn a_narrow_receive_after_a_light_burst_still_takes_a_full_one() {
    // The socket offers the kernel as many buffers as the last burst needed
    // (at least 4) and widens at once when a call fills them: a worker drops a
    // port from its ready list when a burst comes back short, so a burst must
    // be short only when the socket is empty. Both receive paths: with the
    // virtio-net header (VXLAN) and without (IPIP).
    if skip_unless_tools() {
        return;
    }
    for ipip in [false, true] {
        let nodes = Nodes::new();
        let filter = if ipip {
            UplinkFilter {
                ipip: true,
                vxlan_port: None,
                ..UplinkFilter::vxlan(A_IP)
            }
        } else {
            UplinkFilter::vxlan(A_IP)
        };
        let mut sock = nodes.open(&filter);
        let _sinks = nodes.sinks(filter.vxlan_port, ipip).expect("sinks");
        let mut pool = Pool::new(512, DEFAULT_BUF_SIZE);
        // Inner packets numbered 0..n in the first two bytes of their UDP
        // payload: 14 (outer Ethernet) + 20 (outer IPv4), then for VXLAN 8 + 8
        // + the inner frame's 14, for IPIP nothing; then 20 + 8 (inner IPv4, UDP).
        let at = if ipip { 34 + 28 } else { 34 + 30 + 28 };
        let send = |n: u16| {
            let inner: Vec<Vec<u8>> = (0..n).map(numbered_inner).collect();
            let before = rx_packets(&nodes.a, &nodes.va);
            if ipip {
                let ips: Vec<&[u8]> = inner.iter().map(|f| &f[14..]).collect();
                nodes.ipip_from_b(A_IP, &ips);
            } else {
                let payloads: Vec<Vec<u8>> = inner.iter().map(|f| vxlan_payload(f)).collect();
                let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
                nodes.udp_from_b(A_IP, 4789, &refs);
            }
            assert!(
                wait_until(Duration::from_secs(5), || {
                    rx_packets(&nodes.a, &nodes.va) >= before + u64::from(n)
                }),
                "{n} datagrams reached A"
            );
        };

        // A lone datagram: one call, and the next burst starts narrow.
        send(1);
        assert_eq!(
            take_bursts(&mut sock, &mut pool, 1, at),
            [(1, 1)],
            "ipip {ipip}"
        );
        // 150 at once: 64, 64 and 22, the first in calls of 4, 16 and 44.
        send(150);
        let bursts = take_bursts(&mut sock, &mut pool, 150, at);
        assert_eq!(bursts, [(64, 3), (64, 1), (22, 1)], "ipip {ipip}");
        let st = sock.stats();
        assert_eq!(
            (st.rx_frames, st.rx_truncated),
            (151, 0),
            "ipip {ipip}: {st:?}"
        );
        if !ipip {
            // Narrow again, then one UDP superframe of 20 VXLAN datagrams: cut
            // into 20 frames by a call offering 4 buffers, all of them come in
            // that burst, none is left waiting behind a short one.
            send(1);
            assert_eq!(take_bursts(&mut sock, &mut pool, 1, at), [(1, 1)]);
            let payloads: Vec<u8> = (0..20u16)
                .flat_map(|i| vxlan_payload(&numbered_inner(i)))
                .collect();
            let seg = (payloads.len() / 20).to_string();
            let before = rx_packets(&nodes.a, &nodes.va);
            let (dst, data) = (A_IP.to_string(), hex(&payloads));
            nodes
                .b
                .exec_ok("python3", &["-c", UDP_GSO_SEND, &dst, "4789", &seg, &data]);
            assert!(wait_until(Duration::from_secs(5), || {
                rx_packets(&nodes.a, &nodes.va) > before
            }));
            assert_eq!(take_bursts(&mut sock, &mut pool, 20, at), [(20, 1)]);
            let st = sock.stats();
            assert_eq!(
                (st.rx_gso, st.rx_gso_cut),
                (1, 1),
                "one superframe, cut: {st:?}"
            );
        }
        assert_eq!(sock.update_kernel_drops().unwrap(), 0);
    }
}

#[test]
fn sent_frames_reach_the_peer_kernel_vxlan_device() {
    if skip_unless_tools() {
        return;
    }
    let nodes = Nodes::new();
    let b = &nodes.b;
    let vx_mac = kernel_vxlan_peer(&nodes);

    let mut sock = nodes.open(&UplinkFilter::vxlan(A_IP));
    let a_mac = sock.mac();
    let mut pool = Pool::new(256, DEFAULT_BUF_SIZE);
    let before = rx_packets(b, "vx0");

    // (d) Eight VXLAN frames for vx0, an oversize one among them (refused by the
    // kernel on its own), and one addressed to A itself: PACKET_IGNORE_OUTGOING
    // must keep A's socket from reading it back.
    let inner = testkit::udp_frame(
        MacAddr([0x02, 0, 198, 19, 250, 1]),
        vx_mac,
        Ipv4Addr::new(198, 19, 250, 1),
        Ipv4Addr::new(198, 19, 250, 2),
        40000,
        9,
        100,
    );
    let mut frames: Vec<Vec<u8>> = (0..8u16)
        .map(|i| vxlan_frame(a_mac, nodes.b_mac, B_IP, 49152 + i, &inner))
        .collect();
    frames.insert(4, vec![0u8; 1600]);
    frames.push(vxlan_frame(a_mac, nodes.b_mac, A_IP, 50000, &inner));
    let mut batch = Batch::new();
    for f in &frames {
        let mut p = pool.alloc().expect("a buffer");
        assert!(p.load(f));
        batch.push(p);
    }
    let sent = sock.tx_burst(&mut pool, &mut batch).expect("sending");
    assert_eq!(sent, 9);
    assert!(batch.is_empty());
    assert_eq!(pool.available(), 256, "every buffer back in the pool");
    let st = *sock.stats();
    assert_eq!(
        (st.tx_frames, st.tx_errors, st.tx_refused),
        (9, 1, 0),
        "{st:?}"
    );
    // One sendmmsg takes the four before the oversize frame, one fails on it
    // alone, one takes the rest.
    assert_eq!(st.tx_calls, 3, "{st:?}");

    assert!(
        wait_until(Duration::from_secs(3), || rx_packets(b, "vx0")
            >= before + 8),
        "vx0 received {} of 8",
        rx_packets(b, "vx0") - before
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rx_packets(b, "vx0"), before + 8);

    let back = receive(
        &mut sock,
        &mut pool,
        0,
        Duration::from_millis(300),
        Duration::ZERO,
    );
    assert!(back.is_empty(), "own frames read back: {back:02x?}");

    // With A's end down the kernel refuses the whole batch; nothing is lost track of.
    nodes.a.exec_ok("ip", &["link", "set", &nodes.va, "down"]);
    for f in &frames[..3] {
        let mut p = pool.alloc().expect("a buffer");
        assert!(p.load(f));
        batch.push(p);
    }
    assert_eq!(sock.tx_burst(&mut pool, &mut batch).expect("sending"), 0);
    assert_eq!(sock.stats().tx_refused, 3);
    assert_eq!(pool.available(), 256);
}

/// B's kernel VXLAN device (`vx0`) with a pod-range address on it, the peer
/// frames are sent to; returns its MAC.
fn kernel_vxlan_peer(nodes: &Nodes) -> MacAddr {
    common::kernel_vxlan(&nodes.b, &nodes.vb, "198.18.0.2");
    nodes
        .b
        .exec_ok("ip", &["addr", "add", "198.19.250.2/24", "dev", "vx0"]);
    read_mac(&nodes.b, "vx0")
}

#[test]
fn runs_go_as_one_superframe_and_are_cut_back_on_both_kinds_of_peer() {
    if skip_unless_tools() {
        return;
    }
    let nodes = Nodes::new();
    let b = &nodes.b;
    let vx_mac = kernel_vxlan_peer(&nodes);

    let mut sock = nodes.open(&UplinkFilter::vxlan(A_IP));
    assert!(sock.has_offload(), "PACKET_VNET_HDR refused");
    // B takes VXLAN with a Sluice socket too (the kernel device still gets its copy).
    let mut peer = in_netns(&b.handle(), || {
        PacketSocket::open(&nodes.vb, &UplinkFilter::vxlan(B_IP))
    })
    .expect("entering B")
    .expect("opening B's uplink socket");
    let a_mac = sock.mac();
    let mut pool = Pool::new(256, DEFAULT_BUF_SIZE);
    let before = rx_packets(b, "vx0");

    // 20 frames of one flow (same outer headers), each with its own inner
    // payload, the last shorter; then one to another port, which goes alone.
    let frames: Vec<Vec<u8>> = (0..21u8)
        .map(|i| {
            let len = if i == 19 { 300 } else { 1200 };
            let mut inner = testkit::udp_frame(
                MacAddr([0x02, 0, 198, 19, 250, 1]),
                vx_mac,
                Ipv4Addr::new(198, 19, 250, 1),
                Ipv4Addr::new(198, 19, 250, 2),
                40000,
                9,
                len,
            );
            let n = inner.len();
            inner[n - 1] = i;
            let sport = if i == 20 { 50001 } else { 50000 };
            vxlan_frame(a_mac, nodes.b_mac, B_IP, sport, &inner)
        })
        .collect();
    let mut batch = Batch::new();
    for f in &frames {
        let mut p = pool.alloc().expect("a buffer");
        assert!(p.load(f));
        batch.push(p);
    }
    assert_eq!(sock.tx_burst(&mut pool, &mut batch).expect("sending"), 21);
    let st = *sock.stats();
    assert_eq!(
        (st.tx_gso, st.tx_gso_segments, st.tx_frames, st.tx_calls),
        (1, 20, 21, 1),
        "{st:?}"
    );

    // The kernel's VXLAN device decapsulates every piece.
    assert!(
        wait_until(Duration::from_secs(3), || rx_packets(b, "vx0")
            >= before + 21),
        "vx0 received {} of 21",
        rx_packets(b, "vx0") - before
    );
    // B's socket gets one superframe and cuts it back into the same datagrams.
    let got = receive(
        &mut peer,
        &mut pool,
        21,
        Duration::from_secs(3),
        Duration::from_millis(100),
    );
    assert_eq!(got.len(), 21);
    let pst = *peer.stats();
    assert_eq!(
        (pst.rx_gso, pst.rx_gso_cut, pst.rx_gso_segments),
        (1, 1, 20),
        "{pst:?}"
    );
    for (g, f) in got.iter().zip(&frames) {
        assert_eq!(g.len(), f.len());
        // Payload (VXLAN and inner frame) and addresses as sent; the outer IPv4
        // checksum is valid and the UDP length right.
        assert_eq!(g[42..], f[42..]);
        assert_eq!(g[..14], f[..14]);
        assert_eq!(g[26..34], f[26..34]);
        assert_eq!(g[34..38], f[34..38]);
        assert_eq!(g[38..40], f[38..40]);
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&g[14..34]).expect("IPv4 header");
        assert_eq!(usize::from(ip.total_len()), g.len() - 14);
        assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
    }
    assert_eq!(pool.available(), 256, "every buffer back in the pool");
}

/// An Ethernet/IPv4/TCP superframe carrying `data`, marked as the TAP port
/// marks one (checksum partial, segment size `mss`).
fn tcp_superframe(
    pool: &mut Pool,
    src_mac: MacAddr,
    dst_mac: MacAddr,
    data: &[u8],
    mss: u16,
) -> Packet {
    let mut tcp = etherparse::TcpHeader::new(40000, 5201, 0xfff0_0000, 64240);
    tcp.ack = true;
    tcp.psh = true;
    tcp.acknowledgment_number = 1;
    let b = etherparse::PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4([198, 19, 250, 1], [198, 19, 250, 2], 64)
        .tcp_header(tcp);
    let mut f = Vec::new();
    b.write(&mut f, data).expect("building a superframe");
    let mut p = pool.alloc_large();
    assert!(p.load(&f));
    gso::mark_superframe(&mut p, mss).expect("a valid superframe");
    p
}

/// A TCP superframe from the pipeline leaves in one message. Encapsulated
/// (VXLAN), it goes as a UDP superframe of its segments, each segment's headers
/// written apart and its payload sent from where it lies: the kernel's VXLAN
/// device takes every segment, and a Sluice socket makes them one VXLAN packet
/// again whose inner frame is a TCP superframe, its segments valid and the
/// data in order.
/// Unencapsulated (native routing), it goes as a TCP superframe, which a Sluice
/// socket hands on whole.
#[test]
fn tcp_superframes_leave_whole_and_arrive_valid() {
    if skip_unless_tools() {
        return;
    }
    let nodes = Nodes::new();
    let b = &nodes.b;
    let vx_mac = kernel_vxlan_peer(&nodes);
    let mut sock = nodes.open(&UplinkFilter::vxlan(A_IP));
    assert!(sock.has_offload(), "PACKET_VNET_HDR refused");
    assert!(sock.takes_superframes());
    let peer_filter = UplinkFilter {
        native_prefixes: vec![(Ipv4Addr::new(198, 19, 250, 0), 24)],
        ..UplinkFilter::vxlan(B_IP)
    };
    let mut peer = in_netns(&b.handle(), || PacketSocket::open(&nodes.vb, &peer_filter))
        .expect("entering B")
        .expect("opening B's uplink socket");
    let a_mac = sock.mac();
    let mut pool = Pool::new(256, DEFAULT_BUF_SIZE);
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 13 + i / 509) as u8).collect();
    let segments = data.len().div_ceil(1398);

    // VXLAN: the superframe behind the outer headers the encap stage writes.
    let before = rx_packets(b, "vx0");
    let pod_mac = MacAddr([0x02, 0, 198, 19, 250, 1]);
    let inner = tcp_superframe(&mut pool, pod_mac, vx_mac, &data, 1398);
    let f = vxlan_frame(a_mac, nodes.b_mac, B_IP, 50000, inner.data());
    pool.free(inner);
    let mut p = pool.alloc_large();
    assert!(p.load(&f));
    p.set_superframe(1398, 64);
    let mut batch = Batch::new();
    batch.push(p);
    assert_eq!(sock.tx_burst(&mut pool, &mut batch).expect("sending"), 1);
    let st = *sock.stats();
    assert_eq!(
        (st.tx_gso, st.tx_gso_segments, st.tx_frames, st.tx_calls),
        (1, segments as u64, segments as u64, 1),
        "{st:?}"
    );
    assert!(
        wait_until(Duration::from_secs(3), || rx_packets(b, "vx0")
            >= before + segments as u64),
        "vx0 received {} of {segments}",
        rx_packets(b, "vx0") - before
    );
    // B's Sluice socket makes the UDP superframe one VXLAN packet again, its
    // inner frame a TCP superframe of the segments.
    let mut rx = receive_one(&mut peer, &mut pool);
    let q = &rx.as_slice()[0];
    assert!(q.meta.is_superframe());
    assert_eq!((q.meta.gso_size, q.meta.gso_ip), (1398, 64));
    let pst = *peer.stats();
    assert_eq!(
        (pst.rx_gso, pst.rx_gso_cut, pst.rx_gso_segments),
        (1, 0, segments as u64),
        "{pst:?}"
    );
    let g = q.data();
    let outer = etherparse::Ipv4HeaderSlice::from_slice(&g[14..34]).expect("outer IPv4");
    assert_eq!(usize::from(outer.total_len()), g.len() - 14);
    assert_eq!(
        outer.header_checksum(),
        outer.to_header().calc_header_checksum()
    );
    assert_eq!(
        usize::from(u16::from_be_bytes([g[38], g[39]])),
        g.len() - 34
    );
    // Cut as a pod's TAP without offloads would get it: every segment valid,
    // the data in order.
    let cut = gso::Tcp4Gso::parse_at(g, 64, 1398).expect("a TCP superframe inside");
    assert_eq!(cut.count(), segments);
    let got: Vec<Vec<u8>> = (0..cut.count())
        .map(|i| {
            let mut seg = vec![0; cut.max_segment_len()];
            let n = cut.write_segment(g, i, &mut seg).expect("cutting");
            seg.truncate(n);
            seg
        })
        .collect();
    rx.clear_into(&mut pool);
    let mut joined = Vec::new();
    for (i, g) in got.iter().enumerate() {
        let outer = etherparse::Ipv4HeaderSlice::from_slice(&g[14..34]).expect("outer IPv4");
        assert_eq!(usize::from(outer.total_len()), g.len() - 14);
        assert_eq!(
            outer.header_checksum(),
            outer.to_header().calc_header_checksum()
        );
        let (seq, payload) = vxlan_inner_tcp(g, &format!("segment {i}"));
        assert_eq!(seq, 0xfff0_0000 + (i * 1398) as u32);
        joined.extend_from_slice(&payload);
    }
    assert!(joined == data, "the data arrived changed or out of order");

    // Native: the superframe itself, to B's MAC.
    let p = tcp_superframe(&mut pool, a_mac, nodes.b_mac, &data, 1398);
    let sent = p.data().to_vec();
    let mut batch = Batch::new();
    batch.push(p);
    assert_eq!(sock.tx_burst(&mut pool, &mut batch).expect("sending"), 1);
    assert_eq!(sock.stats().tx_gso, 2);
    let mut rx = receive_one(&mut peer, &mut pool);
    let q = &rx.as_slice()[0];
    assert!(q.meta.is_superframe());
    assert_eq!((q.meta.gso_size, q.meta.gso_ip), (1398, 14));
    assert_eq!(q.data(), &sent[..], "received as sent");
    let pst = *peer.stats();
    assert_eq!(
        (pst.rx_gso, pst.rx_gso_segments),
        (2, 2 * segments as u64),
        "{pst:?}"
    );
    rx.clear_into(&mut pool);
    drop(peer);
    drop(sock);
    assert_eq!(pool.available(), 256, "every buffer back in the pool");
}

#[test]
fn kernel_sinks_keep_the_node_from_answering_unreachable() {
    if skip_unless_tools() {
        return;
    }
    let nodes = Nodes::new();
    let filter = UplinkFilter {
        ipip: true,
        ..UplinkFilter::vxlan(A_IP)
    };
    let mut sock = nodes.open(&filter);
    let mut pool = Pool::new(256, DEFAULT_BUF_SIZE);
    let inner = testkit::from_pod_a1(testkit::POD_B1, 100);
    let payload = vxlan_payload(&inner);

    // Without sinks the kernel answers VXLAN with port unreachable: the count
    // below does measure something.
    let before = out_dest_unreachs(&nodes.a);
    nodes.udp_from_b(A_IP, 4789, &[&payload]);
    assert_eq!(
        receive(
            &mut sock,
            &mut pool,
            1,
            Duration::from_secs(5),
            Duration::ZERO
        )
        .len(),
        1
    );
    assert!(
        wait_until(Duration::from_secs(2), || out_dest_unreachs(&nodes.a)
            > before),
        "no ICMP unreachable from A without sinks"
    );
    let unanswered_ipip = {
        let before = out_dest_unreachs(&nodes.a);
        nodes.ipip_from_b(A_IP, &[&inner[14..]]);
        assert_eq!(
            receive(
                &mut sock,
                &mut pool,
                1,
                Duration::from_secs(5),
                Duration::ZERO
            )
            .len(),
            1
        );
        wait_until(Duration::from_secs(1), || {
            out_dest_unreachs(&nodes.a) > before
        })
    };
    // So does IPIP here, where the kernel has no IPIP handler of its own.
    assert!(
        unanswered_ipip,
        "no ICMP protocol unreachable from A for IPIP without sinks"
    );

    // (e) With them, nothing: the packet socket still gets every packet.
    let sinks = nodes.sinks(Some(4789), true).expect("sinks");
    assert_eq!(sinks.vxlan_port(), Some(4789));
    assert!(sinks.holds_ipip());
    let before = out_dest_unreachs(&nodes.a);
    nodes.udp_from_b(A_IP, 4789, &[&payload, &payload, &payload]);
    nodes.ipip_from_b(A_IP, &[&inner[14..], &inner[14..], &inner[14..]]);
    let got = receive(
        &mut sock,
        &mut pool,
        6,
        Duration::from_secs(5),
        Duration::from_millis(500),
    );
    assert_eq!(got.len(), 6);
    assert_eq!(
        out_dest_unreachs(&nodes.a),
        before,
        "A answered with ICMP unreachable"
    );

    // The port is held: a second sink (or a kernel VXLAN device) cannot take it.
    match nodes.sinks(Some(4789), false) {
        Err(PacketError::Io {
            op: "bind", source, ..
        }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse)
        }
        other => panic!("expected the port in use, got {other:?}"),
    }
    drop(sinks);
}

#[test]
fn bad_links_and_addresses_are_named() {
    if skip_unless_tools() {
        return;
    }
    let nodes = Nodes::new();
    let f = UplinkFilter::vxlan(A_IP);
    let r = in_netns(&nodes.a.handle(), || {
        (
            PacketSocket::open("slnosuch0", &f).map(|_| ()),
            PacketSocket::open("lo", &f).map(|_| ()),
            KernelSinks::open(Ipv4Addr::new(198, 18, 0, 77), Some(4789), false).map(|_| ()),
        )
    })
    .expect("entering A");
    assert!(
        matches!(&r.0, Err(PacketError::NotFound { name }) if name == "slnosuch0"),
        "{:?}",
        r.0
    );
    assert!(
        matches!(&r.1, Err(PacketError::NotEthernet { hatype: 772, .. })),
        "{:?}",
        r.1
    );
    let e = r.2.expect_err("198.18.0.77 is not A's");
    assert_eq!(
        e.to_string(),
        "bind for UDP sink 198.18.0.77:4789: Cannot assign requested address (os error 99)"
    );
}
