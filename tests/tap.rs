//! The TAP port against a real kernel: a pod namespace whose `eth0` is a Sluice
//! TAP, wired the Calico way (pod address /32, 169.254.1.1 scope link, default
//! route via it). The test plays the node: it answers the pod's ARP for the
//! gateway and its pings, through `rx_burst` and `tx_burst`.
//!
//! Needs root (skips otherwise). Everything happens in namespaces the tests
//! create: the TAP is made in a "node" namespace and moved into the pod's.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{skip_unless_root, unique, unique_ifname, Netns};
use etherparse::{Icmpv4Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use sluice_dataplane::buf::{Batch, Pool, DEFAULT_BUF_SIZE};
use sluice_dataplane::port::tap::{Offloads, Tap, TapError, TapOptions};
use sluice_dataplane::port::Port;
use sluice_dataplane::sys::link::{Netlink, POD_GATEWAY};
use sluice_dataplane::sys::netns::in_netns;

const POD_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 7, 2);
/// The MAC the node answers for the gateway with (Calico uses the same).
const GW_MAC: [u8; 6] = [0xee; 6];

/// A node namespace, a pod namespace and the pod's TAP: made in the node
/// namespace, moved into the pod's as `eth0` and configured there.
struct Pod {
    // Field order is drop order: the TAP closes before the namespaces go.
    tap: Option<Tap>,
    pod: Netns,
    node: Netns,
    tap_name: String,
}

impl Pod {
    fn new(opts: &TapOptions) -> Pod {
        Pod::with_ip(opts, POD_IP)
    }

    fn with_ip(opts: &TapOptions, ip: Ipv4Addr) -> Pod {
        let node = Netns::new(&unique("sluice-node-"));
        let pod = Netns::new(&unique("sluice-pod-"));
        let tap_name = unique_ifname("sltap");
        let node_ns = node.handle();
        let tap = in_netns(&node_ns, || Tap::create(&tap_name, opts))
            .expect("entering the node namespace")
            .expect("creating the TAP");
        let mut pod = Pod {
            tap: Some(tap),
            pod,
            node,
            tap_name,
        };

        let mut nl = Netlink::open_in(&node_ns).expect("netlink in the node namespace");
        let idx = nl
            .ifindex(&pod.tap_name)
            .expect("TAP in the node namespace");
        nl.move_to_netns(idx, &pod.pod.handle(), Some("eth0"))
            .expect("moving the TAP");
        let mut pl = Netlink::open_in(&pod.pod.handle()).expect("netlink in the pod namespace");
        let idx = pl.ifindex("eth0").expect("eth0 in the pod");
        pl.configure_pod_link(idx, ip).expect("configuring eth0");
        // Again: every step may be repeated (a retried CNI ADD).
        pl.configure_pod_link(idx, ip)
            .expect("configuring eth0 twice");
        assert_eq!(pod.tap().ifindex().unwrap(), idx);
        pod
    }

    fn tap(&mut self) -> &mut Tap {
        self.tap.as_mut().expect("TAP open")
    }

    /// Attaches `eth0` by name from inside the pod's namespace, as a
    /// restarted Sluice does.
    fn attach_again(&self, opts: &TapOptions) -> Result<Tap, TapError> {
        in_netns(&self.pod.handle(), || Tap::attach("eth0", opts)).expect("entering the pod")
    }
}

