//! Superframes end to end on two live nodes: a bulk TCP transfer between pods
//! on different nodes, in VXLAN and native mode over the socket uplink, must
//! arrive byte for byte while crossing as superframes: the sending pod's TSO
//! frames go through the pipeline whole and leave as one UDP (VXLAN: its
//! segments as pieces) or TCP (native) superframe, are cut back on the
//! receiving node (VXLAN) or taken whole (native), and reach the receiving
//! pod's TAP as GSO frames. The counters of each step must move. Over AF_XDP,
//! which has no segmentation offload, VXLAN superframes leave as UDP
//! superframes through a send-only packet socket beside it, and native and
//! IPIP ones (VXLAN too, with that socket turned off) are cut into segments
//! in the UMEM.
//!
//! Needs root (skips otherwise); everything runs in the test's namespaces.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::cluster::{two_peered_nodes_with, Node, Pod};
use common::skip_unless_root;
use sluice_dataplane::sys::netns::in_netns;

/// The byte at offset `i` of the stream: varies with position, so a segment
/// lost, repeated, reordered or joined at the wrong offset changes the data.
fn stream_byte(i: u64) -> u8 {
    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i >> 7);
    (x >> 29) as u8
}

/// Sends `bytes` from `from` to `to` and checks every byte on arrival.
/// Returns how many arrived and how many of those were wrong.
fn checked_transfer(from: &Pod, to: &Pod, bytes: u64) -> (u64, u64) {
    let listener = in_netns(&to.ns.handle(), || TcpListener::bind((to.ip, 0)))
        .expect("entering the server pod")
        .expect("listening in the server pod");
    let dst = listener.local_addr().expect("server address");
    let server = std::thread::spawn(move || -> std::io::Result<(u64, u64)> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut buf = vec![0u8; 256 * 1024];
        let (mut got, mut bad) = (0u64, 0u64);
        loop {
            match s.read(&mut buf)? {
                0 => return Ok((got, bad)),
                n => {
                    for (k, b) in buf[..n].iter().enumerate() {
                        bad += u64::from(*b != stream_byte(got + k as u64));
                    }
                    got += n as u64;
                }
            }
        }
    });
    let mut client = in_netns(&from.ns.handle(), || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(5))
    })
    .expect("entering the client pod")
    .expect("connecting pod to pod");
    client
        .set_write_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut sent = 0u64;
    let mut chunk = vec![0u8; 256 * 1024];
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len() as u64) as usize;
        for (k, b) in chunk[..n].iter_mut().enumerate() {
            *b = stream_byte(sent + k as u64);
        }
        client.write_all(&chunk[..n]).expect("sending pod to pod");
        sent += n as u64;
    }
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("closing the stream");
    server
        .join()
        .expect("server thread")
        .expect("receiving pod to pod")
}

