//! etcd for the cluster tests: Debian's `etcd` (3.4) runs inside a namespace of its own
//! on the test underlay (198.18.0.200 and up), never in the root namespace; its data lives
//! in a temporary directory and the process is killed when the guard drops.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::{Node, Underlay};
use super::{unique, Netns};

/// Whether the etcd server binary is installed (scripts/test installs etcd-server).
pub fn have_etcd() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Plugs a namespace into the underlay bridge as `ul0` with `ip`/24.
pub fn plug(u: &Underlay, ns: &Netns, ip: Ipv4Addr, tag: &str) {
    let host_end = format!("e{tag}{}", &ns.name()[ns.name().len() - 6..]);
    ns.exec_ok(
        "ip",
        &[
            "link", "add", "ul0", "type", "veth", "peer", "name", &host_end,
        ],
    );
    ns.exec_ok("ip", &["link", "set", &host_end, "netns", u.ns.name()]);
    u.ns.exec_ok("ip", &["link", "set", &host_end, "master", "br0", "up"]);
    ns.exec_ok("ip", &["addr", "add", &format!("{ip}/24"), "dev", "ul0"]);
    ns.exec_ok("ip", &["link", "set", "ul0", "up"]);
}

/// One etcd member in its own namespace.
pub struct Member {
    pub name: String,
    pub ip: Ipv4Addr,
    /// `name=peer-url,...` of the whole cluster.
    initial_cluster: String,
    token: String,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    // Last: the namespace goes after the process.
    pub ns: Netns,
}

impl Member {
    fn new(u: &Underlay, tag: &str, index: u8) -> Member {
        let ns = Netns::new(&unique(&format!("sl{tag}e{index}")));
        let ip = Ipv4Addr::new(198, 18, 0, 200 + index);
        plug(u, &ns, ip, &index.to_string());
        Member {
            name: format!("m{index}"),
            ip,
            initial_cluster: String::new(),
            token: String::new(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            ns,
        }
    }

    pub fn client_url(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:2380", self.ip)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the member (again, after [`Member::kill`]: same data directory).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd {} already runs", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log");
        let data = self.dir.path().join("data");
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns.name(), "etcd"])
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &self.client_url()])
            .args(["--advertise-client-urls", &self.client_url()])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            // Small and quick: a test cluster on one machine.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--quota-backend-bytes", "268435456"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        self.child = Some(child);
    }

    /// SIGKILL, as a crash or an outage.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until the member serves clients (its log says so), at most 20 s.
    pub fn wait_ready(&self, since_len: usize) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            let log = self.log();
            if log.len() > since_len && log[since_len..].contains("ready to serve client requests")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd {} not ready:\n{}", self.name, self.log());
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An etcd cluster of one or more members on the underlay.
pub struct Etcd {
    pub members: Vec<Member>,
}

impl Etcd {
    /// Starts `size` members and waits until each serves.
    pub fn start(u: &Underlay, tag: &str, size: u8) -> Etcd {
        let mut members: Vec<Member> = (1..=size).map(|i| Member::new(u, tag, i)).collect();
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let token = unique(&format!("sl{tag}"));
        for m in &mut members {
            m.initial_cluster = initial.join(",");
            m.token = token.clone();
            m.spawn();
        }
        for m in &members {
            m.wait_ready(0);
        }
        Etcd { members }
    }

    /// The TOML array of client URLs.
    pub fn endpoints_toml(&self) -> String {
        let urls: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("\"{}\"", m.client_url()))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// Kills every member (an outage).
    pub fn stop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }

    /// Restarts every member on its data and waits until each serves.
    pub fn restart(&mut self) {
        let lens: Vec<usize> = self.members.iter().map(|m| m.log().len()).collect();
        for m in &mut self.members {
            m.spawn();
        }
        for (m, len) in self.members.iter().zip(lens) {
            m.wait_ready(len);
        }
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- etcd {}:\n{}", m.name, m.log()))
            .collect()
    }
}

/// Node `index` of an etcd cluster: configured with only the datastore, its
/// endpoints, cluster_cidr, mode and uplink (no pod_cidr, no peers).
pub fn etcd_node(
    u: &Underlay,
    e: &Etcd,
    tag: &str,
    index: u8,
    mode: &str,
    lease_ttl_s: u32,
) -> Node {
    let mut n = Node::new(u, tag, index, mode, "socket");
    n.pod_cidr = String::new();
    n.extra_config = format!(
        "datastore = \"etcd\"\netcd_endpoints = {}\nnode_lease_ttl_s = {lease_ttl_s}\n",
        e.endpoints_toml()
    );
    n
}