/// Reads frames from the TAP until `want` accepts one or `timeout` passes,
/// answering ARP requests for the gateway on the way. Returns the accepted frame.
fn pump(
    tap: &mut Tap,
    pool: &mut Pool,
    timeout: Duration,
    mut want: impl FnMut(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut rx = Batch::new();
    while Instant::now() < deadline {
        let n = tap.rx_burst(pool, &mut rx, 32).expect("rx_burst");
        if n == 0 {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let mut found = None;
        let frames: Vec<Vec<u8>> = rx.iter().map(|p| p.data().to_vec()).collect();
        rx.clear_into(pool);
        for f in frames {
            if let Some(reply) = arp_reply_for_gateway(&f) {
                send(tap, pool, &reply);
            } else if found.is_none() && want(&f) {
                found = Some(f);
            }
        }
        if found.is_some() {
            return found;
        }
    }
    None
}

fn send(tap: &mut Tap, pool: &mut Pool, frame: &[u8]) {
    let mut tx = Batch::new();
    let mut p = pool.alloc().expect("a free buffer");
    assert!(p.load(frame));
    tx.push(p);
    assert_eq!(tap.tx_burst(pool, &mut tx).expect("tx_burst"), 1);
    assert!(tx.is_empty());
}

/// The reply to an ARP request for the gateway, built by hand; `None` for any
/// other frame.
fn arp_reply_for_gateway(f: &[u8]) -> Option<Vec<u8>> {
    // Ethernet (14) + ARP for IPv4 over Ethernet (28).
    if f.len() < 42 || f[12..14] != [0x08, 0x06] {
        return None;
    }
    let arp = &f[14..42];
    let is_request = arp[0..8] == [0, 1, 0x08, 0x00, 6, 4, 0, 1];
    if !is_request || arp[24..28] != POD_GATEWAY.octets() {
        return None;
    }
    let (sha, spa) = (&arp[8..14], &arp[14..18]);
    let mut r = Vec::with_capacity(42);
    r.extend_from_slice(sha); // to the asker
    r.extend_from_slice(&GW_MAC);
    r.extend_from_slice(&[0x08, 0x06]);
    r.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]); // reply
    r.extend_from_slice(&GW_MAC);
    r.extend_from_slice(&POD_GATEWAY.octets());
    r.extend_from_slice(sha);
    r.extend_from_slice(spa);
    Some(r)
}

fn is_arp_request_for_gateway(f: &[u8], from_mac: [u8; 6]) -> bool {
    f.len() >= 42
        && f[12..14] == [0x08, 0x06]
        && f[20..22] == [0, 1]
        && f[22..28] == from_mac
        && f[28..32] == POD_IP.octets()
        && f[38..42] == POD_GATEWAY.octets()
}

