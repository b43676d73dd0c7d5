//! The AF_XDP uplink against a real kernel: two node namespaces joined by a veth
//! pair (A 198.18.0.1/24, B 198.18.0.2/24), Sluice's XDP program and socket on
//! A's end. B plays the rest of the world: it pings and talks TCP to A (which the
//! kernel must keep), and sends VXLAN, IPIP and pod traffic (which the uplink must
//! get whole, and the kernel never see). A sends VXLAN through `tx_burst` to a
//! kernel VXLAN device in B.
//!
//! Needs root (skips otherwise). Every address, link and process lives in the
//! namespaces the tests create; nothing touches the root namespace.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{skip_unless_root, unique, unique_ifname, vxlan_inner_tcp, Netns};
use etherparse::{IpNumber, Ipv4Header, PacketBuilder};
use nix::sys::socket::{
    sendto, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn,
};
use sluice_dataplane::buf::{Batch, Pool, DEFAULT_BUF_SIZE};
use sluice_dataplane::port::xdp::{XdpConfig, XdpError, XdpMode, XdpUplink};
use sluice_dataplane::port::{gso, Port};
use sluice_dataplane::sys::genl;
use sluice_dataplane::sys::netns::in_netns;

const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VNI: u32 = 4096;
const POD_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 5, 0);
const POD_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 5, 7);

/// The child process of the crash test finds its interface through these.
const HELPER_NS: &str = "SLUICE_XDP_HELPER_NS";
const HELPER_IF: &str = "SLUICE_XDP_HELPER_IF";
const HELPER_READY: &str = "sluice-xdp-helper-ready";

/// Two node namespaces and the veth pair between them.
struct Nodes {
    a: Netns,
    b: Netns,
    va: String,
    vb: String,
}

impl Nodes {
    fn new(queues: u32) -> Nodes {
        let a = Netns::new(&unique("sluice-xa-"));
        let b = Netns::new(&unique("sluice-xb-"));
        let va = unique_ifname("slxa");
        let vb = unique_ifname("slxb");
        let q = queues.to_string();
        // Made in A with its peer put straight into B: never in the root namespace.
        a.exec_ok(
            "ip",
            &[
                "link",
                "add",
                &va,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "type",
                "veth",
                "peer",
                "name",
                &vb,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "netns",
                b.name(),
            ],
        );
        a.exec_ok("ip", &["addr", "add", "198.18.0.1/24", "dev", &va]);
        b.exec_ok("ip", &["addr", "add", "198.18.0.2/24", "dev", &vb]);
        a.exec_ok("ip", &["link", "set", &va, "up"]);
        b.exec_ok("ip", &["link", "set", &vb, "up"]);
        Nodes { a, b, va, vb }
    }

    fn open(&self, cfg: &XdpConfig) -> Result<XdpUplink, XdpError> {
        let va = self.va.clone();
        in_netns(&self.a.handle(), move || XdpUplink::open(&va, cfg)).expect("entering A")
    }

    /// The ids of the XDP programs `ip link` shows on A's end.
    fn xdp_prog_ids(&self) -> Vec<u32> {
        let out = self
            .a
            .exec_ok("ip", &["-d", "link", "show", "dev", &self.va]);
        let words: Vec<&str> = out.split_whitespace().collect();
        words
            .windows(3)
            .filter(|w| w[0].starts_with("prog/xdp") && w[1] == "id")
            .filter_map(|w| w[2].parse().ok())
            .collect()
    }

    fn mac(ns: &Netns, ifname: &str) -> [u8; 6] {
        let s = ns.exec_ok("cat", &[&format!("/sys/class/net/{ifname}/address")]);
        let mut mac = [0u8; 6];
        for (m, h) in mac.iter_mut().zip(s.trim().split(':')) {
            *m = u8::from_str_radix(h, 16).expect("MAC");
        }
        mac
    }
}

/// A counter from A's `/proc/net/snmp` (`Udp NoPorts`, `Ip InUnknownProtos`).
fn snmp(ns: &Netns, group: &str, field: &str) -> u64 {
    let s = ns.exec_ok("cat", &["/proc/net/snmp"]);
    let prefix = format!("{group}:");
    let lines: Vec<&str> = s.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(lines.len(), 2, "{group} in /proc/net/snmp");
    let names = lines[0].split_whitespace();
    let values = lines[1].split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == field)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("{group} {field} in /proc/net/snmp"))
}

