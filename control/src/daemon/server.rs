//! The API server: the Unix socket the CNI plugin and sluicectl talk to.
//!
//! One thread per connection, at most [`MAX_CONNECTIONS`] at once; each
//! request is one JSON line of at most [`MAX_REQUEST`] bytes, read under a
//! deadline, so a slow, oversized or malformed client gets an error and cannot
//! hold up the others. Only root may connect (checked with SO_PEERCRED, on top
//! of the socket's 0600 mode).

use std::io::{BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::agent::Agent;
use crate::api::{code, encode, read_frame, ApiError, FrameError, Request, Response, MAX_REQUEST};

/// Connections served at once; more are told to try again.
pub const MAX_CONNECTIONS: usize = 64;
/// A request must arrive whole within this time.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A running server; dropping it stops accepting and removes the socket file.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Binds the socket (replacing a stale file, refusing one a live daemon holds).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is served by another sluiced", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

impl Server {
    pub fn start(listener: UnixListener, path: PathBuf, agent: Arc<Agent>) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let active = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
            .name("sluice-api".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                        active.fetch_sub(1, Ordering::AcqRel);
                        let _ = conn.write_all(&encode(&Response::Error(ApiError::new(
                            code::TRY_AGAIN_LATER,
                            format!("sluiced is serving {MAX_CONNECTIONS} connections: try again"),
                        ))));
                        continue;
                    }
                    let agent = agent.clone();
                    let active = active.clone();
                    let spawned = std::thread::Builder::new()
                        .name("sluice-conn".into())
                        .spawn(move || {
                            serve(conn, &agent);
                            active.fetch_sub(1, Ordering::AcqRel);
                        });
                    if spawned.is_err() {
                        tracing::warn!("cannot spawn a connection thread");
                    }
                }
            })
            .expect("spawn API thread");
        Server {
            path,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(conn: UnixStream, agent: &Agent) {
    match getsockopt(&conn, PeerCredentials) {
        Ok(c) if c.uid() == 0 => {}
        Ok(c) => {
            tracing::warn!(uid = c.uid(), pid = c.pid(), "API client refused: not root");
            let _ = (&conn).write_all(&encode(&Response::Error(ApiError::new(
                code::INVALID_REQUEST,
                format!("uid {} may not use the sluiced API: only root may", c.uid()),
            ))));
            return;
        }
        Err(_) => return,
    }
    let _ = conn.set_read_timeout(Some(READ_TIMEOUT));
    let _ = conn.set_write_timeout(Some(READ_TIMEOUT));
    let Ok(w) = conn.try_clone() else { return };
    let mut w = w;
    let mut r = BufReader::new(conn);
    loop {
        let resp = match read_frame(&mut r, MAX_REQUEST) {
            Ok(None) => return,
            Ok(Some(line)) => match serde_json::from_slice::<Request>(&line) {
                Ok(req) => Response::from(agent.handle(req)),
                Err(e) => Response::Error(ApiError::new(
                    code::INVALID_REQUEST,
                    format!("malformed request: {e}"),
                )),
            },
            Err(FrameError::TooLarge { .. }) => {
                let _ = w.write_all(&encode(&Response::Error(ApiError::new(
                    code::INVALID_REQUEST,
                    format!("request over {MAX_REQUEST} bytes refused"),
                ))));
                return;
            }
            Err(e) => {
                let _ = w.write_all(&encode(&Response::Error(ApiError::new(
                    code::INVALID_REQUEST,
                    e.to_string(),
                ))));
                return;
            }
        };
        if w.write_all(&encode(&resp)).is_err() {
            return;
        }
    }
}
