//! A simulated cluster for root integration tests: an underlay switch, node
//! namespaces each running sluiced, and pods attached through the real CNI
//! binary exactly as a runtime calls it (environment plus stdin).

#![allow(dead_code)]

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{unique, Netns};

/// Where the workspace's binaries are: next to the test executable's `deps/`,
/// or in `$SLUICE_BIN_DIR` (benchmark scripts point it at the release build).
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which scripts/test does)",
        p.display()
    );
    p
}

/// An underlay switch: a bridge in a namespace of its own.
pub struct Underlay {
    pub ns: Netns,
}

impl Underlay {
    pub fn new(tag: &str) -> Underlay {
        let ns = Netns::new(&unique(&format!("sl{tag}sw")));
        ns.exec_ok("ip", &["link", "add", "br0", "type", "bridge"]);
        ns.exec_ok("ip", &["link", "set", "br0", "up"]);
        Underlay { ns }
    }
}

/// Two nodes (indices 1 and 2) on a new underlay, each listing the other as
/// a peer, both running. The underlay is returned first so that it outlives
/// the nodes when the tuple is dropped.
pub fn two_peered_nodes(tag: &str, mode: &str, backend: &str) -> (Underlay, Node, Node) {
    two_peered_nodes_with(tag, mode, backend, "")
}

/// [`two_peered_nodes`] with `extra` (TOML lines) added to both nodes' config.
pub fn two_peered_nodes_with(
    tag: &str,
    mode: &str,
    backend: &str,
    extra: &str,
) -> (Underlay, Node, Node) {
    let u = Underlay::new(tag);
    let mut a = Node::new(&u, tag, 1, mode, backend);
    let mut b = Node::new(&u, tag, 2, mode, backend);
    a.extra_config = extra.to_owned();
    b.extra_config = extra.to_owned();
    a.peers.push((b.name.clone(), b.ip, b.pod_cidr.clone()));
    b.peers.push((a.name.clone(), a.ip, a.pod_cidr.clone()));
    a.start();
    b.start();
    (u, a, b)
}

/// One node: a namespace with `ul0` on the underlay and sluiced running.
pub struct Node {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub pod_cidr: String,
    pub dir: tempfile::TempDir,
    pub mode: String,
    pub backend: String,
    pub peers: Vec<(String, Ipv4Addr, String)>,
    /// Appended to the generated sluiced.toml.
    pub extra_config: String,
    /// Extra command-line arguments of sluiced (e.g. `--recover`).
    pub extra_args: Vec<String>,
    /// A command sluiced runs under, inside the namespace (e.g. `setpriv`
    /// with its arguments).
    pub wrapper: Vec<String>,
    daemon: Option<std::process::Child>,
}