/// Polls the uplink until `want` accepts a frame or `timeout` passes; returns the
/// frame and every frame seen.
fn pump(
    up: &mut XdpUplink,
    pool: &mut Pool,
    timeout: Duration,
    want: impl Fn(&[u8]) -> bool,
) -> (Option<Vec<u8>>, Vec<Vec<u8>>) {
    let deadline = Instant::now() + timeout;
    let mut batch = Batch::new();
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let n = up.rx_burst(pool, &mut batch, 64).expect("rx_burst");
        if n == 0 {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let frames: Vec<Vec<u8>> = batch.iter().map(|p| p.data().to_vec()).collect();
        batch.clear_into(pool);
        for f in frames {
            let hit = want(&f);
            seen.push(f.clone());
            if hit {
                return (Some(f), seen);
            }
        }
    }
    (None, seen)
}

/// IPv4 fields of an Ethernet frame: (protocol, source, destination, header length).
fn ipv4(frame: &[u8]) -> Option<(u8, Ipv4Addr, Ipv4Addr, usize)> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    Some((ip[9], src, dst, ihl))
}

fn udp_dst_port(frame: &[u8]) -> Option<u16> {
    let (proto, _, _, ihl) = ipv4(frame)?;
    let udp = frame.get(14 + ihl..14 + ihl + 8)?;
    (proto == 17).then(|| u16::from_be_bytes([udp[2], udp[3]]))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A VXLAN payload (header + inner Ethernet/IPv4/UDP frame) carrying `marker`.
fn vxlan_payload(marker: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08, 0, 0, 0];
    v.extend_from_slice(&(VNI << 8).to_be_bytes());
    // The inner source MAC must differ from the receiving VXLAN device's own.
    PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x11], [0x02, 0, 0, 0, 0, 0x22])
        .ipv4([198, 19, 1, 2], [198, 19, 2, 2], 64)
        .udp(40000, 7)
        .write(&mut v, marker)
        .expect("inner frame");
    v
}

/// Sends a UDP datagram from B's namespace.
fn udp_from_b(nodes: &Nodes, dst: SocketAddr, payload: &[u8]) {
    in_netns(&nodes.b.handle(), || {
        let s = UdpSocket::bind((B_IP, 0)).expect("UDP socket in B");
        s.send_to(payload, dst).expect("sending from B");
    })
    .expect("entering B");
}

/// Sends an IPIP packet (outer IPv4 protocol 4, built here) from B to A through
/// a raw socket: the kernel here has no IPIP device.
fn ipip_from_b(nodes: &Nodes, marker: &[u8]) {
    let mut inner = Vec::new();
    PacketBuilder::ipv4([198, 19, 1, 2], [198, 19, 2, 2], 64)
        .udp(40000, 7)
        .write(&mut inner, marker)
        .expect("inner packet");
    let mut outer = Ipv4Header::new(
        inner.len() as u16,
        64,
        IpNumber::IPV4,
        B_IP.octets(),
        A_IP.octets(),
    )
    .expect("outer header");
    outer.header_checksum = outer.calc_header_checksum();
    let mut pkt = Vec::new();
    outer.write(&mut pkt).expect("outer header bytes");
    pkt.extend_from_slice(&inner);
    in_netns(&nodes.b.handle(), || {
        // IPPROTO_RAW: the header is ours (IP_HDRINCL implied).
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Raw,
        )
        .expect("raw socket in B");
        let dst = SockaddrIn::from(std::net::SocketAddrV4::new(A_IP, 0));
        sendto(fd.as_raw_fd(), &pkt, &dst, MsgFlags::empty()).expect("sending IPIP from B");
    })
    .expect("entering B");
}

fn ping_from_b(nodes: &Nodes) {
    nodes
        .b
        .exec_ok("ping", &["-c", "2", "-i", "0.2", "-W", "2", "198.18.0.1"]);
}

