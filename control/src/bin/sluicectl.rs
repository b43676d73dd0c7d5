//! sluicectl: the operator's command line for a node's sluiced.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_control::api::{Answer, Client, ClientError, Request, CONNECT_TIMEOUT, DEFAULT_SOCKET};

#[derive(Parser, Debug)]
#[command(
    name = "sluicectl",
    version,
    about = "Operate a node's Sluice daemon (sluiced)"
)]
struct Cli {
    /// sluiced's API socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET, env = "SLUICE_SOCKET")]
    socket: PathBuf,
    /// Print raw JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Node, mode, backend, workers, pods, peers, uptime, last error.
    Status,
    /// Local pods and their addresses.
    Endpoints,
    /// The routing table.
    Routes,
    /// Known peer nodes.
    Nodes,
    /// Cluster membership (etcd datastore).
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Per-port and per-worker counters, drops by reason.
    Stats,
    /// Apply Kubernetes objects (Node, Namespace, Pod, NetworkPolicy) from YAML or JSON.
    Apply {
        /// File to read, or - for standard input.
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// Delete Kubernetes objects named in YAML or JSON.
    Delete {
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// A stream of drops and policy denials, one line each (time, pod,
    /// direction, 5-tuple, verdict, reason, policies).
    Monitor {
        /// Stop after this many events.
        #[arg(long, default_value_t = 1000)]
        count: u32,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u32,
    },
    /// Follow the next packets matching a filter through the stages: the
    /// decision of each stage (route, policy verdict and rule, encap header,
    /// drop reason).
    Trace {
        /// Packets to trace.
        #[arg(long, default_value_t = 10)]
        count: u32,
        /// Which packets, e.g. "src 198.19.0.5 and tcp dport 80" (words: src,
        /// dst, host ADDR[/LEN]; port, sport, dport N; proto or tcp, udp, icmp, sctp).
        #[arg(long, default_value = "")]
        filter: String,
        /// Only packets received on this port: uplink, host or NAMESPACE/POD.
        #[arg(long)]
        port: Option<String>,
        /// Seconds to wait at most.
        #[arg(long, default_value_t = 10)]
        timeout: u32,
    },
    /// Capture frames of a port into a pcap file (tcpdump, tshark, Wireshark).
    Capture {
        /// uplink, host, or a pod as NAMESPACE/POD.
        #[arg(long)]
        port: String,
        /// File to write.
        #[arg(short = 'w')]
        write: PathBuf,
        /// Frames to capture.
        #[arg(long, default_value_t = 100)]
        count: u32,
        /// Seconds to wait at most.
        #[arg(long, default_value_t = 10)]
        timeout: u32,
    },
    /// NetworkPolicy questions.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// Remove a node that is gone for good: its record, endpoints and pod
    /// blocks (kept reserved after its lease expired) leave the datastore.
    Remove {
        /// The node's name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Which policies select each side, the verdict and the deciding rule.
    Explain {
        /// Source: NAMESPACE/POD or an IPv4 address.
        #[arg(long)]
        from: String,
        /// Destination: NAMESPACE/POD or an IPv4 address.
        #[arg(long)]
        to: String,
        /// PORT/PROTOCOL, e.g. 80/TCP (protocol defaults to TCP).
        #[arg(long)]
        port: String,
    },
}

fn read_input(f: &str) -> Result<String, String> {
    if f == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("reading standard input: {e}"))?;
        Ok(s)
    } else {
        std::fs::read_to_string(f).map_err(|e| format!("reading {f}: {e}"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Monitor { count, timeout } = &cli.cmd {
        return monitor(&cli, *count, *timeout);
    }
    let req = match &cli.cmd {
        Cmd::Status => Request::Status,
        Cmd::Endpoints => Request::Endpoints,
        Cmd::Routes => Request::Routes,
        Cmd::Nodes => Request::Nodes,
        Cmd::Node {
            cmd: NodeCmd::Remove { name },
        } => Request::NodeRemove { name: name.clone() },
        Cmd::Stats => Request::Stats,
        Cmd::Monitor { .. } => unreachable!("handled above"),
        Cmd::Trace {
            count,
            filter,
            port,
            timeout,
        } => Request::Trace {
            count: *count,
            filter: filter.clone(),
            port: port.clone(),
            timeout_ms: timeout.saturating_mul(1000),
        },
        Cmd::Capture {
            port,
            count,
            timeout,
            ..
        } => Request::Capture {
            port: port.clone(),
            count: *count,
            timeout_ms: timeout.saturating_mul(1000),
        },
        Cmd::Policy {
            cmd: PolicyCmd::Explain { from, to, port },
        } => {
            let (p, proto) = port.split_once('/').unwrap_or((port.as_str(), "TCP"));
            let Ok(p) = p.parse::<u16>() else {
                eprintln!("sluicectl: --port {port:?}: expected PORT/PROTOCOL, e.g. 80/TCP");
                return ExitCode::from(2);
            };
            Request::PolicyExplain {
                from: from.clone(),
                to: to.clone(),
                port: p,
                protocol: proto.to_owned(),
            }
        }
        Cmd::Apply { file } | Cmd::Delete { file } => {
            let documents = match read_input(file) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("sluicectl: {e}");
                    return ExitCode::from(2);
                }
            };
            if matches!(cli.cmd, Cmd::Apply { .. }) {
                Request::Apply { documents }
            } else {
                Request::Delete { documents }
            }
        }
    };
    let mut client = match Client::connect(&cli.socket, CONNECT_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return fail_connect(&cli.socket, &e),
    };
    match client.call(&req) {
        Ok(resp) => match resp.into_result() {
            Ok(answer) => {
                print_answer(&cli, answer);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluicectl: sluiced refused: {} (code {})", e.msg, e.code);
                if let Some(d) = e.details {
                    eprintln!("  {d}");
                }
                ExitCode::from(1)
            }
        },
        Err(e) => fail_connect(&cli.socket, &e),
    }
}

fn fail_connect(socket: &std::path::Path, e: &ClientError) -> ExitCode {
    if e.is_unreachable() {
        eprintln!(
            "sluicectl: sluiced is not running (nothing answers on {}): start it, or pass --socket",
            socket.display()
        );
    } else {
        eprintln!("sluicectl: talking to sluiced on {}: {e}", socket.display());
    }
    ExitCode::from(3)
}

fn print_answer(cli: &Cli, answer: Answer) {
    let v = match answer {
        Answer::Json(v) => v,
        Answer::Done => {
            println!("ok");
            return;
        }
        other => serde_json::to_value(&other).unwrap_or_default(),
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    match &cli.cmd {
        Cmd::Trace { .. } => print_trace(&v),
        Cmd::Capture { write, .. } => match write_pcap(write, &v) {
            Ok(n) => println!("{n} frames written to {}", write.display()),
            Err(e) => eprintln!("sluicectl: writing {}: {e}", write.display()),
        },
        Cmd::Status => {
            if let Some(o) = v.as_object() {
                for (k, val) in o {
                    println!("{k:<18} {}", scalar(val));
                }
            }
        }
        Cmd::Endpoints => table(
            &v,
            &[
                "namespace",
                "pod",
                "ip",
                "mac",
                "ifname",
                "tap",
                "port",
                "container_id",
            ],
        ),
        Cmd::Routes => table(&v, &["prefix", "next_hop", "via"]),
        Cmd::Nodes => table(
            &v,
            &[
                "name",
                "node_ip",
                "pod_cidr",
                "mode",
                "vtep_mac",
                "next_hop_mac",
                "source",
            ],
        ),
        Cmd::Stats => {
            println!("COUNTERS");
            if let Some(o) = v["counters"].as_object() {
                for (k, val) in o {
                    println!("  {k:<18} {}", scalar(val));
                }
            }
            if let Some(o) = v["policy"].as_object() {
                println!("POLICY");
                for (k, val) in o {
                    println!("  {k:<18} {}", scalar(val));
                }
            }
            println!("DROPS");
            match v["drops"].as_object() {
                Some(o) if !o.is_empty() => {
                    for (k, val) in o {
                        println!("  {k:<24} {}", scalar(val));
                    }
                }
                _ => println!("  (none)"),
            }
            println!("PORTS");
            table(
                &v["ports"],
                &[
                    "port",
                    "name",
                    "worker",
                    "rx_packets",
                    "rx_bytes",
                    "tx_packets",
                    "tx_bytes",
                    "tx_dropped",
                    "rx_dropped",
                    "rx_kernel_drops",
                    "rx_gso",
                    "tx_gro",
                ],
            );
            println!("WORKERS");
            table(
                &v["workers"],
                &[
                    "worker",
                    "nice",
                    "busy_polls",
                    "idle_polls",
                    "sleeps",
                    "rx_packets",
                    "drops",
                    "last_error",
                ],
            );
        }
        Cmd::Policy { .. } => match v["text"].as_str() {
            Some(t) => print!("{t}"),
            None => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        },
        _ => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(v: &serde_json::Value, cols: &[&str]) {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| cols.iter().map(|c| scalar(&r[*c])).collect())
                .collect()
        })
        .unwrap_or_default();
    let mut w: Vec<usize> = cols.iter().map(|c| c.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(cols.iter().map(|c| c.to_uppercase()).collect());
    for r in rows {
        line(r);
    }
}

/// Writes the frames of a capture answer as a pcap file.
fn write_pcap(path: &std::path::Path, v: &serde_json::Value) -> Result<usize, String> {
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut w = sluice_dataplane::pcap::Writer::new(std::io::BufWriter::new(file))
        .map_err(|e| e.to_string())?;
    let frames = v["frames"].as_array().cloned().unwrap_or_default();
    for f in &frames {
        let hex = f["hex"].as_str().unwrap_or("");
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
            .collect();
        let ns = f["unix_ns"].as_u64().unwrap_or(0);
        w.write_frame(
            (ns / 1_000_000_000) as u32,
            ((ns % 1_000_000_000) / 1000) as u32,
            &bytes,
        )
        .map_err(|e| e.to_string())?;
    }
    w.into_inner().map_err(|e| e.to_string())?;
    Ok(frames.len())
}

/// One block per traced packet: where it came from, then one line per stage.
fn print_trace(v: &serde_json::Value) {
    let packets = v["packets"].as_array().cloned().unwrap_or_default();
    if packets.is_empty() {
        println!("no matching packet seen");
        return;
    }
    for (i, p) in packets.iter().enumerate() {
        let secs = p["unix_ns"].as_u64().unwrap_or(0) as f64 / 1e9;
        println!(
            "packet {} at {secs:.6} on worker {}, from port {} ({} bytes)",
            i + 1,
            scalar(&p["worker"]),
            scalar(&p["in_port"]),
            scalar(&p["len"]),
        );
        println!("  {}", scalar(&p["summary"]));
        for s in p["steps"].as_array().cloned().unwrap_or_default() {
            println!(
                "  {:<15} -> {:<15} {}",
                scalar(&s["stage"]),
                scalar(&s["next"]),
                scalar(&s["detail"])
            );
        }
        match p["out_port"].as_str() {
            Some(port) => println!("  sent on port {port}"),
            None => println!("  dropped"),
        }
        println!();
    }
}

/// Prints drops as they come: one short request per second, so lines appear
/// within a second of the drop.
fn monitor(cli: &Cli, count: u32, timeout: u32) -> ExitCode {
    let mut client = match Client::connect(&cli.socket, CONNECT_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return fail_connect(&cli.socket, &e),
    };
    let start = std::time::Instant::now();
    let mut seen = 0u32;
    while seen < count && start.elapsed().as_secs() < u64::from(timeout) {
        let req = Request::Monitor {
            count: count - seen,
            timeout_ms: 1000,
        };
        let answer = match client.call(&req) {
            Ok(r) => match r.into_result() {
                Ok(Answer::Json(v)) => v,
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("sluicectl: sluiced refused: {} (code {})", e.msg, e.code);
                    return ExitCode::from(1);
                }
            },
            Err(e) => return fail_connect(&cli.socket, &e),
        };
        for e in answer["events"].as_array().cloned().unwrap_or_default() {
            seen += 1;
            if cli.json {
                println!("{e}");
                continue;
            }
            let secs = e["unix_ns"].as_u64().unwrap_or(0) as f64 / 1e9;
            let policies: Vec<String> = e["policies"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            println!(
                "{secs:.6} {} {} {} {} {} {}",
                scalar(&e["pod"]),
                scalar(&e["direction"]),
                scalar(&e["flow"]),
                scalar(&e["verdict"]),
                scalar(&e["reason"]),
                if policies.is_empty() {
                    "-".to_owned()
                } else {
                    policies.join(",")
                }
            );
        }
    }
    ExitCode::SUCCESS
}
