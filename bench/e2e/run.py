#!/usr/bin/env python3
"""Sluice end-to-end benchmark driver: pod to pod across two nodes, Sluice and
the Linux kernel datapath side by side on one machine. Started by
scripts/bench-e2e (which builds the binaries); see bench/e2e/README.md.

Every variant builds the same topology inside network namespaces named
slbe-RUNID-*: two node namespaces on a bridged underlay (198.18.0.0/24, the
bridge in a namespace of its own), one pod per node (198.19.0.0/16), and
measures from the pod on node 1 (client) to the pod on node 2 (server).
Nothing is created in the root namespace; all of it is removed when a variant
ends, on error and on Ctrl-C.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

IPERF_PORT = 5201
RR_PORT = 11111
UDPGEN_PORT = 5300
VNI = 4096
VXLAN_PORT = 4789
VXLAN_MTU = 1450

# name, kind, mode, backend, kernel row it is compared with
ALL_VARIANTS = [
    ("veth", "ceiling", None, None, None),
    ("kernel-native", "kernel", "native", None, None),
    ("kernel-vxlan", "kernel", "vxlan", None, None),
    ("sluice-native-socket", "sluice", "native", "socket", "kernel-native"),
    ("sluice-native-af_xdp", "sluice", "native", "af_xdp", "kernel-native"),
    ("sluice-vxlan-socket", "sluice", "vxlan", "socket", "kernel-vxlan"),
    ("sluice-vxlan-af_xdp", "sluice", "vxlan", "af_xdp", "kernel-vxlan"),
    # No IPIP device is built into this kernel: IPIP is compared with VXLAN.
    ("sluice-ipip-socket", "sluice", "ipip", "socket", "kernel-vxlan"),
    ("sluice-ipip-af_xdp", "sluice", "ipip", "af_xdp", "kernel-vxlan"),
]
QUICK_VARIANTS = ["veth", "kernel-vxlan", "sluice-vxlan-socket"]

# Measurement steps of one repetition, in order (--metrics picks some).
STEPS = ["tcp1", "tcp4", "udp64", "udpgen", "rr"]

# metric key, table heading, unit, higher is better, decimals
METRICS = [
    ("tcp1_gbps", "TCP 1 stream", "Gbit/s", True, 2),
    ("tcp4_gbps", "TCP 4 streams", "Gbit/s", True, 2),
    ("udp64_kpps", "UDP 64 B", "kpps", True, 0),
    ("udpgen_kpps", "UDP 64 B sendmmsg", "kpps", True, 0),
    ("rr_p50_us", "TCP RR p50", "µs", False, 1),
    ("cpu_s_per_gb", "CPU", "s/GB", False, 2),
]


class BenchError(Exception):
    """A step of a variant failed; the message says which and why."""


def log(msg):
    print(msg, flush=True)


def run(argv, check=True, timeout=60, **kw):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"`{' '.join(argv)}` did not finish in {timeout} s") from e
    if check and p.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` exited {p.returncode}: {(p.stderr or p.stdout).strip()[-600:]}")
    return p


# ---- CPU accounting ----------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_times():
    """(non-idle, total) seconds of all CPUs from /proc/stat's `cpu` line."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal  # guest time is inside user
    return busy / CLK_TCK, (busy + idle + iowait) / CLK_TCK


def foreign_cpu(own_netns):
    """CPU seconds used so far by user-space processes outside the benchmark's
    namespaces (builds, tests of other people on a shared machine), children
    they have reaped included. Kernel threads are left out: the datapath's
    softirq work may run in them. So is this driver, which reaps the clients
    it runs in those namespaces."""
    total = 0
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino in own_netns:
                continue
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone, or a kernel thread without a namespace link
        # Fields after the parenthesised command name, from field 3 (state)
        # on: field k of proc(5) is at index k - 3.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) < 15 or int(fields[9 - 3]) & 0x00200000:  # PF_KTHREAD
            continue
        total += sum(int(x) for x in fields[14 - 3:18 - 3])  # utime stime cutime cstime
    return total / CLK_TCK


def background_cpus(seconds=1.0):
    """CPUs' worth of work done by everything while nothing is measured."""
    b0, _ = cpu_times()
    time.sleep(seconds)
    b1, _ = cpu_times()
    return (b1 - b0) / seconds


def wait_quiet(limit, threshold=0.25):
    """Waits up to `limit` seconds for the machine's other work (builds, tests)
    to drop under `threshold` CPUs; measuring on a busy machine is noise."""
    deadline = time.time() + limit
    busy = background_cpus(0.5)
    if busy < threshold:
        return
    log(f"    waiting up to {limit:.0f} s for other work to stop ({busy:.2f} CPUs busy)")
    while time.time() < deadline:
        busy = background_cpus(1.0)
        if busy < threshold:
            return
    log(f"    still {busy:.2f} CPUs busy; measuring anyway (flagged in results.md)")


# ---- Namespaces and processes ------------------------------------------------