/// A TCP connection from B to a listener in A, one message each way.
fn tcp_from_b(nodes: &Nodes) {
    let listener = in_netns(&nodes.a.handle(), || TcpListener::bind((A_IP, 0)))
        .expect("entering A")
        .expect("TCP listener in A");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read in A");
        s.write_all(b"world").expect("write in A");
        tx.send(buf).unwrap();
    });
    let mut c = in_netns(&nodes.b.handle(), || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .expect("entering B")
    .expect("TCP connect from B to A");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).expect("TCP reply from A");
    assert_eq!(&buf, b"world");
    assert_eq!(&rx.recv_timeout(Duration::from_secs(5)).unwrap(), b"hello");
    server.join().unwrap();
}

/// The whole exchange in one mode: node traffic stays with A's kernel, tunnel
/// traffic reaches the uplink whole, and the uplink sends VXLAN that B's kernel
/// decapsulates.
fn steers_tunnels_and_leaves_node_traffic(mode: XdpMode) {
    let nodes = Nodes::new(1);
    let mut cfg = XdpConfig::new(A_IP);
    cfg.ipip = true;
    cfg.mode = mode;
    cfg.frames = 256;
    let mut up = nodes.open(&cfg).expect("opening the XDP uplink");
    assert_eq!(up.mode(), mode);
    assert_eq!(nodes.xdp_prog_ids(), [up.program_id()]);
    let mut pool = Pool::new(512, DEFAULT_BUF_SIZE);

    // The node's own traffic (ARP, ICMP, TCP) is the kernel's.
    ping_from_b(&nodes);
    tcp_from_b(&nodes);
    let (_, seen) = pump(&mut up, &mut pool, Duration::from_millis(200), |_| false);
    assert!(
        seen.is_empty(),
        "node traffic reached the uplink: {seen:02x?}"
    );

    // Control: UDP to a port with no listener is the kernel's, which counts it.
    let no_ports = snmp(&nodes.a, "Udp", "NoPorts");
    udp_from_b(&nodes, SocketAddr::from((A_IP, 4790)), b"not vxlan");
    let deadline = Instant::now() + Duration::from_secs(3);
    while snmp(&nodes.a, "Udp", "NoPorts") == no_ports {
        assert!(
            Instant::now() < deadline,
            "UDP to 4790 never reached A's kernel"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // VXLAN to the node: the uplink gets the whole frame, the kernel nothing.
    let no_ports = snmp(&nodes.a, "Udp", "NoPorts");
    let marker = b"sluice-vxlan-rx";
    udp_from_b(
        &nodes,
        SocketAddr::from((A_IP, 4789)),
        &vxlan_payload(marker),
    );
    let (got, seen) = pump(&mut up, &mut pool, Duration::from_secs(3), |f| {
        udp_dst_port(f) == Some(4789) && contains(f, marker)
    });
    let f = got.unwrap_or_else(|| panic!("VXLAN never reached the uplink; saw {seen:02x?}"));
    let a_mac = Nodes::mac(&nodes.a, &nodes.va);
    let b_mac = Nodes::mac(&nodes.b, &nodes.vb);
    assert_eq!(f[..6], a_mac, "outer destination MAC");
    assert_eq!(f[6..12], b_mac, "outer source MAC");
    assert_eq!(
        ipv4(&f).map(|(p, s, d, _)| (p, s, d)),
        Some((17, B_IP, A_IP))
    );
    assert_eq!(f.len(), 14 + 20 + 8 + vxlan_payload(marker).len());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        snmp(&nodes.a, "Udp", "NoPorts"),
        no_ports,
        "A's kernel saw the VXLAN packet"
    );

    // IPIP to the node: the same.
    let unknown = snmp(&nodes.a, "Ip", "InUnknownProtos");
    let marker = b"sluice-ipip-rx";
    ipip_from_b(&nodes, marker);
    let (got, seen) = pump(&mut up, &mut pool, Duration::from_secs(3), |f| {
        contains(f, marker)
    });
    let f = got.unwrap_or_else(|| panic!("IPIP never reached the uplink; saw {seen:02x?}"));
    assert_eq!(
        ipv4(&f).map(|(p, s, d, _)| (p, s, d)),
        Some((4, B_IP, A_IP))
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(snmp(&nodes.a, "Ip", "InUnknownProtos"), unknown);
    assert!(up.stats().rx_frames >= 2);

    // Transmit: VXLAN from A's uplink to a kernel VXLAN device in B.
    common::kernel_vxlan(&nodes.b, &nodes.vb, "198.18.0.2");
    let rx_packets = || nodes.b.link_counter("vx0", "rx_packets");
    let before = rx_packets();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(a_mac, b_mac)
        .ipv4(A_IP.octets(), B_IP.octets(), 64)
        .udp(49152, 4789)
        .write(&mut frame, &vxlan_payload(b"sluice-vxlan-tx"))
        .unwrap();
    let mut tx = Batch::new();
    for _ in 0..3 {
        let mut p = pool.alloc().unwrap();
        assert!(p.load(&frame));
        tx.push(p);
    }
    assert_eq!(up.tx_burst(&mut pool, &mut tx).expect("tx_burst"), 3);
    assert!(tx.is_empty());
    let deadline = Instant::now() + Duration::from_secs(3);
    while rx_packets() < before + 3 {
        assert!(
            Instant::now() < deadline,
            "B's vx0 counted {} of 3 frames; uplink {:?}, kernel {:?}",
            rx_packets() - before,
            up.stats(),
            up.kernel_stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(up.stats().tx_frames, 3);
    assert_eq!(up.stats().tx_refused, 0);
    assert_eq!(pool.available(), pool.total());

    drop(up);
    assert_eq!(
        nodes.xdp_prog_ids(),
        [] as [u32; 0],
        "program left after drop"
    );
    // And the kernel has the link to itself again.
    ping_from_b(&nodes);
}

/// What the driver says before anything is attached agrees with the bind: a
/// veth runs XDP programs but offers AF_XDP no zero-copy (netdev netlink,
/// Linux 6.3), and the socket binds in copy mode. `uplink_backend = "auto"`
/// decides from the first.
#[test]
fn a_veth_offers_xdp_but_no_zero_copy_and_binds_copy_mode() {
    if skip_unless_root() {
        return;
    }
    let nodes = Nodes::new(1);
    let va = nodes.va.clone();
    let features = in_netns(&nodes.a.handle(), move || {
        let idx = nix::net::if_::if_nametoindex(va.as_str()).expect("ifindex");
        genl::xdp_features(idx)
    })
    .expect("entering A")
    .expect("netdev dev-get");
    if let Some(f) = features {
        assert_ne!(f & genl::XDP_ACT_BASIC, 0, "features {f:#x}");
        assert_eq!(f & genl::XDP_ACT_XSK_ZEROCOPY, 0, "features {f:#x}");
    }
    let mut cfg = XdpConfig::new(A_IP);
    cfg.mode = XdpMode::Native;
    cfg.vxlan_port = Some(4789);
    let up = nodes.open(&cfg).expect("AF_XDP on the veth");
    assert!(!up.is_zerocopy());
}

#[test]
fn skb_mode_steers_tunnels_and_leaves_node_traffic() {
    if skip_unless_root() {
        return;
    }
    steers_tunnels_and_leaves_node_traffic(XdpMode::Skb);
}

#[test]
fn native_mode_steers_tunnels_and_leaves_node_traffic() {
    if skip_unless_root() {
        return;
    }
    steers_tunnels_and_leaves_node_traffic(XdpMode::Native);
}

#[test]
fn native_prefixes_follow_updates() {
    if skip_unless_root() {
        return;
    }
    let nodes = Nodes::new(1);
    nodes.b.exec_ok(
        "ip",
        &["route", "add", "198.19.5.0/24", "via", "198.18.0.1"],
    );
    let mut cfg = XdpConfig::new(A_IP);
    cfg.native_prefixes = vec![(POD_NET, 24)];
    cfg.frames = 256;
    let mut up = nodes.open(&cfg).expect("opening the XDP uplink");
    assert_eq!(up.native_prefixes(), [(POD_NET, 24)]);
    let mut pool = Pool::new(256, DEFAULT_BUF_SIZE);
    let to_pod = |up: &mut XdpUplink, pool: &mut Pool, marker: &[u8], wait: Duration| {
        udp_from_b(&nodes, SocketAddr::from((POD_IP, 9999)), marker);
        pump(up, pool, wait, |f| {
            ipv4(f).is_some_and(|(_, _, d, _)| d == POD_IP) && contains(f, marker)
        })
        .0
    };

    assert!(
        to_pod(&mut up, &mut pool, b"pod-1", Duration::from_secs(3)).is_some(),
        "pod traffic never reached the uplink"
    );
    // Other destinations are not steered: B's ping to A is still the kernel's.
    ping_from_b(&nodes);

    up.update_native_prefixes(&[]).unwrap();
    assert!(up.native_prefixes().is_empty());
    assert!(
        to_pod(&mut up, &mut pool, b"pod-2", Duration::from_millis(500)).is_none(),
        "pod traffic steered with no prefixes"
    );

    up.update_native_prefixes(&[(Ipv4Addr::new(198, 19, 0, 0), 16)])
        .unwrap();
    assert!(to_pod(&mut up, &mut pool, b"pod-3", Duration::from_secs(3)).is_some());

    // A bad prefix is refused by name and changes nothing.
    let e = up
        .update_native_prefixes(&[(Ipv4Addr::new(198, 19, 5, 1), 24)])
        .unwrap_err();
    assert!(e.to_string().contains("198.19.5.1/24"), "{e}");
    assert_eq!(up.native_prefixes(), [(Ipv4Addr::new(198, 19, 0, 0), 16)]);
}

#[test]
fn stale_program_is_replaced_after_forget() {
    if skip_unless_root() {
        return;
    }
    // Two queues: a forgotten port keeps its socket bound to queue 0 (a process
    // that really dies closes it; see the crash test), so the next one takes 1.
    let nodes = Nodes::new(2);
    let mut cfg = XdpConfig::new(A_IP);
    cfg.mode = XdpMode::Skb;
    cfg.frames = 64;
    let first = nodes.open(&cfg).expect("first open");
    let old = first.program_id();
    std::mem::forget(first);
    assert_eq!(nodes.xdp_prog_ids(), [old]);

    cfg.queue = 1;
    let second = nodes.open(&cfg).expect("open over a stale program");
    assert_ne!(second.program_id(), old);
    assert_eq!(nodes.xdp_prog_ids(), [second.program_id()]);
    drop(second);
    assert_eq!(nodes.xdp_prog_ids(), [] as [u32; 0]);

    // detach_stale on a clean link removes nothing.
    let va = nodes.va.clone();
    let n = in_netns(&nodes.a.handle(), move || XdpUplink::detach_stale(&va))
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn stale_program_is_replaced_after_crash() {
    if skip_unless_root() {
        return;
    }
    let nodes = Nodes::new(1);
    // A child process (this test binary, running `crash_helper`) opens the uplink
    // and is killed with SIGKILL: no destructor runs.
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_NS, nodes.a.name())
        .env(HELPER_IF, &nodes.va)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the helper");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains(HELPER_READY) {
                let _ = tx.send(line);
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    let line = ready.expect("the helper never opened the uplink");
    let old: u32 = line
        .rsplit(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("program id from the helper");

    // The dead process's program is still attached, but with its socket gone it
    // passes everything to the kernel.
    assert_eq!(nodes.xdp_prog_ids(), [old]);
    ping_from_b(&nodes);

    let mut cfg = XdpConfig::new(A_IP);
    cfg.mode = XdpMode::Skb;
    cfg.frames = 64;
    let up = nodes
        .open(&cfg)
        .expect("open over a crashed process's program");
    assert_ne!(up.program_id(), old);
    assert_eq!(nodes.xdp_prog_ids(), [up.program_id()]);
    drop(up);
    assert_eq!(nodes.xdp_prog_ids(), [] as [u32; 0]);
}

/// Not a test of its own: the process that `stale_program_is_replaced_after_crash`
/// starts and kills. Without its environment it does nothing.
#[test]
#[ignore = "run by stale_program_is_replaced_after_crash"]
fn crash_helper() {
    let (Ok(ns), Ok(ifname)) = (std::env::var(HELPER_NS), std::env::var(HELPER_IF)) else {
        return;
    };
    let mut cfg = XdpConfig::new(A_IP);
    cfg.mode = XdpMode::Skb;
    cfg.frames = 64;
    let handle = sluice_dataplane::sys::netns::NetNs::named(&ns).unwrap();
    let up = in_netns(&handle, move || XdpUplink::open(&ifname, &cfg))
        .unwrap()
        .expect("helper open");
    println!("{HELPER_READY} {}", up.program_id());
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
    drop(up);
}

/// Ethernet/IPv4/UDP from A to B's VXLAN port carrying `vxlan` (a VXLAN
/// header and an inner frame).
fn vxlan_a_to_b(a_mac: [u8; 6], b_mac: [u8; 6], vxlan: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(a_mac, b_mac)
        .ipv4(A_IP.octets(), B_IP.octets(), 64)
        .udp(50000, 4789)
        .write(&mut f, vxlan)
        .expect("outer frame");
    f
}

/// A VXLAN packet from A to B whose inner frame is a TCP superframe of
/// `data` in segments of `mss`, marked as the pipeline hands one to the
/// uplink (inner checksum partial, as the sending pod's TAP gave it).
fn vxlan_tcp_superframe(
    pool: &mut Pool,
    a_mac: [u8; 6],
    b_mac: [u8; 6],
    data: &[u8],
    seq: u32,
    mss: u16,
) -> sluice_dataplane::buf::Packet {
    let mut tcp = etherparse::TcpHeader::new(40000, 5201, seq, 64240);
    tcp.ack = true;
    tcp.acknowledgment_number = 1;
    let mut inner = Vec::new();
    PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x11], [0x02, 0, 0, 0, 0, 0x22])
        .ipv4([198, 19, 1, 2], [198, 19, 2, 2], 64)
        .tcp_header(tcp)
        .write(&mut inner, data)
        .expect("inner superframe");
    let mut p = pool.alloc_large();
    assert!(p.load(&inner));
    gso::mark_superframe(&mut p, mss).expect("a valid superframe");
    let mut vx = vec![0x08, 0, 0, 0];
    vx.extend_from_slice(&(VNI << 8).to_be_bytes());
    vx.extend_from_slice(p.data());
    assert!(p.load(&vxlan_a_to_b(a_mac, b_mac, &vx)));
    // The inner IPv4 header: after Ethernet, IPv4, UDP, VXLAN and Ethernet.
    p.set_superframe(mss, 64);
    p
}

/// A batch of small VXLAN frames and TCP superframes in between leaves in
/// order, every segment valid: the superframes as UDP superframes through the
/// send-only packet socket (which the kernel cuts on the way to B's XDP
/// program), or, with that socket off, cut into the UMEM.
fn superframes_leave_in_order(socket: bool) {
    let nodes = Nodes::new(1);
    let mut cfg = XdpConfig::new(A_IP);
    cfg.superframe_socket = socket;
    let mut a = nodes.open(&cfg).expect("A's uplink");
    assert_eq!(a.superframe_socket(), Ok(socket));
    assert!(a.takes_superframes());
    let vb = nodes.vb.clone();
    let mut b = in_netns(&nodes.b.handle(), move || {
        XdpUplink::open(&vb, &XdpConfig::new(B_IP))
    })
    .expect("entering B")
    .expect("B's uplink");
    let a_mac = Nodes::mac(&nodes.a, &nodes.va);
    let b_mac = Nodes::mac(&nodes.b, &nodes.vb);
    let mut pool = Pool::new(512, DEFAULT_BUF_SIZE);
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let mss = 1398;
    let segments = data.len().div_ceil(mss);
    let markers: [&[u8]; 3] = [b"sluice-order-0", b"sluice-order-1", b"sluice-order-2"];
    let seqs = [0x1000_0000u32, 0x2000_0000];

    let mut batch = Batch::new();
    for (k, marker) in markers.iter().enumerate() {
        let mut p = pool.alloc().expect("buffer");
        assert!(p.load(&vxlan_a_to_b(a_mac, b_mac, &vxlan_payload(marker))));
        batch.push(p);
        if let Some(&seq) = seqs.get(k) {
            batch.push(vxlan_tcp_superframe(
                &mut pool, a_mac, b_mac, &data, seq, mss as u16,
            ));
        }
    }
    assert_eq!(a.tx_burst(&mut pool, &mut batch).expect("sending"), 5);
    let st = *a.stats();
    if socket {
        assert_eq!(
            (st.tx_whole, st.tx_whole_refused, st.tx_cut),
            (2, 0, 0),
            "{st:?}"
        );
        assert_eq!(st.tx_frames, 3, "{st:?}");
        assert!(a.offload_stats().tx_gro_superframes >= 2);
    } else {
        assert_eq!((st.tx_whole, st.tx_cut), (0, 2), "{st:?}");
        assert_eq!(st.tx_frames, (3 + 2 * segments) as u64, "{st:?}");
        assert_eq!(a.offload_stats().tx_gro_superframes, 0);
    }

    // B's program steers every datagram to its socket, in the order sent.
    let want = 3 + 2 * segments;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rx = Batch::new();
    while got.len() < want && Instant::now() < deadline {
        if b.rx_burst(&mut pool, &mut rx, 64).expect("rx_burst") == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        got.extend(rx.iter().map(|p| p.data().to_vec()));
        rx.clear_into(&mut pool);
    }
    assert_eq!(got.len(), want, "frames B received");
    let mut at = 0;
    for (k, marker) in markers.iter().enumerate() {
        assert!(contains(&got[at], marker), "frame {at} is not marker {k}");
        at += 1;
        let Some(&seq) = seqs.get(k) else { break };
        let mut joined = Vec::new();
        for i in 0..segments {
            let g = &got[at];
            assert_eq!(udp_dst_port(g), Some(4789), "frame {at}");
            let (got_seq, payload) = vxlan_inner_tcp(g, &format!("frame {at}"));
            assert_eq!(got_seq, seq + (i * mss) as u32, "frame {at}");
            joined.extend_from_slice(&payload);
            at += 1;
        }
        assert!(
            joined == data,
            "superframe {k}: data changed or out of order"
        );
    }
    drop(b);
    drop(a);
    assert_eq!(pool.available(), 512, "every buffer back in the pool");
}

#[test]
fn superframes_leave_whole_through_the_socket_in_order() {
    if skip_unless_root() {
        return;
    }
    superframes_leave_in_order(true);
}

#[test]
fn superframes_cut_into_the_umem_leave_in_order() {
    if skip_unless_root() {
        return;
    }
    superframes_leave_in_order(false);
}

/// Frames the kernel drops for want of a fill-ring frame (nobody reading)
/// are read from the socket's statistics into the port's kernel drops.
#[test]
fn a_full_rx_ring_is_counted_as_kernel_drops() {
    if skip_unless_root() {
        return;
    }
    let nodes = Nodes::new(1);
    let mut cfg = XdpConfig::new(A_IP);
    // 128 frames: 64 on the fill ring.
    cfg.frames = 128;
    let mut up = nodes.open(&cfg).expect("A's uplink");
    up.update_kernel_stats();
    assert_eq!(up.offload_stats().rx_kernel_drops, 0);
    let payload = vxlan_payload(b"sluice-flood");
    let dst: SocketAddr = (A_IP, 4789).into();
    let sent = in_netns(&nodes.b.handle(), || {
        let s = UdpSocket::bind((B_IP, 0)).expect("UDP socket in B");
        (0..1000)
            .filter(|_| {
                // Paced: the veth's own queue to the program holds 256.
                std::thread::sleep(Duration::from_micros(20));
                s.send_to(&payload, dst).is_ok()
            })
            .count() as u64
    })
    .expect("entering B");
    up.update_kernel_stats();
    let drops = up.offload_stats().rx_kernel_drops;
    let mut pool = Pool::new(256, DEFAULT_BUF_SIZE);
    let (_, seen) = pump(&mut up, &mut pool, Duration::from_millis(500), |_| false);
    let got = seen.len() as u64;
    assert!(
        got <= 64 && drops > 0 && got + drops <= sent,
        "{sent} sent, {got} received, {drops} dropped by the kernel"
    );
    assert_eq!(up.stats().rx_kernel_drops, drops);
}
