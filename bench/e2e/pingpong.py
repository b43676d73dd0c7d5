#!/usr/bin/env python3
"""TCP request/response ping-pong, the fallback when sockperf is not installed.

    pingpong.py server ADDR PORT
    pingpong.py client ADDR PORT SECONDS

The client sends a 64-byte request, waits for the 64-byte echo and times the
round trip, for SECONDS (the first 10% is warm-up and not counted). It prints
one JSON object: {"rtt_p50_us", "rtt_avg_us", "samples"}. Python's own cost is
in every sample, equally for every variant; sockperf is preferred.
"""

import json
import socket
import sys
import time

MSG = 64


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def server(addr, port):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(8)
    while True:
        c, _ = ls.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with c:
            while True:
                m = recv_exact(c, MSG)
                if m is None:
                    break
                c.sendall(m)


def client(addr, port, seconds):
    s = socket.create_connection((addr, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"x" * MSG
    start = time.perf_counter()
    warm = start + seconds * 0.1
    end = start + seconds
    samples = []
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        s.sendall(msg)
        if recv_exact(s, MSG) is None:
            raise SystemExit("pingpong: server closed the connection")
        t1 = time.perf_counter()
        if t0 >= warm:
            samples.append((t1 - t0) * 1e6)
    s.close()
    if not samples:
        raise SystemExit("pingpong: no round trip completed")
    samples.sort()
    print(json.dumps({
        "rtt_p50_us": samples[len(samples) // 2],
        "rtt_avg_us": sum(samples) / len(samples),
        "samples": len(samples),
    }))


def main(argv):
    if len(argv) == 4 and argv[1] == "server":
        server(argv[2], int(argv[3]))
    elif len(argv) == 5 and argv[1] == "client":
        client(argv[2], int(argv[3]), float(argv[4]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