class Lab:
    """Owns the namespaces and processes of one variant; `close` removes them
    all (also after a failure half-way)."""

    def __init__(self, prefix, workdir):
        self.prefix = prefix
        self.workdir = workdir
        self.namespaces = []
        self.procs = []

    def netns_inodes(self):
        """Inodes of this lab's namespaces: how a process is known to be ours."""
        own = set()
        for ns in self.namespaces:
            try:
                own.add(os.stat(f"/var/run/netns/{ns}").st_ino)
            except OSError:
                pass
        return own

    def ns(self, short):
        name = f"{self.prefix}-{short}"
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def ip(self, ns, *args):
        return run(["ip", "-n", ns, *args])

    def sysctl(self, ns, key, value):
        run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"])

    def cmd(self, ns, argv, cpu=None):
        """argv run inside `ns`, pinned to `cpu` when given."""
        pre = ["taskset", "-c", str(cpu)] if cpu is not None else []
        return ["ip", "netns", "exec", ns, *pre, *argv]

    def exec(self, ns, argv, cpu=None, timeout=60, check=True):
        return run(self.cmd(ns, argv, cpu), timeout=timeout, check=check)

    def spawn(self, ns, argv, cpu=None, logfile=None, env=None):
        out = open(logfile, "ab") if logfile else subprocess.DEVNULL
        p = subprocess.Popen(self.cmd(ns, argv, cpu), stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True, env=env)
        if logfile:
            out.close()
        self.procs.append(p)
        return p

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.time() + 5
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        for ns in reversed(self.namespaces):
            kill_netns(ns)
        self.namespaces = []


def kill_netns(ns):
    """Kills what still runs inside `ns`, then deletes it."""
    pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    for _ in range(20):
        if run(["ip", "netns", "delete", ns], check=False).returncode == 0:
            return
        time.sleep(0.1)
    log(f"warning: could not delete namespace {ns}")


def down(prefix):
    """Removes every namespace whose name starts with `prefix`."""
    names = [line.split()[0] for line in run(["ip", "netns", "list"]).stdout.splitlines() if line.strip()]
    for ns in names:
        if ns.startswith(prefix):
            kill_netns(ns)


# ---- Topologies --------------------------------------------------------------


class Topology:
    def __init__(self, client_ns, server_ns, client_ip, server_ip, sluiced=()):
        self.client_ns = client_ns
        self.server_ns = server_ns
        self.client_ip = client_ip
        self.server_ip = server_ip
        self.sluiced = list(sluiced)  # (node name, Popen)


def vtep_mac(i):
    # Sluice's default VTEP MAC for 198.18.0.i (02:53 + the node address),
    # used for the kernel's VXLAN devices too.
    return f"02:53:c6:12:00:{i:02x}"


def underlay(lab):
    sw = lab.ns("sw")
    lab.ip(sw, "link", "add", "br0", "type", "bridge")
    lab.ip(sw, "link", "set", "br0", "up")
    nodes = []
    for i in (1, 2):
        n = lab.ns(f"n{i}")
        lab.ip(n, "link", "add", "ul0", "type", "veth", "peer", "name", f"s{i}")
        lab.ip(n, "link", "set", f"s{i}", "netns", sw)
        lab.ip(sw, "link", "set", f"s{i}", "master", "br0", "up")
        lab.ip(n, "link", "set", "ul0", "address", f"02:00:c6:12:00:{i:02x}")
        lab.ip(n, "addr", "add", f"198.18.0.{i}/24", "dev", "ul0")
        lab.ip(n, "link", "set", "ul0", "up")
        nodes.append(n)
    return nodes


