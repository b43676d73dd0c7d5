//! The upstream network-policy e2e matrix, end to end: namespaces x, y, z with
//! pods a, b, c each (9 pods on two nodes, attached through the CNI plugin),
//! real TCP and UDP connections on ports 80 and 81 from every pod to every
//! pod, checked against the expected 9 × 9 reachability for each scenario.
//!
//! A TCP probe passes when the connection opens and one byte is echoed back;
//! a UDP probe when its datagram is echoed back. Both need the reply
//! direction, so they also check that replies of allowed connections pass.
//! Each probe uses a new source port: a new flow, classified afresh.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{apply_both, delete_both, two_peered_nodes, Node, Pod};
use common::skip_unless_root;
use sluice_dataplane::sys::netns::{in_netns, NetNs};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 2] = [80, 81];
const PROBE_TIMEOUT: Duration = Duration::from_millis(1200);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// One of the nine pods: Kubernetes namespace, pod label, address, netns.
struct Peer {
    ns: &'static str,
    pod: &'static str,
    ip: Ipv4Addr,
    netns: NetNs,
}

impl Peer {
    fn name(&self) -> String {
        format!("{}/{}", self.ns, self.pod)
    }
}

/// TCP and UDP echo servers on ports 80 and 81 in every pod, stopped on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Servers {
    fn start(peers: &[Peer]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for p in peers {
            for port in PORTS {
                let addr = SocketAddr::from((p.ip, port));
                let (tcp, udp) = in_netns(&p.netns, || {
                    (TcpListener::bind(addr), UdpSocket::bind(addr))
                })
                .expect("entering the pod namespace");
                let tcp = tcp.unwrap_or_else(|e| panic!("tcp listen {addr}: {e}"));
                let udp = udp.unwrap_or_else(|e| panic!("udp bind {addr}: {e}"));
                tcp.set_nonblocking(true).unwrap();
                udp.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let s = stop.clone();
                threads.push(std::thread::spawn(move || {
                    while !s.load(Ordering::Relaxed) {
                        match tcp.accept() {
                            Ok((mut c, _)) => {
                                let _ = c.set_nonblocking(false);
                                let _ = c.set_read_timeout(Some(PROBE_TIMEOUT));
                                let mut b = [0u8; 1];
                                if c.read_exact(&mut b).is_ok() {
                                    let _ = c.write_all(&b);
                                }
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                }));
                let s = stop.clone();
                threads.push(std::thread::spawn(move || {
                    let mut b = [0u8; 64];
                    while !s.load(Ordering::Relaxed) {
                        if let Ok((n, from)) = udp.recv_from(&mut b) {
                            let _ = udp.send_to(&b[..n], from);
                        }
                    }
                }));
            }
        }
        Servers { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One probe: from `from`'s namespace to `to`:`port`.
fn probe(from: &Peer, to: Ipv4Addr, proto: Proto, port: u16) -> bool {
    let dst = SocketAddr::from((to, port));
    match proto {
        Proto::Tcp => {
            let Ok(Ok(mut c)) = in_netns(&from.netns, || {
                TcpStream::connect_timeout(&dst, PROBE_TIMEOUT)
            }) else {
                return false;
            };
            let _ = c.set_read_timeout(Some(PROBE_TIMEOUT));
            let mut b = [0u8; 1];
            c.write_all(b"p").is_ok() && c.read_exact(&mut b).is_ok() && &b == b"p"
        }
        Proto::Udp => {
            let Ok(Ok(s)) = in_netns(&from.netns, || UdpSocket::bind((from.ip, 0))) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
            let mut b = [0u8; 16];
            s.send_to(b"probe", dst).is_ok()
                && matches!(s.recv_from(&mut b), Ok((5, a)) if a == dst)
                && &b[..5] == b"probe"
        }
    }
}

/// Probes every pair on both protocols and ports (in parallel) and compares
/// with `expect(from, to, proto, port)`; a mismatch prints the whole matrix
/// of that protocol and port, upstream style ("X" reachable, "." not, upper
/// case where the observation differs from the expectation).
fn check(scenario: &str, peers: &[Peer], expect: impl Fn(&Peer, &Peer, Proto, u16) -> bool + Sync) {
    let cases: Vec<(usize, usize, Proto, u16)> = (0..peers.len())
        .flat_map(|i| (0..peers.len()).map(move |j| (i, j)))
        .flat_map(|(i, j)| {
            [Proto::Tcp, Proto::Udp]
                .into_iter()
                .flat_map(move |pr| PORTS.into_iter().map(move |po| (i, j, pr, po)))
        })
        .collect();
    let seen: Vec<bool> = std::thread::scope(|s| {
        let chunks: Vec<_> = cases
            .chunks(cases.len().div_ceil(48))
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|&(i, j, pr, po)| probe(&peers[i], peers[j].ip, pr, po))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        chunks.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut report = String::new();
    let mut wrong = 0;
    for pr in [Proto::Tcp, Proto::Udp] {
        for po in PORTS {
            let mut table = format!("{pr:?} {po}\n      ");
            for p in peers {
                table.push_str(&format!("{:<4}", p.name()));
            }
            table.push('\n');
            let mut bad_here = 0;
            for (i, from) in peers.iter().enumerate() {
                table.push_str(&format!("{:<6}", from.name()));
                for (j, to) in peers.iter().enumerate() {
                    let k = cases.iter().position(|c| *c == (i, j, pr, po)).unwrap();
                    let (got, want) = (seen[k], i == j || expect(from, to, pr, po));
                    let c = match (got, got == want) {
                        (true, true) => "X",
                        (false, true) => ".",
                        (true, false) => "X!",
                        (false, false) => ".!",
                    };
                    bad_here += usize::from(got != want);
                    table.push_str(&format!("{c:<4}"));
                }
                table.push('\n');
            }
            if bad_here > 0 {
                report.push_str(&table);
            }
            wrong += bad_here;
        }
    }
    assert_eq!(
        wrong, 0,
        "scenario {scenario:?}: {wrong} probes differ from the expected matrix \
         (rows: from, columns: to; ! marks a wrong cell)\n{report}"
    );
    eprintln!("scenario {scenario:?}: {} probes as expected", cases.len());
}

fn netpol(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

#[test]
fn upstream_matrix_across_two_nodes() {
    if skip_unless_root() {
        return;
    }
    let (_u, a, b) = two_peered_nodes("pm", "vxlan", "socket");
    let namespaces: Vec<String> = NAMESPACES
        .iter()
        .map(|n| {
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}, labels: {{ns: {n}}}}}\n"
            )
        })
        .collect();
    apply_both(&a, &b, &namespaces.join("---\n"));
    // x and y/a on the first node, the rest on the second: every scenario
    // mixes same-node and cross-node pairs.
    let mut pods: Vec<(&'static str, &'static str, Pod, &Node)> = Vec::new();
    for ns in NAMESPACES {
        for pod in PODS {
            let node = if ns == "x" || (ns == "y" && pod == "a") {
                &a
            } else {
                &b
            };
            // Pod names are unique across namespaces (the test helper derives
            // the pod UID from the name); selection is by label.
            let p = node.add_pod_in(ns, &format!("{ns}{pod}"));
            pods.push((ns, pod, p, node));
        }
    }
    let objects: Vec<String> = pods
        .iter()
        .map(|(ns, pod, p, node)| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {ns}{pod}, namespace: {ns}, uid: uid-{ns}{pod}, labels: {{pod: {pod}}}}}\n\
                 spec: {{nodeName: {}, containers: [{{name: c, image: none, ports: [{{name: serve, containerPort: 80}}, {{name: alt, containerPort: 81, protocol: UDP}}]}}]}}\n\
                 status: {{podIP: {}}}\n",
                node.name, p.ip
            )
        })
        .collect();
    apply_both(&a, &b, &objects.join("---\n"));
    let peers: Vec<Peer> = pods
        .iter()
        .map(|(ns, pod, p, _)| Peer {
            ns,
            pod,
            ip: p.ip,
            netns: p.ns.handle(),
        })
        .collect();
    let (xa, yb) = (&pods[0].2, &pods[4].2);
    assert!(xa.ping_until(yb.ip, Duration::from_secs(10)), "{}", a.log());
    let _servers = Servers::start(&peers);

    check("no policy", &peers, |_, _, _, _| true);

    // 1. Default-deny ingress in y.
    let p = netpol("deny", "y", "  podSelector: {}\n  policyTypes: [Ingress]\n");
    apply_both(&a, &b, &p);
    check("default-deny ingress in y", &peers, |_, to, _, _| {
        to.ns != "y"
    });
    delete_both(&a, &b, &p);

    // 2. Default-deny egress in x, except to z on TCP 81 (and DNS, which
    //    the matrix does not probe).
    let p = netpol(
        "egress",
        "x",
        "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  \
         - to: [{namespaceSelector: {matchLabels: {ns: z}}}]\n    ports: [{protocol: TCP, port: 81}]\n  \
         - ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]\n",
    );
    apply_both(&a, &b, &p);
    check(
        "egress from x only to z TCP 81",
        &peers,
        |from, to, pr, po| from.ns != "x" || (to.ns == "z" && pr == Proto::Tcp && po == 81),
    );
    delete_both(&a, &b, &p);

    // 3. y/a accepts only pods b of namespace z (namespaceSelector AND
    //    podSelector in one peer); inferred policyTypes.
    let p = netpol(
        "and",
        "y",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  \
         - from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: b}}}]\n",
    );
    apply_both(&a, &b, &p);
    check("y/a from z/b only (AND)", &peers, |from, to, _, _| {
        !(to.ns == "y" && to.pod == "a") || (from.ns == "z" && from.pod == "b")
    });
    delete_both(&a, &b, &p);

    // 4. z accepts namespace x OR any pod address except y/b's (ipBlock
    //    with except), with matchExpressions selecting pods a and c.
    let p = netpol(
        "or",
        "z",
        &format!(
            "  podSelector: {{matchExpressions: [{{key: pod, operator: In, values: [a, c]}}]}}\n  \
             ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{ns: x}}}}\n    \
             - ipBlock: {{cidr: 198.19.0.0/16, except: [{}/32]}}\n",
            yb.ip
        ),
    );
    apply_both(&a, &b, &p);
    check(
        "z/{a,c} from x OR ipBlock except y/b",
        &peers,
        |from, to, _, _| {
            !(to.ns == "z" && to.pod != "b")
                || from.ns == "x"
                || !(from.ns == "y" && from.pod == "b")
        },
    );
    delete_both(&a, &b, &p);

    // 5. Named port and endPort, and the union of two policies on x/c:
    //    TCP "serve" (80) from anywhere; UDP 81..=90 from namespace y only.
    let p1 = netpol(
        "named",
        "x",
        "  podSelector: {matchLabels: {pod: c}}\n  ingress:\n  - ports: [{protocol: TCP, port: serve}]\n",
    );
    let p2 = netpol(
        "range",
        "x",
        "  podSelector: {matchLabels: {pod: c}}\n  ingress:\n  \
         - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{protocol: UDP, port: 81, endPort: 90}]\n",
    );
    let both = format!("{p1}---\n{p2}");
    apply_both(&a, &b, &both);
    check(
        "x/c: TCP serve OR (UDP 81-90 from y)",
        &peers,
        |from, to, pr, po| {
            !(to.ns == "x" && to.pod == "c")
                || (pr == Proto::Tcp && po == 80)
                || (pr == Proto::Udp && po == 81 && from.ns == "y")
        },
    );
    // Deleting one policy leaves the other.
    delete_both(&a, &b, &p1);
    check(
        "x/c: UDP 81-90 from y (after deleting the named-port policy)",
        &peers,
        |from, to, pr, po| {
            !(to.ns == "x" && to.pod == "c") || (pr == Proto::Udp && po == 81 && from.ns == "y")
        },
    );
    delete_both(&a, &b, &p2);

    // 6. Egress and ingress together: z/b may talk only to y (egress), and y
    //    denies ingress except from z: z/b reaches y; nothing else reaches y.
    let p = format!(
        "{}---\n{}",
        netpol(
            "zb-out",
            "z",
            "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n  egress:\n  \
             - to: [{namespaceSelector: {matchLabels: {ns: y}}}]\n"
        ),
        netpol(
            "y-in",
            "y",
            "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]\n"
        )
    );
    apply_both(&a, &b, &p);
    check(
        "z/b egress to y; y ingress from z",
        &peers,
        |from, to, _, _| {
            let egress = !(from.ns == "z" && from.pod == "b") || to.ns == "y";
            let ingress = to.ns != "y" || from.ns == "z";
            egress && ingress
        },
    );
    delete_both(&a, &b, &p);

    // 7. AdminNetworkPolicy before NetworkPolicy: y denies all ingress
    //    (NetworkPolicy), an admin Allow lets x/a in anyway; an admin Deny
    //    keeps z out of x although no NetworkPolicy isolates x; a Pass at
    //    higher priority hands z/c's TCP to NetworkPolicy (x: open).
    let np = netpol("deny", "y", "  podSelector: {}\n  policyTypes: [Ingress]\n");
    let anp = "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\n\
               metadata: {name: allow-xa-into-y}\nspec:\n  priority: 5\n  \
               subject: {namespaces: {matchLabels: {ns: y}}}\n  ingress:\n  \
               - action: Allow\n    from: [{pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}]\n\
               ---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\n\
               metadata: {name: keep-z-out-of-x}\nspec:\n  priority: 10\n  \
               subject: {namespaces: {matchLabels: {ns: x}}}\n  ingress:\n  \
               - {action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}]}\n\
               ---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\n\
               metadata: {name: pass-zc-tcp}\nspec:\n  priority: 1\n  \
               subject: {namespaces: {matchLabels: {ns: x}}}\n  ingress:\n  \
               - action: Pass\n    from: [{pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}}]\n    \
               ports: [{portRange: {protocol: TCP, start: 1, end: 1024}}]\n";
    let both = format!("{np}---\n{anp}");
    apply_both(&a, &b, &both);
    check(
        "admin allow, deny and pass around NetworkPolicy",
        &peers,
        |from, to, pr, _| {
            let xa = from.ns == "x" && from.pod == "a";
            let zc_tcp = from.ns == "z" && from.pod == "c" && pr == Proto::Tcp;
            match to.ns {
                "y" => xa,
                "x" => from.ns != "z" || zc_tcp,
                _ => true,
            }
        },
    );
    let (ok, out, err) = b.ctl(&[
        "policy", "explain", "--from", "x/xa", "--to", "y/yb", "--port", "80/TCP",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("AdminNetworkPolicy allow-xa-into-y"), "{out}");
    delete_both(&a, &b, &both);

    check("all policies deleted", &peers, |_, _, _, _| true);
}
