//! The control socket: mode 0600 and owned by root; a non-root client is
//! refused; oversized, slow or malformed requests get an error (or are cut
//! off) without affecting other clients.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::cluster::{bin, Node, Underlay};
use common::skip_unless_root;

fn call(sock: &std::path::Path, line: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(line);
    let mut r = BufReader::new(s);
    let mut out = String::new();
    let _ = r.read_line(&mut out);
    out
}

#[test]
fn socket_is_root_only_and_robust() {
    if skip_unless_root() {
        return;
    }
    let u = Underlay::new("as");
    let mut a = Node::new(&u, "as", 1, "vxlan", "socket");
    a.start();
    let sock = a.socket();
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
    assert_eq!(meta.uid(), 0, "socket owner");

    // A non-root client is refused (by the mode, and by SO_PEERCRED behind it).
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok()
    {
        // The test's temp dir must be traversable for the refusal to come
        // from the socket itself.
        let _ = std::fs::set_permissions(a.dir.path(), std::fs::Permissions::from_mode(0o755));
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin("sluicectl"))
            .arg("--socket")
            .arg(&sock)
            .arg("status")
            .output()
            .unwrap();
        assert!(!out.status.success(), "a non-root client was served");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("sluiced"), "plain message: {err}");
    }

    // A slow client that never finishes its request does not block others.
    let mut slow = UnixStream::connect(&sock).unwrap();
    slow.write_all(b"{\"op\":").unwrap();
    assert!(
        call(&sock, b"{\"op\":\"status\"}\n").contains("\"ok\""),
        "served beside a slow client"
    );

    // Malformed and unknown requests get an error naming the problem.
    let r = call(&sock, b"{\"op\":\"status\"\n");
    assert!(r.contains("\"error\"") && r.contains("malformed"), "{r}");
    let r = call(&sock, b"{\"op\":\"reboot\"}\n");
    assert!(r.contains("\"error\""), "{r}");
    let r = call(&sock, b"{\"op\":\"cni_add\",\"container_id\":\"x\",\"netns\":\"/nope\",\"ifname\":\"eth0\",\"typo\":1}\n");
    assert!(r.contains("\"error\"") && r.contains("typo"), "{r}");

    // An oversized request is refused; the daemon keeps serving.
    let mut big = vec![b'x'; 2 << 20];
    big.push(b'\n');
    let r = call(&sock, &big);
    assert!(
        r.contains("\"error\"") && r.contains("refused"),
        "{}",
        &r[..r.len().min(200)]
    );
    drop(slow);
    assert!(
        a.ctl(&["status"]).0,
        "daemon still serves after bad clients"
    );
    assert!(
        a.log().lines().all(|l| !l.contains("panicked")),
        "{}",
        a.log()
    );
}