def topo_veth(lab, _variant):
    a, b = lab.ns("pa"), lab.ns("pb")
    lab.ip(a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b)
    for ns, ip in ((a, "198.19.1.2"), (b, "198.19.1.3")):
        lab.ip(ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        lab.ip(ns, "link", "set", "eth0", "up")
    return Topology(a, b, "198.19.1.2", "198.19.1.3")


def topo_kernel(lab, variant):
    vxlan = variant["mode"] == "vxlan"
    nodes = underlay(lab)
    mtu = str(VXLAN_MTU if vxlan else 1500)
    pods = []
    for i, n in enumerate(nodes, start=1):
        j = 3 - i
        lab.sysctl(n, "net.ipv4.ip_forward", 1)
        pod = lab.ns(f"p{i}")
        lab.ip(n, "link", "add", "vp", "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu, "netns", pod)
        lab.ip(n, "addr", "add", f"198.19.{i}.1/24", "dev", "vp")
        lab.ip(n, "link", "set", "vp", "up")
        lab.ip(pod, "addr", "add", f"198.19.{i}.2/24", "dev", "eth0")
        lab.ip(pod, "link", "set", "eth0", "up")
        lab.ip(pod, "route", "add", "default", "via", f"198.19.{i}.1")
        if vxlan:
            # Flannel-style: static FDB and neighbour entries, onlink route.
            lab.ip(n, "link", "add", "vx0", "address", vtep_mac(i), "mtu", mtu, "type", "vxlan", "id", str(VNI),
                   "local", f"198.18.0.{i}", "dstport", str(VXLAN_PORT), "dev", "ul0", "nolearning")
            lab.ip(n, "addr", "add", f"198.19.{i}.0/32", "dev", "vx0")
            lab.ip(n, "link", "set", "vx0", "up")
            lab.ip(n, "neigh", "add", f"198.19.{j}.0", "lladdr", vtep_mac(j), "dev", "vx0", "nud", "permanent")
            run(["bridge", "-n", n, "fdb", "append", vtep_mac(j), "dev", "vx0", "dst", f"198.18.0.{j}"])
            lab.ip(n, "route", "add", f"198.19.{j}.0/24", "via", f"198.19.{j}.0", "dev", "vx0", "onlink")
        else:
            lab.ip(n, "route", "add", f"198.19.{j}.0/24", "via", f"198.18.0.{j}", "dev", "ul0")
        pods.append(pod)
    return Topology(pods[0], pods[1], "198.19.1.2", "198.19.2.2")


def sluice_config(lab, i, mode, backend, extra=()):
    d = os.path.join(lab.workdir, f"n{i}")
    os.makedirs(d, exist_ok=True)
    j = 3 - i
    cfg = f"""node_name = "node{i}"
mode = "{mode}"
uplink = "ul0"
pod_cidr = "198.19.{i}.0/24"
cluster_cidr = "198.19.0.0/16"
uplink_backend = "{backend}"
state_dir = "{d}/state"
api_socket = "{d}/sluiced.sock"
metrics_listen = "127.0.0.1:0"
workers = 1
{"".join(line + chr(10) for line in extra)}
[[peers]]
name = "node{j}"
node_ip = "198.18.0.{j}"
pod_cidr = "198.19.{j}.0/24"
"""
    path = os.path.join(d, "sluiced.toml")
    with open(path, "w") as f:
        f.write(cfg)
    return d, path


def sluicectl(bindir, sock, *args):
    return run([os.path.join(bindir, "sluicectl"), "--socket", sock, *args], check=False, timeout=10)


def cni_add(lab, bindir, sock, pod_ns, name):
    conf = json.dumps({"cniVersion": "1.1.0", "name": "sluice", "type": "sluice", "socket": sock})
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": f"{lab.prefix}-{name}",
        "CNI_NETNS": f"/var/run/netns/{pod_ns}",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={name};K8S_POD_UID=uid-{name}",
        "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    }
    p = run([os.path.join(bindir, "sluice")], check=False, timeout=30, input=conf, env=env)
    if p.returncode != 0:
        raise BenchError(f"CNI ADD of {name} exited {p.returncode}: {p.stdout.strip()} {p.stderr.strip()}")
    try:
        return json.loads(p.stdout)["ips"][0]["address"].split("/")[0]
    except (ValueError, KeyError, IndexError) as e:
        raise BenchError(f"CNI ADD of {name} answered {p.stdout.strip()!r}, not a result with an address") from e


def topo_sluice(lab, variant):
    bindir = variant["bindir"]
    nodes = underlay(lab)
    sluiced = []
    socks = []
    for i, n in enumerate(nodes, start=1):
        d, cfg = sluice_config(lab, i, variant["mode"], variant["backend"], variant["sluiced_set"])
        env = dict(os.environ, RUST_LOG="info")
        p = lab.spawn(n, [os.path.join(bindir, "sluiced"), "--config", cfg], cpu=variant["sluiced_cpus"][i - 1],
                      logfile=os.path.join(d, "sluiced.log"), env=env)
        sluiced.append((f"node{i}", p, os.path.join(d, "sluiced.log")))
        socks.append(os.path.join(d, "sluiced.sock"))
    for (name, p, logf), sock in zip(sluiced, socks):
        deadline = time.time() + 20
        while sluicectl(bindir, sock, "status").returncode != 0:
            if p.poll() is not None or time.time() > deadline:
                with open(logf, errors="replace") as f:
                    tail = f.read()[-1500:]
                state = f"exited {p.returncode}" if p.poll() is not None else "not ready after 20 s"
                raise BenchError(f"sluiced on {name} {state}:\n{tail}")
            time.sleep(0.1)
    ips = []
    pods = []
    for i, sock in enumerate(socks, start=1):
        pod = lab.ns(f"p{i}")
        ips.append(cni_add(lab, bindir, sock, pod, f"pod{i}"))
        pods.append(pod)
    return Topology(pods[0], pods[1], ips[0], ips[1], [(name, p) for name, p, _ in sluiced])


# ---- Measurements -------------------------------------------------------------


def wait_reachable(lab, topo, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if lab.exec(topo.client_ns, ["ping", "-c", "1", "-W", "1", topo.server_ip], check=False).returncode == 0:
            return
    raise BenchError(f"{topo.server_ip} not reachable from the client pod within {timeout} s")


def iperf3(lab, topo, cpus, args, duration):
    argv = ["iperf3", "-c", topo.server_ip, "-p", str(IPERF_PORT), "-t", str(duration), "-J",
            "--connect-timeout", "3000", *args]
    last = None
    for _ in range(3):  # the server may still be closing the previous test
        p = lab.exec(topo.client_ns, argv, cpu=cpus["client"], timeout=duration + 30, check=False)
        try:
            v = json.loads(p.stdout)
        except ValueError:
            v = {"error": (p.stderr or p.stdout).strip()[-300:]}
        if "error" not in v and p.returncode == 0:
            return v
        last = v.get("error", f"exit {p.returncode}")
        time.sleep(0.5)
    raise BenchError(f"iperf3 {' '.join(args) or 'TCP'}: {last}")


def machine_tcp_cc():
    try:
        with open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
            return f.read().strip()
    except OSError:
        return "?"


def measure_tcp(lab, topo, cpus, duration, streams, cc=None):
    """(Gbit/s received, CPU s/GB, CPU s/GB before subtracting other work,
    CPUs' worth of other work during the run, segments the sender
    retransmitted). `cc`: the congestion control (`--tcp-cc`); None, the
    machine's default, which new namespaces inherit."""
    args = ["-P", str(streams)] if streams > 1 else []
    if cc:
        args += ["-C", cc]
    own = lab.netns_inodes()
    f0, (b0, _), t0 = foreign_cpu(own), cpu_times(), time.time()
    v = iperf3(lab, topo, cpus, args, duration)
    f1, (b1, _), t1 = foreign_cpu(own), cpu_times(), time.time()
    recv = v["end"]["sum_received"]
    retrans = v["end"].get("sum_sent", {}).get("retransmits")
    gb = recv["bytes"] / 1e9
    if gb <= 0:
        return recv["bits_per_second"] / 1e9, None, None, None, retrans
    busy, foreign = b1 - b0, max(0.0, f1 - f0)
    return (recv["bits_per_second"] / 1e9, max(0.0, busy - foreign) / gb, busy / gb, foreign / (t1 - t0),
            retrans)


def measure_udp(lab, topo, cpus, duration):
    """(kpps delivered, % of the datagrams sent that were lost)."""
    v = iperf3(lab, topo, cpus, ["-u", "-l", "64", "-b", "0"], duration)
    recv = v["end"]["sum_received"]
    delivered = recv["packets"] - recv["lost_packets"]
    lost = 100.0 * recv["lost_packets"] / recv["packets"] if recv["packets"] else None
    return (delivered / recv["seconds"] / 1e3 if recv["seconds"] > 0 else None), lost


def measure_udpgen(lab, topo, cpus, duration, bindir, rate=None):
    """64-byte UDP from e2e-udpgen (one sendmmsg per 64 datagrams): (kpps
    delivered, % of the datagrams sent that were lost)."""
    gen = os.path.join(bindir, "e2e-udpgen")
    dst = f"{topo.server_ip}:{UDPGEN_PORT}"
    rx = subprocess.Popen(lab.cmd(topo.server_ns, [gen, "recv", dst, str(duration)], cpus["server"]),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)  # bound before the first datagram
        pace = ["--rate", str(rate)] if rate else []
        tx = lab.exec(topo.client_ns, [gen, "send", dst, str(duration), *pace], cpu=cpus["client"],
                      timeout=duration + 30, check=False)
        out, err = rx.communicate(timeout=duration + 15)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    try:
        sent, got = json.loads(tx.stdout), json.loads(out)
    except ValueError as e:
        raise BenchError(f"e2e-udpgen: {(tx.stderr or err).strip()[-300:]}") from e
    lost = 100.0 * max(0, sent["sent"] - got["received"]) / sent["sent"] if sent["sent"] else None
    return (got["pps"] / 1e3 if got["seconds"] > 0 else None), lost


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def measure_rr(lab, topo, cpus, duration, tool):
    if tool == "sockperf":
        p = lab.exec(topo.client_ns, ["sockperf", "pp", "--tcp", "-i", topo.server_ip, "-p", str(RR_PORT),
                                      "-t", str(duration), "--full-rtt"],
                     cpu=cpus["client"], timeout=duration + 30, check=False)
        out = ANSI.sub("", p.stdout + p.stderr)
        m50 = re.search(r"percentile 50\.000 =\s*([0-9.]+)", out)
        if p.returncode != 0 or not m50:
            raise BenchError(f"sockperf ping-pong: {out.strip()[-400:]}")
        return float(m50.group(1))
    p = lab.exec(topo.client_ns, [sys.executable, os.path.join(HERE, "pingpong.py"), "client", topo.server_ip,
                                  str(RR_PORT), str(duration)], cpu=cpus["client"], timeout=duration + 30, check=False)
    try:
        return json.loads(p.stdout)["rtt_p50_us"]
    except (ValueError, KeyError) as e:
        raise BenchError(f"pingpong: {(p.stderr or p.stdout).strip()[-400:]}") from e


def start_servers(lab, topo, cpus, tool):
    lab.spawn(topo.server_ns, ["iperf3", "-s", "-B", topo.server_ip, "-p", str(IPERF_PORT)], cpu=cpus["server"])
    if tool == "sockperf":
        argv = ["sockperf", "sr", "--tcp", "-i", topo.server_ip, "-p", str(RR_PORT)]
    else:
        argv = [sys.executable, os.path.join(HERE, "pingpong.py"), "server", topo.server_ip, str(RR_PORT)]
    lab.spawn(topo.server_ns, argv, cpu=cpus["server"])
    # Both listen within a few milliseconds; iperf3() retries a refused connect.
    time.sleep(0.5)


def vmhwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def perf_report(data, *extra):
    """`perf report` as text, lines trimmed (perf pads columns to the longest
    symbol) and its comment header dropped."""
    p = run(["perf", "report", "-i", data, "--stdio", "--no-children", "--percent-limit", "0.4", *extra],
            timeout=120, check=False)
    lines = [line.rstrip()[:220] for line in p.stdout.splitlines()]
    return "\n".join(line for line in lines if line and not line.startswith("#")) + "\n"


def profile(lab, topo, cpus, duration, out_dir, name, load, cc=None):
    """System-wide perf profile while `load` runs (one TCP stream, or 64-byte
    UDP); the breakdown by thread, and sluiced's top symbols, go to
    profile-NAME.txt."""
    data = os.path.join(lab.workdir, f"perf-{name}.data")
    perf = subprocess.Popen(["perf", "record", "-a", "-e", "cpu-clock", "-F", "1999", "-o", data, "--",
                             "sleep", str(duration)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.2)
    try:
        if load == "udp64":
            rate = measure_udp(lab, topo, cpus, max(1, duration - 1))[0]
            what = f"iperf3 64-byte UDP ({name}, {rate or 0:.0f} kpps delivered)"
        else:
            rate = measure_tcp(lab, topo, cpus, max(1, duration - 1), 1, cc)[0]
            what = f"one iperf3 TCP stream ({name}, {rate:.2f} Gbit/s)"
    finally:
        _, err = perf.communicate(timeout=duration + 60)
    if perf.returncode != 0:
        raise BenchError(f"perf record exited {perf.returncode}: {err.strip()[-400:]}")
    pids = ",".join(str(p.pid) for _, p in topo.sluiced)
    txt = os.path.join(out_dir, f"profile-{name}.txt")
    with open(txt, "w") as f:
        f.write(f"perf record -a -e cpu-clock, {duration} s, during {what}. Percentages are of all CPUs' time, "
                "except in the sluiced sections: there they are of sluiced's own time.\n\n")
        f.write("== By thread name (all processes)\n")
        f.write(perf_report(data, "--sort", "comm"))
        f.write("\n== By CPU and thread name\n")
        f.write(perf_report(data, "--sort", "cpu,comm"))
        if pids:
            f.write("\n== sluiced: where its time goes (its code, libc, the kernel on its behalf)\n")
            f.write(perf_report(data, "--pid", pids, "--percentage", "relative", "--sort", "comm,dso"))
            f.write("\n== sluiced: top symbols\n")
            f.write(perf_report(data, "--pid", pids, "--percentage", "relative", "--sort", "dso,sym"))
            for i, (_, p) in enumerate(topo.sluiced, 1):
                f.write(f"\n== sluiced of node {i}: top symbols\n")
                f.write(perf_report(data, "--pid", str(p.pid), "--percentage", "relative", "--sort", "dso,sym"))
        f.write("\n== Everything: top symbols\n")
        f.write(perf_report(data, "--sort", "comm,dso,sym"))
    return txt


# ---- One variant ---------------------------------------------------------------


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def measure_variant(v, args, cpus, tool, prefix, workdir):
    lab = Lab(prefix, os.path.join(workdir, v["name"]))
    os.makedirs(lab.workdir, exist_ok=True)
    res = {
        "name": v["name"], "kind": v["kind"], "mode": v["mode"], "backend": v["backend"],
        "baseline": v["baseline"], "runs": {m[0]: [] for m in METRICS}, "median": {}, "errors": [],
        "sluiced_vmhwm_kib": None, "background_cpus": None,
        # CPU s/GB of the whole machine before other people's work is taken
        # out, and how many CPUs that work kept busy, per one-stream TCP run.
        "cpu_raw_s_per_gb": [], "foreign_cpus": [],
        # Share of the 64-byte datagrams sent that never arrived, per run.
        "udp64_lost_pct": [], "udpgen_lost_pct": [],
        # Segments the TCP sender retransmitted, per run.
        "tcp1_retransmits": [], "tcp4_retransmits": [],
    }
    build = {"ceiling": topo_veth, "kernel": topo_kernel, "sluice": topo_sluice}[v["kind"]]
    t0 = time.time()
    try:
        topo = build(lab, v)
        wait_reachable(lab, topo)
        start_servers(lab, topo, cpus, tool)
        res["client_ip"], res["server_ip"] = topo.client_ip, topo.server_ip
        res["background_cpus"] = round(background_cpus(1.0), 3)
        for rep in range(args.reps):
            steps = [
                ("tcp1", lambda: measure_tcp(lab, topo, cpus, args.duration, 1, args.tcp_cc)),
                ("tcp4", lambda: measure_tcp(lab, topo, cpus, args.duration, 4, args.tcp_cc)),
                ("udp64", lambda: measure_udp(lab, topo, cpus, args.duration)),
                ("udpgen", lambda: measure_udpgen(lab, topo, cpus, args.duration, args.bin, args.udpgen_rate)),
                ("rr", lambda: measure_rr(lab, topo, cpus, args.duration, tool)),
            ]
            for step, fn in steps:
                if step not in args.metrics:
                    continue
                try:
                    r = fn()
                except BenchError as e:
                    res["errors"].append(f"rep {rep + 1} {step}: {e}")
                    log(f"    {step}: FAILED: {e}")
                    continue
                if step == "tcp1":
                    res["runs"]["tcp1_gbps"].append(r[0])
                    res["runs"]["cpu_s_per_gb"].append(r[1])
                    res["cpu_raw_s_per_gb"].append(r[2])
                    res["foreign_cpus"].append(r[3])
                    res["tcp1_retransmits"].append(r[4])
                elif step == "tcp4":
                    res["runs"]["tcp4_gbps"].append(r[0])
                    res["tcp4_retransmits"].append(r[4])
                elif step in ("udp64", "udpgen"):
                    res["runs"][f"{step}_kpps"].append(r[0])
                    res[f"{step}_lost_pct"].append(r[1])
                else:
                    res["runs"]["rr_p50_us"].append(r)
            log(f"    rep {rep + 1}/{args.reps}: " + "  ".join(
                f"{k}={fmt(res['runs'][k][-1], 2)}" for k, *_ in METRICS if res["runs"][k])
                + "".join(f"  {k}={fmt(res[k][-1], 1)}" for k in ("udp64_lost_pct", "udpgen_lost_pct") if res[k])
                + "".join(f"  {k}={res[k][-1]}" for k in ("tcp1_retransmits", "tcp4_retransmits") if res[k]))
        if topo.sluiced:
            # The daemons' counters (drops by reason, per-port packets) next
            # to the results, for reading why a row is slow.
            logs = os.path.join(args.out, "logs")
            os.makedirs(logs, exist_ok=True)
            for i in (1, 2):
                st = sluicectl(v["bindir"], os.path.join(lab.workdir, f"n{i}", "sluiced.sock"), "--json", "stats")
                with open(os.path.join(logs, f"{v['name']}-node{i}-stats.json"), "w") as f:
                    f.write(st.stdout if st.returncode == 0 else f"sluicectl stats failed: {st.stderr}")
            hwm = [vmhwm_kib(p.pid) for _, p in topo.sluiced]
            hwm = [h for h in hwm if h is not None]
            res["sluiced_vmhwm_kib"] = max(hwm) if hwm else None
        if v["name"] in args.profile:
            txt = profile(lab, topo, cpus, max(args.duration, 4), args.out, v["name"], args.profile_load,
                          args.tcp_cc)
            res["profile"] = os.path.relpath(txt, args.out)
            log(f"    profile: {txt}")
    except BenchError as e:
        res["errors"].append(str(e))
        log(f"    FAILED: {e}")
    finally:
        # Keep the daemons' logs next to the results.
        for i in (1, 2):
            src = os.path.join(lab.workdir, f"n{i}", "sluiced.log")
            if os.path.exists(src):
                dst_dir = os.path.join(args.out, "logs")
                os.makedirs(dst_dir, exist_ok=True)
                shutil.copy(src, os.path.join(dst_dir, f"{v['name']}-node{i}.log"))
        lab.close()
    for k, *_ in METRICS:
        res["median"][k] = median(res["runs"][k])
    res["seconds"] = round(time.time() - t0, 1)
    return res


# ---- Reports -------------------------------------------------------------------


def fmt(x, decimals):
    return "–" if x is None else f"{x:,.{decimals}f}"


def markdown(results):
    meta = results["meta"]
    by_name = {v["name"]: v for v in results["variants"]}
    lines = [
        f"# Sluice vs the kernel datapath, pod to pod across two nodes ({meta['profile']} run)",
        "",
        f"{meta['date']} · `{meta['command']}` · {meta['cpus']} × {meta['cpu_model']} · kernel {meta['kernel']} · "
        f"median of {meta['reps']} × {meta['duration_s']} s per metric · git {meta['git']}",
        "",
        "| Variant | " + " | ".join(f"{h} ({u})" for _, h, u, _, _ in METRICS) + " | sluiced VmHWM (MiB) | Compared with |",
        "|---|" + "---:|" * len(METRICS) + "---:|---|",
    ]
    for v in results["variants"]:
        base = by_name.get(v["baseline"]) if v["baseline"] else None
        cells = []
        for k, _, _, _, d in METRICS:
            x = v["median"].get(k)
            cell = fmt(x, d)
            if base is not None and x is not None and base["median"].get(k):
                cell += f" ({x / base['median'][k]:.2f}×)"
            cells.append(cell)
        hwm = v.get("sluiced_vmhwm_kib")
        name = v["name"] + (" ⚠" if v["errors"] else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(hwm / 1024 if hwm else None, 1)} | "
                     + (v["baseline"] or "") + " |")
    lines += [
        "",
        "Ratios in brackets are Sluice ÷ its kernel row: above 1× is better for throughput and packets, below 1× is "
        "better for latency and CPU. sluice-ipip is compared with kernel-vxlan because this kernel has no IPIP device "
        "built in (nothing kernel-side to compare with); IPIP carries 30 bytes less overhead per packet than VXLAN.",
        "",
        "- **TCP**: iperf3, one stream and `-P 4`, receiver's Gbit/s. **UDP 64 B**: `iperf3 -u -l 64 -b 0`, packets "
        "the receiver got per second (sent minus lost). **UDP 64 B sendmmsg**: the same load from `e2e-udpgen` "
        "(bench/e2e/udpgen.rs: one `sendmmsg` per 64 datagrams, counted with `recvmmsg`), where iperf3's own "
        "per-datagram cost would be the bottleneck; results.json has the share lost for both (`*_lost_pct`). "
        "**TCP RR**: " + (
            "sockperf ping-pong over TCP, median round trip."
            if meta["rr_tool"] == "sockperf" else
            "bench/e2e/pingpong.py (sockperf not installed), median round trip; includes Python's own cost.")
        + " **CPU**: non-idle CPU seconds of the whole machine (/proc/stat) during the one-stream TCP run, per GB "
        "received; it counts sluiced's busy-polling workers and all kernel work. CPU time of user-space processes "
        "outside the benchmark's namespaces (other people's builds on a shared machine) is subtracted; "
        "results.json keeps the raw figure too (`cpu_raw_s_per_gb`).",
        f"- **Pinning** ({meta['pinning']}): {meta['pinning_note']}",
        f"- **TCP congestion control**: {meta.get('tcp_congestion_control', '?')}; it moves the kernel rows' "
        "throughput a lot (bench/e2e/README.md), so compare runs made with the same one.",
        *([f"- **e2e-udpgen paced** to {meta['udpgen_rate_pps']:,} datagrams/s (`--udpgen-rate`)."]
          if meta.get("udpgen_rate_pps") else []),
        "- Every variant's namespaces are built afresh; runs on one machine drift by ±20% between runs, so compare "
        "rows of the same run.",
    ]
    if meta.get("sluiced_set"):
        lines.append("- **sluiced settings** added to every node's configuration: "
                     + ", ".join(f"`{x}`" for x in meta["sluiced_set"]))
    bg = [(v["name"], max(v["background_cpus"] or 0, median(v["foreign_cpus"]) or 0)) for v in results["variants"]]
    bg = [(n, b) for n, b in bg if b > 0.2]
    if bg:
        lines.append("- ⚠ Other work kept CPUs busy while these variants were measured (CPUs, before the variant or "
                     "median during its TCP runs): " + ", ".join(f"{n} {b:.2f}" for n, b in bg)
                     + ". Their throughput and latency are less trustworthy.")
    errs = [(v["name"], e) for v in results["variants"] for e in v["errors"]]
    if errs:
        lines += ["", "## Failures", ""] + [f"- {n}: {e.splitlines()[0]}" for n, e in errs]
    profs = [(v["name"], v["profile"]) for v in results["variants"] if v.get("profile")]
    if profs:
        lines += ["", "Profiles: " + ", ".join(f"[{n}]({p})" for n, p in profs)]
    return "\n".join(lines) + "\n"


def meta_info(args, cpus, tool):
    def first(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT)
            return (p.stdout or p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dirty = first(["git", "status", "--porcelain", "--untracked-files=no"]) not in ("", "?")
    notes = {
        "dedicated": f"iperf3/sockperf client and server both on CPU {cpus['client']}; both nodes' sluiced on CPU 0 "
                     "(their one worker each busy-polls while traffic flows, so the two share that CPU). On kernel "
                     "rows the datapath runs in softirq on the senders' CPU, so CPU 0 is mostly idle there: Sluice "
                     "rows use one more core, which the CPU column shows.",
        "split": f"client on CPU {cpus['client']}, server on CPU {cpus['server']}; sluiced's workers pin themselves "
                 "to CPU 0 and busy-poll there, sharing it with the client on Sluice rows.",
        "node": f"each node on a CPU of its own, like two one-CPU machines: client and node 1's sluiced on CPU "
                f"{cpus['client']}, server and node 2's sluiced on CPU {cpus['server']}; a busy-polling worker shares "
                "its CPU with the application.",
        "none": "nothing pinned; sluiced's workers still pin themselves to CPU 0.",
    }
    return {
        "profile": "quick" if args.quick else "full",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "scripts/bench-e2e " + " ".join(args.argv),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "reps": args.reps,
        "duration_s": args.duration,
        "pinning": args.pin,
        "pinning_note": notes[args.pin],
        "cpu_client": cpus["client"],
        "cpu_server": cpus["server"],
        "rr_tool": tool,
        "sluiced_set": args.sluiced_set,
        "tcp_congestion_control": args.tcp_cc or f"{machine_tcp_cc()} (the machine's default)",
        "udpgen_rate_pps": args.udpgen_rate,
        "iperf3": first(["iperf3", "--version"]),
        "sockperf": first(["sockperf", "--version"]) if tool == "sockperf" else None,
        "git": first(["git", "rev-parse", "--short", "HEAD"]) + ("+dirty" if dirty else ""),
    }


def write_outputs(results, out):
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    md = markdown(results)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    return md


def chart(out, bindir):
    exe = os.path.join(bindir, "e2e-chart")
    if not os.path.exists(exe):
        log(f"warning: {exe} missing; no chart.png")
        return
    p = run([exe, os.path.join(out, "results.json"), os.path.join(out, "chart.png")], check=False)
    if p.returncode != 0:
        log(f"warning: chart: {p.stderr.strip()}")


# ---- Main --------------------------------------------------------------------------


def main(argv):
    ap = argparse.ArgumentParser(prog="scripts/bench-e2e", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="about a minute: 1 repetition of 2 s, 3 variants")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench-e2e"), help="results directory")
    ap.add_argument("--reps", type=int, help="repetitions per metric (default 3; 1 with --quick)")
    ap.add_argument("--duration", type=int, help="seconds per measurement (default 4; 2 with --quick)")
    ap.add_argument("--variants", help="comma-separated subset of: " + ", ".join(v[0] for v in ALL_VARIANTS))
    ap.add_argument("--pin", choices=["node", "dedicated", "split", "none"], default="node",
                    help="CPU placement of the traffic tools (see bench/e2e/README.md)")
    ap.add_argument("--metrics", default=",".join(STEPS),
                    help="comma-separated subset of: " + ", ".join(STEPS) + " (tcp1 also gives CPU s/GB)")
    ap.add_argument("--sluiced-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a sluiced setting for every Sluice node, as a TOML line (e.g. busy_poll_us=50); repeatable")
    ap.add_argument("--tcp-cc", metavar="NAME",
                    help="TCP congestion control for the iperf3 runs (default: the machine's, "
                         "net.ipv4.tcp_congestion_control)")
    ap.add_argument("--udpgen-rate", type=int, metavar="PPS",
                    help="pace e2e-udpgen to this many datagrams per second (default: unpaced), to find the "
                         "highest rate a path carries without loss")
    ap.add_argument("--profile", default="", help="comma-separated variants to profile with perf after measuring")
    ap.add_argument("--profile-load", choices=["tcp1", "udp64"], default="tcp1",
                    help="the traffic a --profile records: one TCP stream (default) or 64-byte UDP")
    ap.add_argument("--wait-quiet", type=float,
                    help="before each variant wait up to this many seconds for other work on the machine to stop "
                         "(default 20; 5 with --quick)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release"), help="where the release binaries are")
    ap.add_argument("--run-id", default=f"{os.getpid() & 0xffff:04x}", help=argparse.SUPPRESS)
    ap.add_argument("--down", action="store_true", help="remove what a run left behind (all slbe-* namespaces)")
    args = ap.parse_args(argv)
    # The run id is the wrapper's business, not part of the command a reader reruns.
    args.argv = [a for i, a in enumerate(argv) if a != "--run-id" and (i == 0 or argv[i - 1] != "--run-id")]
    if os.geteuid() != 0:
        raise SystemExit("scripts/bench-e2e: needs root (network namespaces, TAP devices, AF_XDP)")
    if args.down:
        down("slbe-")
        return 0
    args.reps = args.reps or (1 if args.quick else 3)
    args.duration = args.duration or (2 if args.quick else 4)
    if args.wait_quiet is None:
        args.wait_quiet = 5.0 if args.quick else 20.0
    if args.reps < 1 or args.duration < 1:
        raise SystemExit(f"--reps and --duration must be at least 1, not {args.reps} and {args.duration}")
    known = {v[0]: v for v in ALL_VARIANTS}
    names = args.variants.split(",") if args.variants else (QUICK_VARIANTS if args.quick else list(known))
    bad = [n for n in names if n not in known]
    if bad:
        raise SystemExit(f"--variants: unknown {', '.join(bad)}; expected some of {', '.join(known)}")
    if args.udpgen_rate is not None:
        if args.udpgen_rate < 1000:
            raise SystemExit(f"--udpgen-rate: {args.udpgen_rate} is too low; expected at least 1000 datagrams "
                             "per second (e2e-udpgen paces whole batches of 64)")
    if args.tcp_cc is not None:
        try:
            with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
                available = f.read().split()
        except OSError:
            available = []
        if args.tcp_cc not in available:
            raise SystemExit(f"--tcp-cc: {args.tcp_cc!r} is not available here; this kernel offers "
                             f"{', '.join(available) or 'none that it lists'}")
    args.metrics = [m for m in args.metrics.split(",") if m]
    bad = [m for m in args.metrics if m not in STEPS]
    if bad or not args.metrics:
        raise SystemExit(f"--metrics: unknown {', '.join(bad) or '(none given)'}; expected some of {', '.join(STEPS)}")
    args.profile = [n for n in args.profile.split(",") if n]
    bad = [n for n in args.profile if n not in names]
    if bad:
        raise SystemExit(f"--profile: {', '.join(bad)} is not among the variants measured ({', '.join(names)})")
    if "udpgen" in args.metrics and not os.access(os.path.join(args.bin, "e2e-udpgen"), os.X_OK):
        raise SystemExit(f"{args.bin}/e2e-udpgen missing: build with `cargo build --release --workspace --bins`")
    if any(known[n][1] == "sluice" for n in names):
        for b in ("sluiced", "sluicectl", "sluice"):
            if not os.access(os.path.join(args.bin, b), os.X_OK):
                raise SystemExit(f"{args.bin}/{b} missing: build with `cargo build --release --workspace --bins`")
    for tool in ("ip", "bridge", "iperf3", "taskset", "ping"):
        if not shutil.which(tool):
            raise SystemExit(f"scripts/bench-e2e: {tool} is not installed")
    if args.profile and not shutil.which("perf"):
        raise SystemExit("--profile needs perf (Debian: linux-perf)")
    tool = "sockperf" if shutil.which("sockperf") else "pingpong"

    ncpu = os.cpu_count() or 1
    last = ncpu - 1
    # sluiced's worker pins itself to the first CPU it is allowed: starting
    # it under taskset chooses that CPU.
    cpus = {
        "dedicated": {"client": last, "server": last, "sluiced": [0, 0]},
        "split": {"client": 0, "server": last, "sluiced": [None, None]},
        "node": {"client": 0, "server": last, "sluiced": [0, last]},
        "none": {"client": None, "server": None, "sluiced": [None, None]},
    }[args.pin]
    if ncpu == 1:
        cpus = {"client": None, "server": None, "sluiced": [None, None]}

    os.makedirs(args.out, exist_ok=True)
    args.out = os.path.abspath(args.out)
    prefix = f"slbe-{args.run_id}"
    workdir = f"/tmp/{prefix}"
    os.makedirs(workdir, exist_ok=True)

    # SIGTERM unwinds like Ctrl-C, so every `finally` below runs. SIGINT is
    # set explicitly: a shell starting this in the background ignores it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)

    results = {"meta": meta_info(args, cpus, tool), "variants": []}
    log(f"== {len(names)} variants, {args.reps} × {args.duration} s per metric, pinning {args.pin}, "
        f"RR with {tool}, namespaces {prefix}-*")
    try:
        for n in names:
            name, kind, mode, backend, baseline = known[n]
            log(f"== {name}")
            v = {"name": name, "kind": kind, "mode": mode, "backend": backend, "baseline": baseline,
                 "bindir": args.bin, "sluiced_cpus": cpus["sluiced"], "sluiced_set": args.sluiced_set}
            if args.wait_quiet > 0:
                wait_quiet(args.wait_quiet)
            results["variants"].append(measure_variant(v, args, cpus, tool, f"{prefix}-{len(results['variants'])}",
                                                       workdir))
            write_outputs(results, args.out)
    finally:
        # A second Ctrl-C (or the wrapper's SIGTERM after it) must not cut the
        # teardown short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        down(prefix)
        shutil.rmtree(workdir, ignore_errors=True)
    md = write_outputs(results, args.out)
    chart(args.out, args.bin)
    log("")
    log(md)
    log(f"results: {args.out}/results.md, results.json, chart.png")
    return 1 if any(v["errors"] for v in results["variants"]) else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("scripts/bench-e2e: interrupted; its namespaces and processes are removed", file=sys.stderr)
        sys.exit(130)
