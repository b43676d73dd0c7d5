//! One plugin invocation: environment and stdin in, stdout and exit code out. sluiced is
//! reached through [`Daemon`], so everything here runs in tests without a daemon.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use sluice_control::api::{
    code, Answer, Attachment, Client, ClientError, CniAttach, CniDetach, Request, Response,
    CNI_TIMEOUT, CONNECT_TIMEOUT,
};

use crate::config::{self, NetConf};
use crate::env::{self, Command, Env, Target};
use crate::error::PluginError;
use crate::result::{self, parse_cidr};
use crate::version::{version_answer, CniVersion};

/// The largest stdin read; a network configuration with a previous result is a few KiB.
pub const MAX_STDIN: usize = 4 << 20;

/// The way to sluiced.
pub trait Daemon {
    /// Sends one request to the daemon listening on `socket` and returns its answer.
    fn call(&mut self, socket: &Path, request: &Request) -> Result<Response, ClientError>;
}

/// sluiced over its Unix socket, one connection per invocation.
#[derive(Clone, Copy, Debug)]
pub struct SocketDaemon {
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
}

impl Default for SocketDaemon {
    fn default() -> Self {
        SocketDaemon {
            connect_timeout: CONNECT_TIMEOUT,
            io_timeout: CNI_TIMEOUT,
        }
    }
}

impl Daemon for SocketDaemon {
    fn call(&mut self, socket: &Path, request: &Request) -> Result<Response, ClientError> {
        Client::connect(socket, self.connect_timeout)?
            .with_io_timeout(self.io_timeout)
            .call(request)
    }
}

/// What the process prints and how it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: u8,
}

impl Outcome {
    fn success(stdout: Vec<u8>) -> Outcome {
        Outcome {
            stdout,
            stderr: Vec::new(),
            exit_code: 0,
        }
    }

    fn failure(err: &PluginError, version: CniVersion) -> Outcome {
        Outcome {
            stdout: err.to_json(version),
            stderr: Vec::new(),
            exit_code: 1,
        }
    }
}

/// Runs one invocation of the plugin. `env` holds the process environment; stdin is read only
/// for commands that take a configuration (not VERSION, so a person running the binary in a
/// terminal is not left waiting).
pub fn run(
    env: &HashMap<String, String>,
    stdin: &mut dyn Read,
    daemon: &mut dyn Daemon,
) -> Outcome {
    let command = match env::command(env) {
        Ok(Some(command)) => command,
        Ok(None) => return about(),
        Err(err) => return Outcome::failure(&err, CniVersion::NEWEST),
    };
    if command == Command::Version {
        return Outcome::success(json_line(&version_answer()));
    }
    let input = match read_stdin(stdin) {
        Ok(input) => input,
        Err(err) => return Outcome::failure(&err, CniVersion::NEWEST),
    };
    // Errors answer in the version the runtime asked for whenever that can be read.
    let version = config::peek_version(&input).unwrap_or(CniVersion::NEWEST);
    match execute(command, env, &input, daemon) {
        Ok(stdout) => Outcome::success(stdout),
        Err(err) => Outcome::failure(&err, version),
    }
}

/// Without CNI_COMMAND the binary was started by hand: say what it is, as the reference
/// plugins do.
fn about() -> Outcome {
    let text = format!(
        "Sluice CNI plugin {}\nCNI protocol versions supported: {}\n",
        env!("CARGO_PKG_VERSION"),
        CniVersion::supported_list()
    );
    Outcome {
        stdout: Vec::new(),
        stderr: text.into_bytes(),
        exit_code: 0,
    }
}

fn read_stdin(stdin: &mut dyn Read) -> Result<Vec<u8>, PluginError> {
    let mut input = Vec::new();
    stdin
        .take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut input)
        .map_err(|source| PluginError::Stdin { source })?;
    if input.len() > MAX_STDIN {
        return Err(PluginError::StdinTooLarge { limit: MAX_STDIN });
    }
    Ok(input)
}

