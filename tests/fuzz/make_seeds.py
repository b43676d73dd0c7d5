#!/usr/bin/env python3
"""Writes the committed seed corpora of the fuzz targets (tests/fuzz/seeds/TARGET/)
from the capture fixtures, the Kubernetes fixtures and a few hand-made inputs.
Run from the repository root; the output is deterministic."""

import json
import os
import struct
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEEDS = os.path.join(ROOT, "tests", "fuzz", "seeds")


def pcap_frames(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    at, frames = 24, []
    while at + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[at:at + 16])
        frames.append(data[at + 16:at + 16 + incl])
        at += 16 + incl
    return frames


def write(target, name, blob):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(blob if isinstance(blob, bytes) else blob.encode())


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f">{len(b) // 2}H", b))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def eth(dst, src, ethertype, payload):
    return dst + src + struct.pack(">H", ethertype) + payload


def ipv4(src, dst, proto, payload, ttl=64, df=False):
    h = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000 if df else 0, ttl, proto, 0, src, dst)
    return h[:10] + struct.pack(">H", csum(h)) + h[12:] + payload


def udp(sport, dport, payload):
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp_syn(sport, dport):
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x02, 65535, 0, 0)


def icmp_echo(seq):
    m = struct.pack(">BBHHH", 8, 0, 0, 1, seq) + b"ping"
    return m[:2] + struct.pack(">H", csum(m)) + m[4:]