impl Node {
    /// Node `index` (1-based): 198.18.0.index on the underlay, pods in
    /// 198.19.index.0/24.
    pub fn new(u: &Underlay, tag: &str, index: u8, mode: &str, backend: &str) -> Node {
        let ns = Netns::new(&unique(&format!("sl{tag}n{index}")));
        let ip = Ipv4Addr::new(198, 18, 0, index);
        let host_end = format!("u{index}{}", &ns.name()[ns.name().len() - 6..]);
        ns.exec_ok(
            "ip",
            &[
                "link", "add", "ul0", "type", "veth", "peer", "name", &host_end,
            ],
        );
        ns.exec_ok("ip", &["link", "set", &host_end, "netns", u.ns.name()]);
        u.ns.exec_ok("ip", &["link", "set", &host_end, "master", "br0", "up"]);
        ns.exec_ok("ip", &["addr", "add", &format!("{ip}/24"), "dev", "ul0"]);
        ns.exec_ok(
            "ip",
            &[
                "link",
                "set",
                "ul0",
                "address",
                &format!("02:00:c6:12:00:{index:02x}"),
            ],
        );
        ns.exec_ok("ip", &["link", "set", "ul0", "up"]);
        Node {
            name: format!("node{index}"),
            ns,
            ip,
            pod_cidr: format!("198.19.{index}.0/24"),
            dir: tempfile::tempdir().expect("temp dir"),
            mode: mode.into(),
            backend: backend.into(),
            peers: Vec::new(),
            extra_config: String::new(),
            extra_args: Vec::new(),
            wrapper: Vec::new(),
            daemon: None,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sluiced.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sluiced.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sluiced.log")
    }

    /// The node's sluiced.toml (no `pod_cidr` line when `pod_cidr` is empty:
    /// etcd nodes claim blocks instead).
    pub fn config(&self) -> String {
        let pod_cidr = if self.pod_cidr.is_empty() {
            String::new()
        } else {
            format!("pod_cidr = \"{}\"\n", self.pod_cidr)
        };
        let mut c = format!(
            "node_name = \"{}\"\nmode = \"{}\"\nuplink = \"ul0\"\n{}cluster_cidr = \"198.19.0.0/16\"\n\
             uplink_backend = \"{}\"\nstate_dir = \"{}\"\napi_socket = \"{}\"\nmetrics_listen = \"127.0.0.1:{}\"\nworkers = 1\n",
            self.name,
            self.mode,
            pod_cidr,
            self.backend,
            self.dir.path().join("state").display(),
            self.socket().display(),
            // Loopback is the node namespace's own: a fixed port per node
            // index, for tests that scrape (tests/metrics.rs).
            19100 + u16::from(self.ip.octets()[3]),
        );
        // Top-level keys go before the first table.
        c += &self.extra_config;
        for (name, ip, cidr) in &self.peers {
            c += &format!(
                "\n[[peers]]\nname = \"{name}\"\nnode_ip = \"{ip}\"\npod_cidr = \"{cidr}\"\n"
            );
        }
        c
    }

    /// Starts sluiced inside the node and waits until its API answers.
    pub fn start(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Starts sluiced without waiting.
    pub fn spawn(&mut self) {
        std::fs::write(self.config_path(), self.config()).expect("writing config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns.name()])
            .args(&self.wrapper)
            .arg(bin("sluiced"))
            .arg("--config")
            .arg(self.config_path())
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting sluiced");
        self.daemon = Some(child);
    }

    /// Waits (at most `timeout`) for a spawned sluiced to exit by itself, as
    /// one that refuses to start does; `None` if it is still running (it is
    /// then left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if let Some(Ok(Some(st))) = self.daemon.as_mut().map(|c| c.try_wait()) {
                self.daemon = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }

    /// The nice value of each worker thread (`sluice-w*`), as the kernel has
    /// it (`/proc/PID/task/TID/stat`, field 19).
    pub fn worker_nices(&self) -> Vec<i64> {
        let pid = self.pid().expect("sluiced runs");
        let mut nices = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
            let dir = task.expect("task").path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if !comm.starts_with("sluice-w") {
                continue;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).expect("stat");
            // Fields after the parenthesised name: state is field 3, nice 19.
            let rest = &stat[stat.rfind(')').expect("comm in stat") + 2..];
            let nice = rest.split(' ').nth(16).expect("field 19");
            nices.push(nice.parse().expect("nice is a number"));
        }
        nices
    }

    pub fn wait_ready(&mut self) {
        let t = Instant::now();
        loop {
            if self.ctl(&["status"]).0 {
                return;
            }
            if let Some(Ok(Some(st))) = self.daemon.as_mut().map(|c| c.try_wait()) {
                panic!("sluiced on {} exited ({st}):\n{}", self.name, self.log());
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "sluiced on {} not ready:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.daemon.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// Runs sluicectl against this node: (success, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin("sluicectl"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("running sluicectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn ctl_json(&self, what: &str) -> serde_json::Value {
        let (ok, out, err) = self.ctl(&["--json", what]);
        assert!(ok, "sluicectl {what}: {err}");
        serde_json::from_str(&out).expect("sluicectl JSON")
    }

    pub fn apply(&self, yaml: &str) -> (bool, String) {
        let p = self.dir.path().join(format!("apply-{}.yaml", unique("")));
        std::fs::write(&p, yaml).expect("write yaml");
        let (ok, out, err) = self.ctl(&["apply", "-f", p.to_str().unwrap()]);
        (ok, out + &err)
    }

    /// The CNI network configuration this node's plugin is called with.
    pub fn cni_config(&self, version: &str) -> String {
        format!(
            r#"{{"cniVersion":"{version}","name":"sluice","type":"sluice","socket":"{}"}}"#,
            self.socket().display()
        )
    }

    /// Runs the CNI plugin as a runtime does.
    pub fn cni(
        &self,
        command: &str,
        container_id: &str,
        netns: &str,
        ifname: &str,
        args: &str,
        stdin: &str,
    ) -> CniOutcome {
        let mut child = Command::new(bin("sluice"))
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", "/opt/cni/bin:/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running the CNI plugin");
        // A plugin that needs no stdin (VERSION, an unknown command) may exit
        // before reading it.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        let out = child.wait_with_output().unwrap();
        CniOutcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Creates a pod namespace and attaches it (ADD); panics on failure.
    pub fn add_pod(&self, name: &str) -> Pod {
        self.add_pod_in("default", name)
    }

    /// [`Node::add_pod`] for a pod in Kubernetes namespace `k8s_ns`.
    pub fn add_pod_in(&self, k8s_ns: &str, name: &str) -> Pod {
        let ns = Netns::new(&unique(&format!(
            "{}p",
            &self.ns.name()[..self.ns.name().len().min(8)]
        )));
        let container_id = unique(&format!("ctr{name}"));
        let netns = format!("/var/run/netns/{}", ns.name());
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={k8s_ns};K8S_POD_NAME={name};K8S_POD_UID=uid-{name}"
        );
        let out = self.cni(
            "ADD",
            &container_id,
            &netns,
            "eth0",
            &args,
            &self.cni_config("1.1.0"),
        );
        assert_eq!(
            out.code,
            0,
            "ADD {name} on {}: {}{}\n{}",
            self.name,
            out.stdout,
            out.stderr,
            self.log()
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("ADD result JSON");
        let addr = v["ips"][0]["address"].as_str().expect("address").to_owned();
        let ip: Ipv4Addr = addr.split('/').next().unwrap().parse().unwrap();
        Pod {
            name: name.into(),
            ns,
            ip,
            container_id,
            netns,
            result: v,
        }
    }

    pub fn del_pod(&self, pod: &Pod) -> CniOutcome {
        self.cni(
            "DEL",
            &pod.container_id,
            &pod.netns,
            "eth0",
            "IgnoreUnknown=1",
            &self.cni_config("1.1.0"),
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct CniOutcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// An attached pod.
pub struct Pod {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub netns: String,
    pub result: serde_json::Value,
}

impl Pod {
    /// Waits (at most 5 s) until something in the pod listens on `port`
    /// (`ss` socket filter flags: "-ltn" for TCP, "-lun" for UDP), so a test
    /// never races a server's start on a loaded machine.
    pub fn wait_listening(&self, flags: &str, port: u16) {
        let t = Instant::now();
        let want = format!(":{port} ");
        while t.elapsed() < Duration::from_secs(5) {
            let out = self.ns.exec("ss", &[flags]);
            if String::from_utf8_lossy(&out.stdout).contains(&want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn ping(&self, dst: Ipv4Addr, count: u32) -> bool {
        let out = self.ns.exec(
            "ping",
            &[
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "2",
                &dst.to_string(),
            ],
        );
        out.status.success()
    }

    /// Pings until one answer arrives or `timeout` passes.
    pub fn ping_until(&self, dst: Ipv4Addr, timeout: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self
                .ns
                .exec("ping", &["-c", "1", "-W", "1", &dst.to_string()])
                .status
                .success()
            {
                return true;
            }
        }
        false
    }

    /// Asserts that this pod, on node `here`, reaches `to`, on node `there`,
    /// within 10 s (a first packet may wait for a table or a neighbour),
    /// with both nodes' logs in the message if it does not.
    pub fn assert_reaches(&self, to: &Pod, here: &Node, there: &Node) {
        assert!(
            self.ping_until(to.ip, Duration::from_secs(10)),
            "{} -> {}\n{}:\n{}\n{}:\n{}",
            self.name,
            to.name,
            here.name,
            here.log(),
            there.name,
            there.log()
        );
    }

    /// A TCP transfer to `dst` where an iperf3 server runs: bytes received.
    pub fn tcp_transfer(&self, server: &Pod, seconds: u32) -> f64 {
        let mut srv = server
            .ns
            .spawn("iperf3", &["-s", "-1", "-B", &server.ip.to_string()]);
        server.wait_listening("-ltn", 5201);
        let out = self.ns.exec(
            "iperf3",
            &[
                "-c",
                &server.ip.to_string(),
                "-t",
                &seconds.to_string(),
                "-J",
                "--connect-timeout",
                "3000",
            ],
        );
        let _ = srv.wait_timeout(Duration::from_secs(2));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0)
    }
}

// Helpers for the CNI tests (tests/cni.rs, tests/cni_chain.rs).

/// Runs the CNI plugin with exactly `env` as its environment (nothing
/// inherited) and `stdin`, as a runtime does; for invocations that leave a
/// variable out or set one the wrong way.
pub fn cni_exec(env: &[(&str, &str)], stdin: &str) -> CniOutcome {
    let mut child = Command::new(bin("sluice"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the CNI plugin");
    // Commands such as VERSION exit without reading stdin: a broken pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    CniOutcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl CniOutcome {
    /// The error object a failed invocation printed: `{cniVersion, code, msg, details?}`.
    pub fn error(&self) -> serde_json::Value {
        assert_ne!(
            self.code, 0,
            "expected a failure, got success: {}",
            self.stdout
        );
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "error output is not JSON ({e}): {:?} / {:?}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Is `name` a pod TAP's host-side name (`sl` + 12 hex digits, see
/// control/src/daemon/pod.rs)?
pub fn is_pod_tap_name(name: &str) -> bool {
    name.len() == 14 && name.starts_with("sl") && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The names of the links in a namespace (`ip -j link`).
pub fn links_in(ns: &Netns) -> Vec<String> {
    let out = ns.exec_ok("ip", &["-j", "link", "show"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j link JSON");
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// What a node holds, to compare before and after an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHoldings {
    /// `addresses_free` of `sluicectl --json status`.
    pub addresses_free: u64,
    /// (container id, ifname) of every record in `sluicectl --json endpoints`.
    pub endpoints: Vec<(String, String)>,
    /// Pod TAP names left in the node's namespace (a TAP lives there only between
    /// its creation and its move into the pod).
    pub taps: Vec<String>,
}

impl Node {
    /// `sluicectl --json status`.
    pub fn status_json(&self) -> serde_json::Value {
        self.ctl_json("status")
    }

    pub fn addresses_free(&self) -> u64 {
        let st = self.status_json();
        st["addresses_free"]
            .as_u64()
            .unwrap_or_else(|| panic!("addresses_free in {st}"))
    }

    /// The pod MTU this node configures (`pod_mtu` of the status).
    pub fn pod_mtu(&self) -> u64 {
        let st = self.status_json();
        st["pod_mtu"]
            .as_u64()
            .unwrap_or_else(|| panic!("pod_mtu in {st}"))
    }

    /// The records of `sluicectl --json endpoints`.
    pub fn endpoints(&self) -> Vec<serde_json::Value> {
        self.ctl_json("endpoints")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn holdings(&self) -> NodeHoldings {
        let mut endpoints: Vec<(String, String)> = self
            .endpoints()
            .iter()
            .map(|e| {
                (
                    e["container_id"].as_str().unwrap_or_default().to_owned(),
                    e["ifname"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        endpoints.sort();
        let mut taps: Vec<String> = links_in(&self.ns)
            .into_iter()
            .filter(|n| is_pod_tap_name(n))
            .collect();
        taps.sort();
        NodeHoldings {
            addresses_free: self.addresses_free(),
            endpoints,
            taps,
        }
    }

    /// Runs the plugin with a full runtime environment for `command` on
    /// (`container_id`, `ifname`) in the namespace at `netns`, with this
    /// node's configuration in `version`.
    pub fn cni_cmd(
        &self,
        command: &str,
        container_id: &str,
        netns: &str,
        ifname: &str,
        version: &str,
    ) -> CniOutcome {
        self.cni(
            command,
            container_id,
            netns,
            ifname,
            "IgnoreUnknown=1",
            &self.cni_config(version),
        )
    }
}

/// Applies Kubernetes objects on both nodes (the file datastore: each node
/// keeps its own copy), failing the test if either refuses.
pub fn apply_both(a: &Node, b: &Node, yaml: &str) {
    for n in [a, b] {
        let (ok, out) = n.apply(yaml);
        assert!(ok, "apply on {}: {out}", n.name);
    }
}

/// Deletes the objects `yaml` names on both nodes.
pub fn delete_both(a: &Node, b: &Node, yaml: &str) {
    for n in [a, b] {
        let p = n.dir.path().join("delete.yaml");
        std::fs::write(&p, yaml).unwrap();
        let (ok, _, err) = n.ctl(&["delete", "-f", p.to_str().unwrap()]);
        assert!(ok, "{err}");
    }
}
