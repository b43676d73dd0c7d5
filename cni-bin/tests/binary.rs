//! Runs the built `sluice` binary as a container runtime does: environment variables, the
//! network configuration on stdin, the answer on stdout. Needs no root and no sluiced.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use serde_json::{json, Value};
use sluice_control::api::{self, Answer, Attachment, Request, Response, RouteSpec};

/// A socket path under the temp dir that no other test (or test run) uses.
fn unique_socket(tag: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Only uniqueness matters; nothing else is ordered by this counter.
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("sluice-cni-{tag}-{}-{n}.sock", std::process::id()))
}

fn sluice(vars: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the sluice binary");
    // A command that does not read stdin may exit first; that is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn add_env(netns: &str) -> Vec<(&str, &str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "3f6940ab5ab4"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

fn conf(version: &str, socket: &Path) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "cniVersion": version, "name": "sluice", "type": "sluice",
        "socket": socket.to_str().unwrap(), "mtu": 1450
    }))
    .unwrap()
}

/// Checks a failure's shape and returns (code, msg).
fn cni_error(output: &Output, version: &str) -> (u64, String) {
    assert!(!output.status.success(), "{output:?}");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let err: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {output:?}"));
    assert_eq!(err["cniVersion"], version, "{err}");
    (
        err["code"].as_u64().unwrap(),
        err["msg"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn version() {
    let output = sluice(&[("CNI_COMMAND", "VERSION")], b"{\"cniVersion\":\"1.0.0\"}");
    assert!(output.status.success(), "{output:?}");
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        answer,
        json!({"cniVersion": "1.1.0",
               "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn no_command_prints_about_on_stderr() {
    let output = sluice(&[], b"");
    assert!(output.status.success(), "{output:?}");
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Sluice CNI plugin"));
}

#[test]
fn add_without_daemon_is_try_again_later() {
    let socket = unique_socket("absent");
    assert!(!socket.exists());
    let output = sluice(&add_env("/run/netns/pod-a"), &conf("1.0.0", &socket));
    let (code, msg) = cni_error(&output, "1.0.0");
    assert_eq!(code, 11, "{msg}");
    assert!(msg.contains(socket.to_str().unwrap()), "{msg}");
}

#[test]
fn garbage_stdin_is_decode_failure() {
    let output = sluice(&add_env("/run/netns/pod-a"), b"this is not json");
    let (code, msg) = cni_error(&output, "1.1.0");
    assert_eq!(code, 6, "{msg}");
}

#[test]
fn unknown_version_is_incompatible() {
    let socket = unique_socket("version");
    let output = sluice(&add_env("/run/netns/pod-a"), &conf("9.9.9", &socket));
    let (code, msg) = cni_error(&output, "1.1.0");
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("9.9.9"), "{msg}");
}

#[test]
fn add_without_container_id_is_invalid_environment() {
    let socket = unique_socket("env");
    let vars: Vec<_> = add_env("/run/netns/pod-a")
        .into_iter()
        .filter(|(k, _)| *k != "CNI_CONTAINERID")
        .collect();
    let output = sluice(&vars, &conf("0.4.0", &socket));
    let (code, msg) = cni_error(&output, "0.4.0");
    assert_eq!(code, 4, "{msg}");
    assert!(msg.contains("CNI_CONTAINERID"), "{msg}");
}

#[test]
fn status_without_daemon_is_not_available() {
    let socket = unique_socket("status");
    let output = sluice(&[("CNI_COMMAND", "STATUS")], &conf("1.1.0", &socket));
    let (code, msg) = cni_error(&output, "1.1.0");
    assert_eq!(code, 50, "{msg}");
}

/// The full path through a socket: a stand-in daemon answers one ADD.
#[test]
fn add_through_a_socket() {
    let socket = unique_socket("daemon");
    let listener = UnixListener::bind(&socket).unwrap();
    let daemon = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let line = api::read_frame(&mut reader, api::MAX_REQUEST)
            .unwrap()
            .unwrap();
        let request: Request = serde_json::from_slice(&line).unwrap();
        let Request::CniAdd(attach) = &request else {
            panic!("{request:?}")
        };
        let answer = Response::Ok(Answer::Attached(Attachment {
            ifname: attach.ifname.clone(),
            mac: "02:00:c6:13:01:05".into(),
            mtu: attach.mtu.unwrap_or(1500),
            sandbox: attach.netns.clone(),
            address: "198.19.1.5/32".into(),
            gateway: "169.254.1.1".into(),
            routes: vec![RouteSpec {
                dst: "0.0.0.0/0".into(),
                gw: Some("169.254.1.1".into()),
            }],
        }));
        (&stream).write_all(&api::encode(&answer)).unwrap();
        request
    });
    let output = sluice(&add_env("/run/netns/pod-a"), &conf("0.3.1", &socket));
    assert!(output.status.success(), "{output:?}");
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        result,
        json!({
            "cniVersion": "0.3.1",
            "interfaces": [{"name": "eth0", "mac": "02:00:c6:13:01:05",
                            "sandbox": "/run/netns/pod-a"}],
            "ips": [{"version": "4", "address": "198.19.1.5/32", "gateway": "169.254.1.1",
                     "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
            "dns": {}
        })
    );
    let request = daemon.join().unwrap();
    let Request::CniAdd(attach) = request else {
        unreachable!()
    };
    assert_eq!(attach.container_id, "3f6940ab5ab4");
    assert_eq!(attach.pod.name.as_deref(), Some("web-0"));
    assert_eq!(attach.mtu, Some(1450));
    std::fs::remove_file(&socket).unwrap();
}