/// Ones'-complement sum over `b`, folded: 0xffff when a checksum inside verifies.
fn ones_sum(chunks: &[&[u8]]) -> u16 {
    let mut s: u64 = 0;
    for b in chunks {
        let mut words = b.chunks_exact(2);
        for w in &mut words {
            s += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            s += u64::from(*last) << 8;
        }
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Checks an echo request from the pod to the gateway and returns the reply to it.
fn echo_reply_to(f: &[u8], pod_mac: [u8; 6]) -> Vec<u8> {
    let pkt = SlicedPacket::from_ethernet(f).expect("an Ethernet frame");
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &pkt.link else {
        panic!("not Ethernet II")
    };
    assert_eq!(eth.destination(), GW_MAC, "sent to the gateway's MAC");
    assert_eq!(eth.source(), pod_mac, "from the pod's eth0");
    let Some(NetSlice::Ipv4(ip)) = &pkt.net else {
        panic!("not IPv4")
    };
    let h = ip.header();
    assert_eq!(h.source_addr(), POD_IP);
    assert_eq!(h.destination_addr(), POD_GATEWAY);
    assert_eq!(ones_sum(&[h.slice()]), 0xffff, "IPv4 header checksum");
    let Some(TransportSlice::Icmpv4(icmp)) = &pkt.transport else {
        panic!("not ICMP")
    };
    let Icmpv4Type::EchoRequest(echo) = icmp.icmp_type() else {
        panic!("not an echo request")
    };
    assert_eq!(ones_sum(&[icmp.slice()]), 0xffff, "ICMP checksum");

    let mut reply = Vec::new();
    PacketBuilder::ethernet2(GW_MAC, pod_mac)
        .ipv4(POD_GATEWAY.octets(), POD_IP.octets(), 64)
        .icmpv4_echo_reply(echo.id, echo.seq)
        .write(&mut reply, icmp.payload())
        .unwrap();
    reply
}

fn is_echo_request(f: &[u8]) -> bool {
    matches!(
        SlicedPacket::from_ethernet(f).ok().and_then(|p| p.transport),
        Some(TransportSlice::Icmpv4(i)) if matches!(i.icmp_type(), Icmpv4Type::EchoRequest(_))
    )
}

/// A buffer pool and a pod whose TAP has carried a ping to the gateway (its
/// link up, with its carrier and qdisc).
fn pinged_pod(opts: &TapOptions) -> (Pool, Pod) {
    let mut pool = Pool::new(256, DEFAULT_BUF_SIZE);
    let mut pod = Pod::new(opts);
    ping_gateway(&mut pod, &mut pool);
    (pool, pod)
}

/// The pod pings the gateway once; the test answers its ARP (if it asks) and the
/// echo, and checks that ping saw the reply.
fn ping_gateway(pod: &mut Pod, pool: &mut Pool) {
    let pod_mac = pod.tap().mac().unwrap();
    let mut ping = pod
        .pod
        .spawn("ping", &["-c", "1", "-W", "3", "169.254.1.1"]);
    let req = pump(pod.tap(), pool, Duration::from_secs(5), is_echo_request)
        .expect("an echo request from the pod");
    send(pod.tap(), pool, &echo_reply_to(&req, pod_mac));
    let out = ping
        .wait_timeout(Duration::from_secs(5))
        .expect("ping to finish");
    assert!(
        out.status.success(),
        "ping failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pod_pings_its_gateway_through_the_tap() {
    if skip_unless_root() {
        return;
    }
    let mut pool = Pool::new(256, DEFAULT_BUF_SIZE);
    let mut pod = Pod::new(&TapOptions::new());
    assert!(pod.tap().has_vnet_hdr());
    assert!(
        pod.tap().offloads().csum,
        "checksum offload accepted: {:?}",
        pod.tap().offloads()
    );
    assert_eq!(pod.tap().ifname().unwrap(), "eth0");
    assert_eq!(
        pod.tap().netns().unwrap().id().unwrap(),
        pod.pod.handle().id().unwrap()
    );

    let addrs = pod
        .pod
        .exec_ok("ip", &["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains("198.19.7.2/32"), "{addrs}");
    let routes = pod.pod.exec_ok("ip", &["-4", "route", "show"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("onlink"), "{routes}");
    assert!(routes.contains("169.254.1.1 dev eth0"), "{routes}");
    assert!(routes.contains("scope link"), "{routes}");

    // The pod's first frame is its ARP request for the gateway, from its eth0 MAC.
    let pod_mac = pod.tap().mac().unwrap();
    let mut ping = pod
        .pod
        .spawn("ping", &["-c", "1", "-W", "3", "169.254.1.1"]);
    let mut rx = Batch::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let arp = loop {
        assert!(Instant::now() < deadline, "no ARP request from the pod");
        if pod.tap().rx_burst(&mut pool, &mut rx, 8).unwrap() > 0 {
            let f = rx
                .iter()
                .map(|p| p.data().to_vec())
                .find(|f| f[12..14] == [0x08, 0x06]);
            rx.clear_into(&mut pool);
            if let Some(f) = f {
                break f;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(is_arp_request_for_gateway(&arp, pod_mac), "{arp:02x?}");
    let reply = arp_reply_for_gateway(&arp).unwrap();
    send(pod.tap(), &mut pool, &reply);

    let req = pump(
        pod.tap(),
        &mut pool,
        Duration::from_secs(5),
        is_echo_request,
    )
    .expect("an echo request after the ARP reply");
    send(pod.tap(), &mut pool, &echo_reply_to(&req, pod_mac));
    let out = ping
        .wait_timeout(Duration::from_secs(5))
        .expect("ping to finish");
    assert!(
        out.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let neigh = pod.pod.exec_ok("ip", &["neigh", "show", "169.254.1.1"]);
    assert!(neigh.contains("ee:ee:ee:ee:ee:ee"), "{neigh}");

    let s = *pod.tap().stats();
    assert!(s.rx_frames >= 2 && s.tx_frames == 2, "{s:?}");
    assert_eq!(
        s.rx_oversize + s.rx_bad_vnet + s.tx_refused + s.tx_errors,
        0,
        "{s:?}"
    );
}

/// What the pod queues past the TAP's queue while the port does not read is
/// dropped by the pod's kernel, and the port counts it as `rx_kernel_drops`:
/// the device's `tx_dropped`, read from the namespace the TAP is in now (it
/// was opened in the node's and moved), counted once, and only what was
/// dropped since the port was opened.
#[test]
fn frames_dropped_in_front_of_the_tap_are_counted() {
    if skip_unless_root() {
        return;
    }
    let opts = TapOptions::new();
    let (mut pool, mut pod) = pinged_pod(&opts);
    pod.tap().update_kernel_stats();
    assert_eq!(pod.tap().offload_stats().rx_kernel_drops, 0);

    pod.pod
        .exec_ok("ip", &["link", "set", "eth0", "txqueuelen", "16"]);
    let flood = "for i in $(seq 300); do echo x > /dev/udp/198.19.8.1/9; done";
    pod.pod.exec_ok("bash", &["-c", flood]);
    let dropped = pod.pod.link_counter("eth0", "tx_dropped");
    assert!(dropped >= 250, "the pod's kernel dropped {dropped} of 300");
    pod.tap().update_kernel_stats();
    assert_eq!(pod.tap().offload_stats().rx_kernel_drops, dropped);
    assert_eq!(pod.tap().stats().rx_kernel_drops, dropped);

    // Reading what was queued drops nothing more, and a second read of the
    // counters adds nothing.
    let mut rx = Batch::new();
    while pod.tap().rx_burst(&mut pool, &mut rx, 32).unwrap() > 0 {
        rx.clear_into(&mut pool);
    }
    pod.tap().update_kernel_stats();
    assert_eq!(pod.tap().offload_stats().rx_kernel_drops, dropped);

    // Sluice restarts: the new port counts from when it opened.
    drop(pod.tap.take());
    pod.tap = Some(pod.attach_again(&opts).expect("attach"));
    // What the pod's kernel dropped while no fd was attached is not the new
    // port's either.
    let at_attach = pod.pod.link_counter("eth0", "tx_dropped");
    // The link has its carrier back (and its qdisc) once a ping goes through.
    ping_gateway(&mut pod, &mut pool);
    pod.tap().update_kernel_stats();
    assert_eq!(pod.tap().offload_stats().rx_kernel_drops, 0);
    pod.pod.exec_ok("bash", &["-c", flood]);
    let more = pod.pod.link_counter("eth0", "tx_dropped") - at_attach;
    assert!(more >= 250, "the pod's kernel dropped {more} of 300 more");
    pod.tap().update_kernel_stats();
    assert_eq!(pod.tap().offload_stats().rx_kernel_drops, more);
}

#[test]
fn persistent_tap_survives_its_fd_and_is_attached_again() {
    if skip_unless_root() {
        return;
    }
    let opts = TapOptions::new();
    let (mut pool, mut pod) = pinged_pod(&opts);

    // Sluice goes away: the fd closes, the device stays.
    drop(pod.tap.take());
    let link = pod.pod.exec_ok("ip", &["-o", "link", "show", "eth0"]);
    assert!(link.contains("eth0"), "{link}");

    // Not in the node namespace any more, and attach must not create it there.
    let node_ns = pod.node.handle();
    let r = in_netns(&node_ns, || Tap::attach("eth0", &opts)).unwrap();
    assert!(matches!(r, Err(TapError::NotFound { .. })), "{r:?}");
    let still = pod.node.exec("ip", &["link", "show", "eth0"]);
    assert!(!still.status.success(), "attach created a device");

    // Sluice comes back: attach by name from inside the pod's namespace.
    let tap = pod.attach_again(&opts).expect("attach");
    assert!(tap.is_persistent());
    assert!(tap.offloads().csum);
    pod.tap = Some(tap);
    // A second holder is refused while the first has it.
    let busy = pod.attach_again(&opts);
    assert!(busy.is_err(), "second attach: {busy:?}");

    // The neighbour entry may still be valid, so ARP is optional this time.
    ping_gateway(&mut pod, &mut pool);
}

#[test]
fn delete_removes_the_device() {
    if skip_unless_root() {
        return;
    }
    let node = Netns::new(&unique("sluice-node-"));
    let ns = node.handle();
    let name = unique_ifname("sltap");
    let tap = in_netns(&ns, || Tap::create(&name, &TapOptions::new()))
        .unwrap()
        .unwrap();
    assert!(tap.is_persistent());
    node.exec_ok("ip", &["link", "show", &name]);
    // The name is taken: create refuses rather than attaching.
    let again = in_netns(&ns, || Tap::create(&name, &TapOptions::new())).unwrap();
    assert!(again.is_err(), "{again:?}");
    tap.delete().unwrap();
    let gone = node.exec("ip", &["link", "show", &name]);
    assert!(
        !gone.status.success(),
        "TAP {name} still there after delete"
    );

    // A TAP that is not persistent goes with its fd.
    let opts = TapOptions::new().persist(false).vnet_hdr(false);
    let tap = in_netns(&ns, || Tap::create(&name, &opts))
        .unwrap()
        .unwrap();
    assert!(!tap.is_persistent());
    assert_eq!(tap.offloads(), Offloads::NONE);
    node.exec_ok("ip", &["link", "show", &name]);
    drop(tap);
    let gone = node.exec("ip", &["link", "show", &name]);
    assert!(
        !gone.status.success(),
        "non-persistent TAP {name} outlived its fd"
    );
}

#[test]
fn partial_checksums_are_completed_and_oversize_frames_dropped() {
    if skip_unless_root() {
        return;
    }
    let (mut pool, mut pod) = pinged_pod(&TapOptions::new());

    // UDP from the pod leaves with a partial checksum (TUN_F_CSUM); the port
    // completes it.
    pod.pod.exec_ok(
        "bash",
        &["-c", "echo sluice-udp-payload > /dev/udp/169.254.1.1/9999"],
    );
    let f = pump(pod.tap(), &mut pool, Duration::from_secs(5), |f| {
        matches!(
            SlicedPacket::from_ethernet(f).ok().and_then(|p| p.transport),
            Some(TransportSlice::Udp(u)) if u.destination_port() == 9999
        )
    })
    .expect("the UDP datagram");
    let pkt = SlicedPacket::from_ethernet(&f).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &pkt.net else {
        panic!("not IPv4")
    };
    let Some(TransportSlice::Udp(udp)) = &pkt.transport else {
        panic!("not UDP")
    };
    assert_ne!(udp.checksum(), 0, "UDP checksum left out");
    let udp_bytes = udp.slice();
    let len = (udp_bytes.len() as u16).to_be_bytes();
    let pseudo = [
        ip.header().source().as_slice(),
        &ip.header().destination(),
        &[0, 17],
        &len,
    ]
    .concat();
    assert_eq!(
        ones_sum(&[&pseudo, udp_bytes]),
        0xffff,
        "UDP checksum does not verify"
    );
    assert!(
        pod.tap().stats().rx_csum_completed >= 1,
        "{:?}",
        pod.tap().stats()
    );

    // A frame longer than a pool buffer is consumed and counted, not delivered.
    let mut nl = Netlink::open_in(&pod.pod.handle()).unwrap();
    let idx = nl.ifindex("eth0").unwrap();
    nl.set_mtu(idx, 9000).unwrap();
    let before = pod.tap().stats().rx_oversize;
    let _big = pod
        .pod
        .spawn("ping", &["-c", "1", "-W", "1", "-s", "4000", "169.254.1.1"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pod.tap().stats().rx_oversize == before {
        assert!(
            Instant::now() < deadline,
            "oversize frame not seen: {:?}",
            pod.tap().stats()
        );
        let _ = pump(pod.tap(), &mut pool, Duration::from_millis(50), |_| false);
    }
    // The port still works afterwards.
    ping_gateway(&mut pod, &mut pool);
}

/// Moves what `from` received to `to` the way the node would route it between
/// two pods (MACs rewritten, ARP for the gateway answered), checking on the way
/// that every IPv4/TCP frame is valid (superframes apart: their checksum is
/// partial until they are cut). Returns how many frames moved.
fn route_between(
    from: &mut Tap,
    to: &mut Tap,
    to_mac: [u8; 6],
    pool: &mut Pool,
    invalid: &mut Vec<String>,
    superframes: &mut usize,
) -> usize {
    let mut rx = Batch::new();
    let n = from.rx_burst(pool, &mut rx, 64).expect("rx_burst");
    let mut tx = Batch::new();
    let mut replies = Vec::new();
    for mut p in rx.drain() {
        if let Some(reply) = arp_reply_for_gateway(p.data()) {
            replies.push(reply);
            pool.free(p);
            continue;
        }
        if p.meta.is_superframe() {
            *superframes += 1;
        } else if let Ok(SlicedPacket {
            net: Some(NetSlice::Ipv4(ip)),
            transport: Some(TransportSlice::Tcp(tcp)),
            ..
        }) = SlicedPacket::from_ethernet(p.data())
        {
            let h = ip.header();
            // 0x0000 and 0xffff are the same checksum: verify by summing.
            let seg = ip.payload().payload;
            let len = (seg.len() as u16).to_be_bytes();
            let pseudo = [&h.source()[..], &h.destination(), &[0, 6], &len].concat();
            if ones_sum(&[h.slice()]) != 0xffff
                || ones_sum(&[&pseudo, seg]) != 0xffff
                || p.len() > 1514
            {
                invalid.push(format!("{} bytes, {:?}", p.len(), tcp.to_header()));
            }
        }
        let f = p.data_mut();
        f[0..6].copy_from_slice(&to_mac);
        f[6..12].copy_from_slice(&GW_MAC);
        tx.push(p);
    }
    if !tx.is_empty() {
        to.tx_burst(pool, &mut tx).expect("tx_burst");
    }
    for r in replies {
        send(from, pool, &r);
    }
    n
}

/// A pod with TSO sends a TCP stream to a pod without offloads, the test routing
/// between them: the sender's kernel hands over superframes, which the port
/// passes on whole; the receiving port, without a virtio-net header to write
/// them with, cuts them into MSS-sized frames, and the receiver's kernel (which
/// checks every checksum itself) gets every byte.
#[test]
fn tso_superframes_are_cut_into_valid_frames_for_a_pod_without_offloads() {
    if skip_unless_root() {
        return;
    }
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 8, 3);
    let mut pool = Pool::new(1024, DEFAULT_BUF_SIZE);
    let mut a = Pod::new(&TapOptions::new().offloads(Offloads::TSO4));
    assert!(a.tap().offloads().tso4, "{:?}", a.tap().offloads());
    let mut b = Pod::with_ip(
        &TapOptions::new().vnet_hdr(false).offloads(Offloads::NONE),
        PEER_IP,
    );
    let (a_mac, b_mac) = (a.tap().mac().unwrap(), b.tap().mac().unwrap());

    let server = r#"
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 20)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest())
"#;
    let client = r#"
import hashlib, socket, sys, time
data = bytes((i * 7 + i // 4099) & 0xff for i in range(8 << 20))
deadline = time.time() + 30
while True:
    try:
        c = socket.create_connection((sys.argv[1], 5201), timeout=5); break
    except OSError:
        if time.time() > deadline: raise
        time.sleep(0.2)
c.settimeout(60); c.sendall(data); c.close()
print(len(data), hashlib.sha256(data).hexdigest())
"#;
    let peer = PEER_IP.to_string();
    let mut srv = b.pod.spawn("python3", &["-c", server, &peer]);
    let mut cli = a.pod.spawn("python3", &["-c", client, &peer]);
    let mut invalid = Vec::new();
    let mut superframes = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let out = loop {
        assert!(
            Instant::now() < deadline,
            "stream did not finish: {:?} {:?}",
            a.tap().stats(),
            b.tap().stats()
        );
        let mut moved = route_between(
            a.tap(),
            b.tap.as_mut().unwrap(),
            b_mac,
            &mut pool,
            &mut invalid,
            &mut superframes,
        );
        moved += route_between(
            b.tap(),
            a.tap.as_mut().unwrap(),
            a_mac,
            &mut pool,
            &mut invalid,
            &mut superframes,
        );
        if let Some(out) = srv.wait_timeout(Duration::ZERO) {
            break out;
        }
        if moved == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    let sent = cli
        .wait_timeout(Duration::from_secs(30))
        .expect("client to finish");
    let (got, sent) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&sent.stdout).into_owned(),
    );
    assert!(
        got.ends_with(&sent) && sent.starts_with("8388608 "),
        "server {got:?} client {sent:?}"
    );
    assert!(invalid.is_empty(), "invalid frames: {invalid:?}");
    let s = *a.tap().stats();
    eprintln!("sender's TAP: {s:?}");
    assert!(s.rx_gso > 0 && s.rx_gso_segments > s.rx_gso, "{s:?}");
    assert_eq!(
        superframes as u64, s.rx_gso,
        "superframes handed over whole"
    );
    assert_eq!(
        s.rx_gso_bad + s.rx_gso_unsupported + s.rx_oversize,
        0,
        "{s:?}"
    );
    let r = *b.tap().stats();
    eprintln!("receiver's TAP: {r:?}");
    assert_eq!(
        r.tx_gso_cut, s.rx_gso,
        "every superframe cut for the receiver"
    );
    assert_eq!(r.tx_errors + r.tx_refused, 0, "{r:?}");
}