fn execute(
    command: Command,
    env: &HashMap<String, String>,
    input: &[u8],
    daemon: &mut dyn Daemon,
) -> Result<Vec<u8>, PluginError> {
    let env = Env::read(env, command)?;
    let conf = config::parse(input)?;
    match command {
        Command::Add => add(&env, &conf, daemon),
        Command::Del => del(&env, &conf, daemon),
        Command::Check => check(&env, &conf, daemon),
        Command::Status => status(&conf, daemon),
        Command::Gc => gc(&conf, daemon),
        Command::Version => Ok(json_line(&version_answer())),
    }
}

fn add(env: &Env, conf: &NetConf, daemon: &mut dyn Daemon) -> Result<Vec<u8>, PluginError> {
    let target = env.target()?;
    if conf.prev_result.is_some() {
        return Err(PluginError::Config {
            msg: "ADD got a prevResult, so Sluice is not the first plugin of the chain; Sluice \
                  creates the pod interface and must come first"
                .into(),
        });
    }
    let netns = target.netns.clone().unwrap_or_default();
    let request = Request::CniAdd(attach_request(&target, conf));
    let mut attachment = match call(daemon, conf, &request)? {
        Answer::Attached(attachment) => attachment,
        other => return Err(unexpected(&request, &other)),
    };
    if attachment.ifname != target.ifname {
        return Err(PluginError::Protocol {
            reason: format!(
                "sluiced attached interface {:?}, but CNI_IFNAME is {:?}",
                attachment.ifname, target.ifname
            ),
        });
    }
    if attachment.sandbox.is_empty() {
        attachment.sandbox = netns;
    } else if attachment.sandbox != netns {
        // CHECK compares the result's sandbox with CNI_NETNS; a different spelling of the
        // same namespace would fail every later CHECK.
        return Err(PluginError::Protocol {
            reason: format!(
                "sluiced reports sandbox {:?}, but CNI_NETNS is {netns:?}",
                attachment.sandbox
            ),
        });
    }
    result::add_result(&attachment, conf.version, &conf.dns)
}

/// DEL succeeds when the attachment is already gone: sluiced answers ok for unknown ones.
/// `prevResult`, when given, has been parsed (a malformed one is an error) but is not needed:
/// sluiced holds the attachment's state.
fn del(env: &Env, conf: &NetConf, daemon: &mut dyn Daemon) -> Result<Vec<u8>, PluginError> {
    let target = env.target()?;
    let request = Request::CniDel(CniDetach {
        container_id: target.container_id,
        ifname: target.ifname,
        netns: target.netns,
        pod: target.pod,
    });
    call(daemon, conf, &request)?;
    Ok(Vec::new())
}

fn check(env: &Env, conf: &NetConf, daemon: &mut dyn Daemon) -> Result<Vec<u8>, PluginError> {
    if !conf.version.has_check() {
        return Err(PluginError::CommandNotInVersion {
            command: "CHECK",
            version: conf.version,
            since: "0.4.0",
        });
    }
    let target = env.target()?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| PluginError::Config {
            msg:
                "CHECK needs the ADD result as prevResult in the network configuration, and there \
              is none"
                    .into(),
        })?;
    let netns = target.netns.clone().unwrap_or_default();
    let addresses = prev.expect_attachment(&target.ifname, &netns)?;
    let request = Request::CniCheck(attach_request(&target, conf));
    match call(daemon, conf, &request)? {
        Answer::Done => Ok(Vec::new()),
        Answer::Attached(held) => {
            compare_with_prev(&held, &addresses, prev, &target.ifname)?;
            Ok(Vec::new())
        }
        other => Err(unexpected(&request, &other)),
    }
}

