//! The systemd unit in the repository passes `systemd-analyze verify`.

use std::process::Command;

#[test]
fn unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/systemd/sluiced.service"
    ))
    .unwrap();
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "CapabilityBoundingSet=",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(key), "unit lacks {key}");
    }
    // Workers lower their nice (worker_nice defaults to -10): the unit must
    // leave sluiced the capability, in the bounding and the ambient set.
    for key in ["CapabilityBoundingSet=", "AmbientCapabilities="] {
        let line = unit.lines().find(|l| l.starts_with(key)).unwrap();
        assert!(line.contains("CAP_SYS_NICE"), "{line}");
    }
    // verify checks that ExecStart's binary exists: point it at one that does.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluiced.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/sluiced", "/bin/true")).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains(&*path.to_string_lossy()),
        "systemd-analyze verify: {err}"
    );
}