/// A counter of the port whose id is `port` (or starts with it) in
/// `sluicectl --json stats`.
fn port_counter(node: &Node, port: &str, counter: &str) -> u64 {
    let v = node.ctl_json("stats");
    v["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter(|p| p["port"].as_str().is_some_and(|id| id.starts_with(port)))
        .map(|p| p[counter].as_u64().unwrap_or(0))
        .sum()
}

fn superframes_cross(tag: &str, mode: &str) {
    superframes_cross_on(tag, mode, "socket", "");
}

fn superframes_cross_on(tag: &str, mode: &str, backend: &str, extra: &str) {
    let (_u, a, b) = two_peered_nodes_with(tag, mode, backend, extra);
    // Whether the sending uplink sends superframes (or pieces of them) whole.
    let whole = backend == "socket"
        || (mode == "vxlan" && !extra.contains("xdp_superframe_socket = false"));
    if backend == "af_xdp" {
        let reason = a.ctl_json("status")["backend_reason"].to_string();
        let says = if whole {
            "superframes sent whole through a packet socket"
        } else {
            "superframes cut into frames"
        };
        assert!(reason.contains(says), "{mode}: backend_reason {reason}");
    }
    let pa = a.add_pod("sender");
    let pb = b.add_pod("receiver");
    assert!(
        pa.ping_until(pb.ip, Duration::from_secs(10)),
        "{mode}: pods cannot reach each other"
    );

    let bytes = 48 << 20;
    let (got, bad) = checked_transfer(&pa, &pb, bytes);
    assert_eq!(got, bytes, "{mode}: bytes received");
    assert_eq!(bad, 0, "{mode}: bytes received wrong");

    // Sending node: superframes from the pod (TSO), joined again on the uplink.
    let from_pod = port_counter(&a, "pod", "rx_gso");
    let joined_out = port_counter(&a, "uplink", "tx_gro");
    // Receiving node: superframes received (on the uplink; in native mode,
    // where sluiced could not make its nftables table, the kernel forwards
    // them to the host port instead), then passed to the pod whole or joined
    // for it.
    let off_uplink = mode == "vxlan"
        || b.ctl_json("status")["backend_reason"]
            .as_str()
            .is_some_and(|r| r.contains("taken off the uplink"));
    let cut_in = if backend == "socket" {
        port_counter(&b, if off_uplink { "uplink" } else { "host" }, "rx_gso")
    } else {
        1
    };
    let to_pod = port_counter(&b, "pod", "tx_gro");
    let to_pod_segments = port_counter(&b, "pod", "tx_gro_segments");
    assert!(from_pod > 0, "{mode}: no superframe from the sending pod");
    if whole {
        assert!(joined_out > 0, "{mode}: no superframe sent on the uplink");
    } else {
        // Cut into frames: the uplink sent at least as many as the pod's
        // superframes held segments.
        let segments = port_counter(&a, "pod", "rx_gso_segments");
        let sent = a.ns.link_counter("ul0", "tx_packets");
        assert!(
            joined_out == 0 && sent >= segments,
            "{mode} {backend}: {sent} frames sent for {segments} segments, {joined_out} superframes"
        );
    }
    assert!(cut_in > 0, "{mode}: no superframe received on node 2");
    if backend == "socket" && mode == "vxlan" {
        // Most UDP superframes are the pieces of one TCP superframe: they
        // reach the pipeline as one packet again, not cut.
        let cut = port_counter(&b, "uplink", "rx_gso_cut");
        assert!(
            2 * cut < cut_in,
            "{mode}: {cut} of {cut_in} superframes received were cut"
        );
    }
    assert!(
        to_pod > 0 && to_pod_segments >= 2 * to_pod,
        "{mode}: superframes to the receiving pod: {to_pod} of {to_pod_segments} segments"
    );
    // Nothing dropped on the way in either direction.
    for (n, node) in [("node 1", &a), ("node 2", &b)] {
        for port in ["uplink", "host", "pod"] {
            assert_eq!(
                port_counter(node, port, "rx_dropped"),
                0,
                "{mode}: {n} {port}"
            );
            assert_eq!(
                port_counter(node, port, "tx_errors"),
                0,
                "{mode}: {n} {port}"
            );
        }
    }
}

#[test]
fn superframes_cross_vxlan_intact() {
    if skip_unless_root() {
        return;
    }
    superframes_cross("ofv", "vxlan");
}

#[test]
fn superframes_cross_native_intact() {
    if skip_unless_root() {
        return;
    }
    superframes_cross("ofn", "native");
}

#[test]
fn superframes_cross_vxlan_af_xdp_intact() {
    if skip_unless_root() {
        return;
    }
    superframes_cross_on("ofx", "vxlan", "af_xdp", "");
}

#[test]
fn superframes_cut_into_the_umem_cross_native_af_xdp_intact() {
    if skip_unless_root() {
        return;
    }
    superframes_cross_on("ofxn", "native", "af_xdp", "");
}

#[test]
fn superframes_cut_into_the_umem_cross_ipip_af_xdp_intact() {
    if skip_unless_root() {
        return;
    }
    superframes_cross_on("ofxi", "ipip", "af_xdp", "");
}

#[test]
fn superframes_cut_into_the_umem_cross_vxlan_af_xdp_intact() {
    if skip_unless_root() {
        return;
    }
    superframes_cross_on("ofxc", "vxlan", "af_xdp", "xdp_superframe_socket = false\n");
}