/// The attachment sluiced holds must be the one the runtime remembers.
fn compare_with_prev(
    held: &Attachment,
    addresses: &[(std::net::IpAddr, u8)],
    prev: &result::PrevResult,
    ifname: &str,
) -> Result<(), PluginError> {
    let failed = |msg: String| PluginError::CheckFailed { msg };
    let address = parse_cidr(&held.address).ok_or_else(|| PluginError::Protocol {
        reason: format!(
            "sluiced holds an attachment with address {:?}",
            held.address
        ),
    })?;
    if !addresses.contains(&address) {
        return Err(failed(format!(
            "sluiced holds address {} for interface {ifname:?}, but prevResult does not list it",
            held.address
        )));
    }
    let prev_mac = prev
        .interfaces
        .iter()
        .find(|interface| interface.name == ifname)
        .and_then(|interface| interface.mac.as_deref())
        .filter(|mac| !mac.is_empty());
    if let Some(prev_mac) = prev_mac {
        if !held.mac.is_empty() && !held.mac.eq_ignore_ascii_case(prev_mac) {
            return Err(failed(format!(
                "interface {ifname:?} has MAC {}, but prevResult says {prev_mac}",
                held.mac
            )));
        }
    }
    Ok(())
}

/// STATUS reports every failure as "not available" (50) unless sluiced itself says that
/// existing pods are affected (51).
fn status(conf: &NetConf, daemon: &mut dyn Daemon) -> Result<Vec<u8>, PluginError> {
    if !conf.version.has_status_and_gc() {
        return Err(PluginError::CommandNotInVersion {
            command: "STATUS",
            version: conf.version,
            since: "1.1.0",
        });
    }
    let not_available = |reason: String, details: Option<String>| PluginError::NotAvailable {
        code: code::NOT_AVAILABLE,
        reason,
        details,
    };
    match daemon.call(&conf.socket, &Request::CniStatus) {
        Ok(Response::Ok(Answer::Ready { ready: true, .. })) => Ok(Vec::new()),
        Ok(Response::Ok(Answer::Ready {
            ready: false,
            reason,
        })) => Err(not_available(
            reason.unwrap_or_else(|| "sluiced reports that it is not ready".into()),
            None,
        )),
        Ok(Response::Ok(other)) => Err(not_available(
            format!("sluiced answered cni_status with {}", answer_kind(&other)),
            None,
        )),
        Ok(Response::Error(err)) if err.code == code::NOT_AVAILABLE_DEGRADED => {
            Err(PluginError::Daemon(err))
        }
        Ok(Response::Error(err)) => Err(not_available(err.msg, err.details)),
        Err(err) => Err(not_available(err.to_string(), None)),
    }
}

fn gc(conf: &NetConf, daemon: &mut dyn Daemon) -> Result<Vec<u8>, PluginError> {
    if !conf.version.has_status_and_gc() {
        return Err(PluginError::CommandNotInVersion {
            command: "GC",
            version: conf.version,
            since: "1.1.0",
        });
    }
    let valid_attachments = conf
        .valid_attachments
        .clone()
        .ok_or_else(|| PluginError::Config {
            msg: "GC needs cni.dev/valid-attachments in the network configuration, and there is \
              none; without it every attachment would look stale"
                .into(),
        })?;
    call(daemon, conf, &Request::CniGc { valid_attachments })?;
    Ok(Vec::new())
}

fn attach_request(target: &Target, conf: &NetConf) -> CniAttach {
    CniAttach {
        container_id: target.container_id.clone(),
        netns: target.netns.clone().unwrap_or_default(),
        ifname: target.ifname.clone(),
        pod: target.pod.clone(),
        mtu: conf.mtu,
    }
}

fn call(daemon: &mut dyn Daemon, conf: &NetConf, request: &Request) -> Result<Answer, PluginError> {
    daemon
        .call(&conf.socket, request)?
        .into_result()
        .map_err(PluginError::Daemon)
}

fn unexpected(request: &Request, answer: &Answer) -> PluginError {
    PluginError::Protocol {
        reason: format!(
            "sluiced answered {} with {}",
            request.op(),
            answer_kind(answer)
        ),
    }
}

fn answer_kind(answer: &Answer) -> &'static str {
    match answer {
        Answer::Attached(_) => "an attachment",
        Answer::Done => "done",
        Answer::Ready { .. } => "a readiness report",
        Answer::Json(_) => "an operator view",
    }
}

fn json_line(value: &serde_json::Value) -> Vec<u8> {
    let mut out = value.to_string().into_bytes();
    out.push(b'\n');
    out
}

#[cfg(test)]
#[path = "plugin_tests.rs"]
mod tests;
