//! The systemd notification protocol (sd_notify), spoken directly: one
//! datagram to `$NOTIFY_SOCKET`. Does nothing when not run by systemd.

use std::os::unix::net::UnixDatagram;

fn send(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &path)
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Ports are up and the API is served.
pub fn ready() {
    send("READY=1\nSTATUS=forwarding");
}

/// Keep-alive for WatchdogSec.
pub fn watchdog() {
    send("WATCHDOG=1");
}

pub fn stopping() {
    send("STOPPING=1");
}
