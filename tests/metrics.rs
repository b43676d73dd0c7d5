//! sluiced's Prometheus endpoint on two live nodes: scraped from inside each
//! node's namespace before traffic, during a TCP transfer and after it; the
//! text parsed and the counters checked against the traffic sent (pings, the
//! transfer, a ping to a pod address nobody has).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::cluster::{two_peered_nodes, Node, Pod, Underlay};
use common::skip_unless_root;
use sluice_dataplane::sys::netns::in_netns;

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed text-format (0.0.4) scrape.
#[derive(Debug, Default)]
struct Scrape {
    help: BTreeMap<String, String>,
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

fn is_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// `k="v",...}` after the opening brace: the labels and the rest of the line.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let (key, rest) = s.split_once("=\"").ok_or("label without =\"")?;
        if !is_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|e| format!("value {v:?}: {e}")),
    }
}

fn parse(text: &str) -> Result<Scrape, String> {
    let mut out = Scrape::default();
    for (n, line) in text.lines().enumerate() {
        let fail = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), Some(help)) => {
                    out.help.insert(name.to_owned(), help.to_owned());
                }
                (Some("TYPE"), Some(name), Some(t)) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(fail(format!("unknown type {t}")));
                    }
                    if out.types.insert(name.to_owned(), t.to_owned()).is_some() {
                        return Err(fail("family typed twice".into()));
                    }
                }
                _ => {} // other comments
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| fail("no value".into()))?;
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(fail(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(after) => parse_labels(after).map_err(fail)?,
            None => (BTreeMap::new(), &line[name_end..]),
        };
        let mut fields = rest.split_whitespace();
        let value =
            parse_value(fields.next().ok_or_else(|| fail("no value".into()))?).map_err(fail)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|e| fail(format!("timestamp: {e}")))?;
        }
        out.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

impl Scrape {
    /// The value of the one sample of `name` whose labels include `labels`;
    /// 0 when there is none (a pod not attached yet has no series).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let hits: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(hits.len() <= 1, "{name} {labels:?} matches {hits:?}");
        hits.first().map_or(0.0, |s| s.value)
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.samples.iter().any(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The family a sample belongs to (histogram series carry suffixes).
    fn family_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        if self.types.contains_key(name) {
            return Some(name);
        }
        ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suf| name.strip_suffix(suf))
            .find(|f| self.types.get(*f).map(String::as_str) == Some("histogram"))
    }
}

/// Where a node's sluiced serves metrics: the `metrics_listen` of its config.
fn metrics_addr(node: &Node) -> SocketAddr {
    let cfg = node.config();
    let line = cfg
        .lines()
        .find(|l| l.trim_start().starts_with("metrics_listen"))
        .unwrap_or_else(|| panic!("no metrics_listen in\n{cfg}"));
    let v = line.split('"').nth(1).expect("quoted metrics_listen");
    v.parse()
        .unwrap_or_else(|e| panic!("metrics_listen {v:?}: {e}"))
}