def arp_req(mac, ip, target):
    return struct.pack(">HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\0" * 6 + target


def vxlan_hdr(vni):
    return struct.pack(">II", 0x08000000, vni << 8)


def main():
    fx = os.path.join(ROOT, "fixtures")
    pod = pcap_frames(os.path.join(fx, "vxlan-pod.pcap"))[:3]
    underlay = pcap_frames(os.path.join(fx, "vxlan-underlay.pcap"))[:3]
    inner = pcap_frames(os.path.join(fx, "vxlan-inner.pcap"))[:2]
    arp = bytes.fromhex("eeeeeeeeeeee0a58c613010a0806" "000108000604000102" "0a58c613010a" "c613010a" "000000000000" "a9fe0101")
    for i, f in enumerate(pod + underlay + inner + [arp]):
        write("wire_l2", f"frame-{i}", f)
    for i, f in enumerate(pod + underlay):
        if f[12:14] == b"\x08\x00":
            write("wire_l3", f"ipv4-{i}", f[14:])
    for i, f in enumerate(underlay):
        ip = f[14:]
        ihl = (ip[0] & 15) * 4
        write("wire_l4", f"vxlan-udp-{i}", ip[12:20] + ip[ihl:])
    for i, f in enumerate(pod):
        ip = f[14:]
        ihl = (ip[0] & 15) * 4
        write("wire_l4", f"pod-l4-{i}", ip[12:20] + ip[ihl:])
    # pipeline: mode byte, then [port][len][frame] records (port 0 = uplink, 1 = pod a1).
    def rec(port, frame):
        return bytes([port]) + struct.pack(">H", len(frame)) + frame
    for mode in range(3):
        blob = bytes([mode]) + b"".join(rec(1, f) for f in pod) + b"".join(rec(0, f) for f in underlay) + rec(1, arp)
        write("pipeline", f"mode-{mode}", blob)
    # Frames addressed as the test kit's node A sees them (dataplane/src/testkit.rs),
    # so that the fuzzer starts from packets that go all the way through.
    a1_mac, gw = bytes.fromhex("0200c613010a"), b"\xee" * 6
    node_a_mac, node_b_mac = bytes.fromhex("0200c6120001"), bytes.fromhex("0200c6120002")
    a1, a2, b1 = bytes([198, 19, 1, 10]), bytes([198, 19, 1, 11]), bytes([198, 19, 2, 10])
    node_a, node_b = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
    kit = [
        (1, eth(gw, a1_mac, 0x0800, ipv4(a1, b1, 17, udp(4000, 5201, b"to-b1")))),
        (1, eth(gw, a1_mac, 0x0800, ipv4(a1, a2, 6, tcp_syn(40000, 80)))),
        (1, eth(gw, a1_mac, 0x0800, ipv4(a1, b1, 1, icmp_echo(7)))),
        (1, eth(gw, a1_mac, 0x0800, ipv4(a1, b1, 17, udp(1, 2, b"x" * 1480), df=True))),
        (1, eth(gw, a1_mac, 0x0800, ipv4(a1, b1, 17, udp(1, 2, b"t"), ttl=1))),
        (1, eth(gw, a1_mac, 0x0806, arp_req(a1_mac, a1, bytes([169, 254, 1, 1])))),
        (1, eth(gw, a1_mac, 0x0800, ipv4(a1, bytes([198, 18, 0, 9]), 17, udp(1, 53, b"dns")))),
    ]
    inner = eth(gw, node_b_mac, 0x0800, ipv4(b1, a1, 17, udp(5201, 4000, b"from-b1")))
    kit += [
        (0, eth(node_a_mac, node_b_mac, 0x0800, ipv4(node_b, node_a, 17, udp(49152, 4789, vxlan_hdr(4096) + inner)))),
        (0, eth(node_a_mac, node_b_mac, 0x0800, ipv4(node_b, node_a, 4, ipv4(b1, a1, 17, udp(5201, 4000, b"ipip"))))),
        (0, eth(node_a_mac, node_b_mac, 0x0800, ipv4(node_b, a1, 17, udp(5201, 4000, b"native")))),
        (3, eth(gw, bytes.fromhex("0200000000fe"), 0x0800, ipv4(bytes([198, 18, 0, 9]), a1, 17, udp(53, 1, b"host")))),
    ]
    for mode in range(3):
        write("pipeline", f"testkit-{mode}", bytes([mode]) + b"".join(rec(port, f) for port, f in kit))
    # offload: segment size (2 bytes), selector, frame. A TCP superframe (checksum
    # partial) and the VXLAN UDP superframe a node sends its segments in.
    mss, data = 1398, bytes((i * 7 + 3) & 0xFF for i in range(5000))
    tcp_opts = bytes([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])

    def tcp_seg(seq, payload, flags):
        h = struct.pack(">HHIIBBHHH", 40000, 5201, seq, 1, 0x80, flags, 502, 0, 0) + tcp_opts
        pseudo = a1 + b1 + struct.pack(">BBH", 0, 6, len(h) + len(payload))
        c = csum(pseudo + h + payload)
        return h[:16] + struct.pack(">H", c) + h[18:] + payload

    sf = eth(gw, a1_mac, 0x0800, ipv4(a1, b1, 6, tcp_seg(1, data, 0x18), df=True))
    write("offload", "tcp-superframe", struct.pack(">HB", mss, 0) + sf)
    pieces = b""
    for k in range(0, len(data), mss):
        chunk = data[k:k + mss]
        seg = eth(node_b_mac, node_a_mac, 0x0800, ipv4(a1, b1, 6, tcp_seg(1 + k, chunk, 0x10 | (0x08 if k + mss >= len(data) else 0)), df=True))
        pieces += vxlan_hdr(4096) + seg
    piece = 8 + 14 + 20 + 32 + mss
    outer = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 0, 1, 0, 64, 17, 0, node_a, node_b)
    udp_sf = eth(node_b_mac, node_a_mac, 0x0800, outer + struct.pack(">HHHH", 50000, 4789, 0, 0) + pieces)
    write("offload", "vxlan-udp-superframe", struct.pack(">HB", piece, 0) + udp_sf)
    write("offload", "vxlan-udp-superframe-trusted", struct.pack(">HB", piece, 0x80) + udp_sf)
    # cni: environment lines, 0xff, stdin, 0xff, the daemon's answer.
    conf = {"cniVersion": "1.1.0", "name": "sluice", "type": "sluice", "socket": "/run/sluice/sluiced.sock"}
    env_add = "CNI_COMMAND=ADD\nCNI_CONTAINERID=c0ffee\nCNI_NETNS=/var/run/netns/p1\nCNI_IFNAME=eth0\nCNI_PATH=/opt/cni/bin\nCNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web\n"
    attached = {"ok": {"attached": {"ifname": "eth0", "mac": "0a:58:c6:13:01:05", "mtu": 1450,
                                    "sandbox": "/var/run/netns/p1", "ip": "198.19.1.5/32", "gateway": "169.254.1.1"}}}
    for i, (env, stdin, answer) in enumerate([
        (env_add, conf, attached),
        (env_add.replace("ADD", "DEL"), conf, {"ok": "done"}),
        ("CNI_COMMAND=VERSION\n", conf, {}),
        ("CNI_COMMAND=GC\nCNI_PATH=/opt/cni/bin\n", dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "c0ffee", "ifname": "eth0"}]}), {"ok": "done"}),
        (env_add.replace("1.1.0", "0.3.1"), dict(conf, cniVersion="0.3.1"), {"error": {"code": 11, "msg": "try again"}}),
    ]):
        write("cni", f"invocation-{i}", env.encode() + b"\xff" + json.dumps(stdin).encode() + b"\xff" + json.dumps(answer).encode())
    # api: request lines as sluicectl and the plugin send them.
    for i, req in enumerate([
        {"op": "status"},
        {"op": "cni_add", "container_id": "c1", "netns": "/var/run/netns/p1", "ifname": "eth0", "pod": {"namespace": "default", "name": "web"}, "mtu": 1450},
        {"op": "cni_del", "container_id": "c1", "ifname": "eth0", "pod": {}},
        {"op": "cni_gc", "valid_attachments": [{"container_id": "c1", "ifname": "eth0"}]},
        {"op": "monitor", "count": 10, "timeout_ms": 1000},
        {"op": "capture", "port": "default/web", "count": 5, "timeout_ms": 500},
    ]):
        write("api", f"request-{i}", json.dumps(req) + "\n")
    write("api", "two-lines", '{"op":"endpoints"}\n{"op":"stats"}\n')
    for name in sorted(os.listdir(os.path.join(fx, "k8s"))):
        if name.endswith((".yaml", ".json")):
            with open(os.path.join(fx, "k8s", name), "rb") as f:
                write("k8s", name, f.read())
    example = subprocess.run(["sed", "-n", "/^pub const EXAMPLE: &str = r#\"/,/^\"#;/p",
                              os.path.join(ROOT, "control", "src", "config.rs")],
                             capture_output=True, text=True, check=True).stdout
    example = example.split('r#"', 1)[1].rsplit('"#;', 1)[0]
    write("config", "example.toml", example)
    write("config", "minimal.toml", 'node_name = "n1"\nmode = "vxlan"\nuplink = "eth0"\npod_cidr = "198.19.1.0/24"\n')
    write("config", "peers.toml", 'node_name = "n1"\nmode = "ipip"\nuplink = "ul0"\npod_cidr = "198.19.1.0/24"\n'
          'cluster_cidr = "198.19.0.0/16"\n\n[[peers]]\nname = "n2"\nnode_ip = "198.18.0.2"\npod_cidr = "198.19.2.0/24"\n')


if __name__ == "__main__":
    main()