/// One HTTP GET from inside the node's namespace: (status line, headers, body).
fn http_get(node: &Node, path: &str) -> (String, String, String) {
    let addr = metrics_addr(node);
    let ns = node.ns.handle();
    let raw = in_netns(&ns, || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .expect("entering the node namespace")
    .unwrap_or_else(|e| panic!("GET {path} from {}: {e}\n{}", node.name, node.log()));
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {raw:?}"));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_owned(), body.to_owned())
}

fn scrape(node: &Node) -> Scrape {
    let (status, headers, body) = http_get(node, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{headers}\n{body}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    parse(&body).unwrap_or_else(|e| panic!("{} metrics do not parse: {e}\n{body}", node.name))
}

/// Scrapes until `ok` holds (workers publish their counters every few
/// milliseconds while busy and before they sleep), at most 5 s.
fn scrape_until(node: &Node, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let t = Instant::now();
    loop {
        let s = scrape(node);
        if ok(&s) {
            return s;
        }
        if t.elapsed() > Duration::from_secs(5) {
            let text = http_get(node, "/metrics").2;
            panic!("{} metrics: {what} not seen in\n{text}", node.name);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `bytes` over TCP from pod `from` to pod `to` (a Rust client and
/// server, each socket made inside its pod's namespace), calling `during`
/// while the transfer runs. Returns the bytes received.
fn tcp_transfer(from: &Pod, to: &Pod, bytes: usize, during: impl FnOnce()) -> usize {
    let listener = in_netns(&to.ns.handle(), || TcpListener::bind((to.ip, 0)))
        .expect("entering the server pod")
        .expect("listening in the server pod");
    let dst = listener.local_addr().expect("server address");
    let server = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(got),
                n => got += n,
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
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let chunk = vec![0x5au8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            client.write_all(&chunk[..n])?;
            left -= n;
        }
        client.shutdown(std::net::Shutdown::Write)
    });
    during();
    sender
        .join()
        .expect("sender thread")
        .expect("sending pod to pod");
    server
        .join()
        .expect("server thread")
        .expect("receiving pod to pod")
}

#[test]
fn metrics_follow_pod_traffic() {
    if skip_unless_root() {
        return;
    }
    let (_u, a, b) = two_peered_nodes("mx", "vxlan", "socket");

    // Before any pod: the families are all there, described and typed.
    let a0 = scrape(&a);
    let b0 = scrape(&b);
    for s in [&a0, &b0] {
        for sample in &s.samples {
            assert!(sample.name.starts_with("sluice_"), "{sample:?}");
            let fam = s
                .family_of(&sample.name)
                .unwrap_or_else(|| panic!("{} has no TYPE", sample.name));
            assert!(s.help.contains_key(fam), "{fam} has no HELP");
        }
        for fam in [
            "sluice_build_info",
            "sluice_uptime_seconds",
            "sluice_port_tx_packets_total",
            "sluice_worker_busy_polls_total",
            "sluice_worker_idle_polls_total",
            "sluice_worker_sleeps_total",
            "sluice_pipeline_vxlan_encap_total",
            "sluice_drops_total",
            "sluice_table_entries",
            "sluice_table_generation",
            "sluice_cni_operations_total",
            "sluice_cni_operation_duration_seconds",
        ] {
            assert!(s.types.contains_key(fam), "{fam} missing");
        }
        assert_eq!(
            s.get(
                "sluice_build_info",
                &[("mode", "vxlan"), ("backend", "socket")]
            ),
            1.0
        );
        assert!(s.has("sluice_port_tx_packets_total", &[("port", "uplink")]));
        assert!(s.has("sluice_worker_busy_polls_total", &[("worker", "0")]));
        assert!(s.get("sluice_table_entries", &[("table", "tunnels")]) >= 1.0);
        assert!(s.get("sluice_table_entries", &[("table", "routes")]) >= 2.0);
        assert!(s.get("sluice_table_generation", &[]) >= 1.0);
    }
    assert_eq!(a0.get("sluice_cni_operations_total", &[("op", "add")]), 0.0);
    assert_eq!(
        a0.get("sluice_table_entries", &[("table", "endpoints")]),
        0.0
    );

    // Anything else is a 404.
    let (status, _, _) = http_get(&a, "/");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");

    let pa = a.add_pod("pa");
    let pb = b.add_pod("pb");
    let pa_l = [("namespace", "default"), ("pod", "pa")];
    let pb_l = [("namespace", "default"), ("pod", "pb")];
    assert!(
        pa.ping_until(pb.ip, Duration::from_secs(10)),
        "pa -> pb\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    let a1 = scrape(&a);
    let b1 = scrape(&b);

    // CNI: the ADDs are counted and timed.
    for (n0, n1, name) in [(&a0, &a1, "A"), (&b0, &b1, "B")] {
        let adds = n1.get("sluice_cni_operations_total", &[("op", "add")])
            - n0.get("sluice_cni_operations_total", &[("op", "add")]);
        assert!(adds >= 1.0, "{name}: {adds} ADDs counted");
        let h = "sluice_cni_operation_duration_seconds";
        assert!(
            n1.get(&format!("{h}_count"), &[("op", "add")]) >= 1.0,
            "{name}: ADD latency not observed"
        );
        assert_eq!(
            n1.get(&format!("{h}_bucket"), &[("op", "add"), ("le", "+Inf")]),
            n1.get(&format!("{h}_count"), &[("op", "add")])
        );
        let mut buckets: Vec<(f64, f64)> = n1
            .samples
            .iter()
            .filter(|s| {
                s.name == format!("{h}_bucket")
                    && s.labels.get("op").map(String::as_str) == Some("add")
            })
            .map(|s| {
                (
                    s.labels["le"].parse::<f64>().unwrap_or(f64::INFINITY),
                    s.value,
                )
            })
            .collect();
        assert!(buckets.len() > 5, "{name}: buckets {buckets:?}");
        buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}: buckets not cumulative {buckets:?}"
        );
        assert_eq!(
            n1.get("sluice_table_entries", &[("table", "endpoints")]),
            1.0
        );
        assert_eq!(n1.get("sluice_attachments", &[("state", "attached")]), 1.0);
    }

    // Pings: counted per pod on both nodes, encapsulated and sent on the uplink.
    const PINGS: u32 = 5;
    assert!(pa.ping(pb.ip, PINGS), "pa -> pb, {PINGS} pings");
    let p = f64::from(PINGS);
    let a2 = scrape_until(&a, "pa's pings", |s| {
        s.get("sluice_pod_tx_packets_total", &pa_l) - a1.get("sluice_pod_tx_packets_total", &pa_l)
            >= p
            && s.get("sluice_pod_rx_packets_total", &pa_l)
                - a1.get("sluice_pod_rx_packets_total", &pa_l)
                >= p
            && s.get("sluice_pipeline_vxlan_encap_total", &[])
                - a1.get("sluice_pipeline_vxlan_encap_total", &[])
                >= p
            && s.get("sluice_port_tx_packets_total", &[("port", "uplink")])
                - a1.get("sluice_port_tx_packets_total", &[("port", "uplink")])
                >= p
    });
    scrape_until(&b, "pb's echo replies", |s| {
        s.get("sluice_pod_rx_packets_total", &pb_l) - b1.get("sluice_pod_rx_packets_total", &pb_l)
            >= p
            && s.get("sluice_pod_tx_packets_total", &pb_l)
                - b1.get("sluice_pod_tx_packets_total", &pb_l)
                >= p
            && s.get("sluice_pipeline_vxlan_decap_total", &[])
                - b1.get("sluice_pipeline_vxlan_decap_total", &[])
                >= p
    });
    // Byte counters move with the packets (84-byte ICMP echoes at least).
    assert!(
        a2.get("sluice_pod_tx_bytes_total", &pa_l) - a1.get("sluice_pod_tx_bytes_total", &pa_l)
            >= 84.0 * p
    );
    assert!(
        a2.get("sluice_port_tx_bytes_total", &[("port", "uplink")])
            > a1.get("sluice_port_tx_bytes_total", &[("port", "uplink")])
    );

    // A provoked drop: a pod address on A that no pod has.
    let nobody = Ipv4Addr::new(198, 19, 1, 250);
    assert_ne!(nobody, pa.ip);
    assert!(!pa.ping(nobody, 2), "{nobody} answered");
    scrape_until(&a, "a no_endpoint drop", |s| {
        s.get("sluice_drops_total", &[("reason", "no_endpoint")])
            - a2.get("sluice_drops_total", &[("reason", "no_endpoint")])
            >= 2.0
    });

    // TCP: 8 MiB from pa to pb, scraped while it runs and after.
    const BYTES: usize = 8 << 20;
    let before = scrape(&a);
    let got = tcp_transfer(&pa, &pb, BYTES, || {
        let during = scrape(&a);
        assert!(
            during.get("sluice_pod_tx_bytes_total", &pa_l)
                >= before.get("sluice_pod_tx_bytes_total", &pa_l)
        );
    });
    assert_eq!(got, BYTES, "bytes received by pb");
    let b_before = b1;
    let after = scrape_until(&a, "the transfer on A", |s| {
        s.get("sluice_pod_tx_bytes_total", &pa_l) - before.get("sluice_pod_tx_bytes_total", &pa_l)
            >= BYTES as f64
    });
    assert!(
        after.get("sluice_port_tx_bytes_total", &[("port", "uplink")])
            - before.get("sluice_port_tx_bytes_total", &[("port", "uplink")])
            >= BYTES as f64,
        "uplink tx bytes"
    );
    scrape_until(&b, "the transfer on B", |s| {
        s.get("sluice_pod_rx_bytes_total", &pb_l) - b_before.get("sluice_pod_rx_bytes_total", &pb_l)
            >= BYTES as f64
    });
    // The workers' loops were busy and uptime moves on.
    assert!(after.get("sluice_worker_busy_polls_total", &[("worker", "0")]) > 0.0);
    assert!(after.get("sluice_uptime_seconds", &[]) > 0.0);
    // Pods no policy isolates: their packets count as allowed egress. A TCP
    // superframe (up to 64 KiB) is one packet to the policy stages.
    assert!(
        after.get(
            "sluice_policy_verdicts_total",
            &[("direction", "egress"), ("verdict", "allowed")]
        ) >= BYTES as f64 / 65536.0,
        "egress verdicts of the transfer"
    );

    // Policy and conntrack: pa may send only to pb. Pings to pb are allowed
    // and tracked; pings elsewhere are denied egress.
    let policy = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: default}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: pa, namespace: default, uid: uid-pa}}\n\
         spec: {{nodeName: {}, containers: [{{name: c, image: none}}]}}\nstatus: {{podIP: {}}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: only-pb, namespace: default}}\n\
         spec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: {}/32}}}}]\n",
        a.name, pa.ip, pb.ip
    );
    let (ok, out) = a.apply(&policy);
    assert!(ok, "{out}");
    let p0 = scrape(&a);
    let denied = [("direction", "egress"), ("verdict", "denied")];
    assert!(pa.ping(pb.ip, 2), "pa -> pb under only-pb");
    assert!(!pa.ping(nobody, 2), "pa -> {nobody} under only-pb");
    scrape_until(&a, "policy and conntrack counters", |s| {
        s.get("sluice_policy_verdicts_total", &denied)
            - p0.get("sluice_policy_verdicts_total", &denied)
            >= 2.0
            && s.get("sluice_drops_total", &[("reason", "policy_denied_egress")])
                - p0.get("sluice_drops_total", &[("reason", "policy_denied_egress")])
                >= 2.0
            && s.get("sluice_conntrack_inserts_total", &[])
                > p0.get("sluice_conntrack_inserts_total", &[])
            && s.get("sluice_conntrack_entries", &[]) >= 1.0
            && s.get("sluice_policy_new_flows_total", &[])
                > p0.get("sluice_policy_new_flows_total", &[])
    });
}

#[test]
fn parser_reads_the_text_format() {
    let s = parse(
        "# HELP x_total A counter.\n# TYPE x_total counter\nx_total{a=\"q\\\"\\\\\\n\",b=\"\"} 3 1700000000\n\
         # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n",
    )
    .unwrap();
    assert_eq!(s.samples[0].labels["a"], "q\"\\\n");
    assert_eq!(s.get("x_total", &[("b", "")]), 3.0);
    assert_eq!(s.family_of("h_bucket"), Some("h"));
    assert!(parse("x{a=\"1} 2\n").is_err());
    assert!(parse("1x 2\n").is_err());
    assert!(parse("x two\n").is_err());
}

/// Stops or resumes a process (the test's stand-in for a worker too busy to
/// read), by `kill -STOP` / `kill -CONT`.
fn signal(pid: u32, sig: &str) {
    let out = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .output()
        .expect("running kill");
    assert!(out.status.success(), "kill {sig} {pid}: {out:?}");
}

/// A pod that sends while nothing reads its TAP (sluiced stopped) loses what
/// the TAP's queue cannot hold. Its port counts those frames, in `sluicectl
/// stats` and as `sluice_pod_tx_kernel_drops_total`, exactly as the pod's
/// `eth0` counts them; a pod that sent nothing counts none.
#[test]
fn frames_a_pods_queue_could_not_hold_are_counted() {
    if skip_unless_root() {
        return;
    }
    let u = Underlay::new("kd");
    let mut a = Node::new(&u, "kd", 1, "vxlan", "socket");
    a.extra_config += "tap_queue_len = 64\n";
    a.start();
    let pa = a.add_pod("pa");
    let pb = a.add_pod("pb");
    // Resolves the gateway's MAC in pa, so that pa's datagrams go straight
    // to its TAP below.
    assert!(pa.ping(pb.ip, 1), "pa -> pb");

    let pid = a.pid().expect("sluiced running");
    signal(pid, "-STOP");
    let flood = format!(
        "for i in $(seq 300); do echo x > /dev/udp/{}/9; done",
        pb.ip
    );
    let sent = pa.ns.exec("bash", &["-c", &flood]);
    signal(pid, "-CONT");
    assert!(sent.status.success(), "{sent:?}");
    let dropped = pa.ns.link_counter("eth0", "tx_dropped");
    assert!(dropped >= 200, "pa's kernel dropped {dropped} of 300");
    assert_eq!(pb.ns.link_counter("eth0", "tx_dropped"), 0);

    let pa_l = [("namespace", "default"), ("pod", "pa")];
    let pb_l = [("namespace", "default"), ("pod", "pb")];
    let s = scrape_until(&a, "pa's queue drops", |s| {
        s.get("sluice_pod_tx_kernel_drops_total", &pa_l) >= dropped as f64
    });
    assert_eq!(
        s.get("sluice_pod_tx_kernel_drops_total", &pa_l),
        dropped as f64
    );
    assert!(s.has("sluice_pod_tx_kernel_drops_total", &pb_l));
    assert_eq!(s.get("sluice_pod_tx_kernel_drops_total", &pb_l), 0.0);
    let ports = a.ctl_json("stats")["ports"].clone();
    let pods: Vec<u64> = ports
        .as_array()
        .expect("ports")
        .iter()
        .filter(|p| p["port"].as_str().is_some_and(|id| id.starts_with("pod")))
        .map(|p| p["rx_kernel_drops"].as_u64().expect("rx_kernel_drops"))
        .collect();
    let mut sorted = pods.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [0, dropped], "pod ports: {ports}");
}
