//! Everything that can go wrong in one plugin invocation, and how each failure is reported to
//! the runtime: `{cniVersion, code, msg, details?}` on stdout and a non-zero exit.

use serde::Serialize;
use sluice_control::api::{code, ApiError, ClientError};

use crate::version::CniVersion;

/// A failed invocation. Each variant knows its CNI error code; messages name what was wrong
/// and the offending value.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(
        "cniVersion {found:?} is not supported; Sluice supports {}",
        CniVersion::supported_list()
    )]
    IncompatibleVersion { found: String },

    #[error(
        "the network configuration has no cniVersion; Sluice supports {}",
        CniVersion::supported_list()
    )]
    MissingVersion,

    #[error("cniVersion {version} does not define {command}; it exists from {since} on")]
    CommandNotInVersion {
        command: &'static str,
        version: CniVersion,
        since: &'static str,
    },

    #[error("CNI_COMMAND {value:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC")]
    UnknownCommand { value: String },

    #[error("required environment variables missing for {command}: {}", names.join(", "))]
    MissingEnv {
        command: &'static str,
        names: Vec<&'static str>,
    },

    #[error("{var} {value:?} is not {expected}: {reason}")]
    InvalidEnv {
        var: &'static str,
        value: String,
        expected: &'static str,
        reason: String,
    },

    #[error("CNI_ARGS pair {pair:?} is not valid: {reason}")]
    InvalidCniArgs { pair: String, reason: String },

    #[error("CNI_ARGS has unknown keys {keys:?}; Sluice reads K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID and K8S_POD_INFRA_CONTAINER_ID (add IgnoreUnknown=1 to ignore others)")]
    UnknownCniArgs { keys: Vec<String> },

    #[error("reading the network configuration from stdin failed: {source}")]
    Stdin {
        #[source]
        source: std::io::Error,
    },

    #[error("stdin holds more than {limit} bytes; a network configuration is far smaller")]
    StdinTooLarge { limit: usize },

    #[error("{what} is not valid: {reason}")]
    Decode { what: &'static str, reason: String },

    #[error("network configuration key {key:?} is {value}: expected {expected}")]
    InvalidConfig {
        key: &'static str,
        value: String,
        expected: String,
    },

    #[error("{msg}")]
    Config { msg: String },

    #[error("{source}; try again later")]
    Unreachable {
        #[source]
        source: ClientError,
    },

    #[error("{source}")]
    RequestTooLarge {
        #[source]
        source: ClientError,
    },

    #[error("{reason}")]
    Protocol { reason: String },

    #[error("{}", .0.msg)]
    Daemon(ApiError),

    #[error("sluiced cannot serve ADD: {reason}")]
    NotAvailable {
        code: u32,
        reason: String,
        details: Option<String>,
    },

    #[error("CHECK failed: {msg}")]
    CheckFailed { msg: String },
}

impl PluginError {
    /// The CNI error code reported to the runtime.
    pub fn code(&self) -> u32 {
        match self {
            PluginError::IncompatibleVersion { .. }
            | PluginError::MissingVersion
            | PluginError::CommandNotInVersion { .. } => code::INCOMPATIBLE_VERSION,
            PluginError::UnknownCommand { .. }
            | PluginError::MissingEnv { .. }
            | PluginError::InvalidEnv { .. }
            | PluginError::InvalidCniArgs { .. }
            | PluginError::UnknownCniArgs { .. } => code::INVALID_ENVIRONMENT,
            PluginError::Stdin { .. } => code::IO_FAILURE,
            PluginError::StdinTooLarge { .. } | PluginError::Decode { .. } => code::DECODE_FAILURE,
            PluginError::InvalidConfig { .. } | PluginError::Config { .. } => code::INVALID_CONFIG,
            PluginError::Unreachable { .. } => code::TRY_AGAIN_LATER,
            PluginError::RequestTooLarge { .. } => code::INVALID_REQUEST,
            PluginError::Protocol { .. } => code::PROTOCOL,
            PluginError::Daemon(err) => err.code,
            PluginError::NotAvailable { code, .. } => *code,
            PluginError::CheckFailed { .. } => code::CHECK_FAILED,
        }
    }

    pub fn details(&self) -> Option<String> {
        match self {
            PluginError::Daemon(err) => err.details.clone(),
            PluginError::NotAvailable { details, .. } => details.clone(),
            _ => None,
        }
    }

    /// The error as the runtime reads it, answering in `version`.
    pub fn to_json(&self, version: CniVersion) -> Vec<u8> {
        #[derive(Serialize)]
        struct CniError<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<String>,
        }
        let mut out = serde_json::to_vec(&CniError {
            cni_version: version.as_str(),
            code: self.code(),
            msg: self.to_string(),
            details: self.details(),
        })
        .unwrap_or_default();
        out.push(b'\n');
        out
    }
}

impl From<ClientError> for PluginError {
    fn from(source: ClientError) -> Self {
        match source {
            ClientError::Protocol { .. } => PluginError::Protocol {
                reason: source.to_string(),
            },
            ClientError::RequestTooLarge { .. } => PluginError::RequestTooLarge { source },
            ClientError::Unreachable { .. }
            | ClientError::Timeout { .. }
            | ClientError::Closed { .. }
            | ClientError::Io { .. }
            | ClientError::Broken => PluginError::Unreachable { source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::path::PathBuf;
    use std::time::Duration;

    fn wire(err: &PluginError) -> Value {
        serde_json::from_slice(&err.to_json(CniVersion::V1_0_0)).unwrap()
    }

    #[test]
    fn error_json_shape() {
        let err = PluginError::InvalidEnv {
            var: "CNI_IFNAME",
            value: "eth0/x".into(),
            expected: "a valid interface name",
            reason: "it contains '/'".into(),
        };
        let out = err.to_json(CniVersion::V1_0_0);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(
            wire(&err),
            json!({"cniVersion": "1.0.0", "code": 4,
                   "msg": "CNI_IFNAME \"eth0/x\" is not a valid interface name: it contains '/'"})
        );
        let daemon = PluginError::Daemon(
            ApiError::new(code::POOL_EXHAUSTED, "no free address").with_details("64/64"),
        );
        assert_eq!(
            wire(&daemon),
            json!({"cniVersion": "1.0.0", "code": 100, "msg": "no free address",
                   "details": "64/64"})
        );
    }

    #[test]
    fn every_variant_has_its_code() {
        let unreachable = || ClientError::Unreachable {
            socket: PathBuf::from("/run/sluice/sluiced.sock"),
            source: std::io::ErrorKind::NotFound.into(),
        };
        let cases: Vec<(PluginError, u32)> = vec![
            (
                PluginError::IncompatibleVersion {
                    found: "9.9.9".into(),
                },
                1,
            ),
            (PluginError::MissingVersion, 1),
            (
                PluginError::CommandNotInVersion {
                    command: "CHECK",
                    version: CniVersion::V0_3_1,
                    since: "0.4.0",
                },
                1,
            ),
            (
                PluginError::UnknownCommand {
                    value: "ADDD".into(),
                },
                4,
            ),
            (
                PluginError::MissingEnv {
                    command: "ADD",
                    names: vec!["CNI_NETNS"],
                },
                4,
            ),
            (
                PluginError::InvalidCniArgs {
                    pair: "X".into(),
                    reason: "no '='".into(),
                },
                4,
            ),
            (
                PluginError::UnknownCniArgs {
                    keys: vec!["X".into()],
                },
                4,
            ),
            (
                PluginError::Stdin {
                    source: std::io::ErrorKind::BrokenPipe.into(),
                },
                5,
            ),
            (PluginError::StdinTooLarge { limit: 1 }, 6),
            (
                PluginError::Decode {
                    what: "stdin",
                    reason: "eof".into(),
                },
                6,
            ),
            (
                PluginError::InvalidConfig {
                    key: "mtu",
                    value: "9".into(),
                    expected: "more".into(),
                },
                7,
            ),
            (PluginError::Config { msg: "ipam".into() }, 7),
            (unreachable().into(), 11),
            (
                ClientError::Timeout {
                    op: "cni_add",
                    after: Duration::from_secs(30),
                }
                .into(),
                11,
            ),
            (ClientError::Closed { op: "cni_add" }.into(), 11),
            (ClientError::Broken.into(), 11),
            (
                ClientError::Protocol {
                    op: "cni_add",
                    reason: "x".into(),
                }
                .into(),
                code::PROTOCOL,
            ),
            (
                ClientError::RequestTooLarge {
                    op: "cni_gc",
                    len: 2,
                    limit: 1,
                }
                .into(),
                code::INVALID_REQUEST,
            ),
            (PluginError::Daemon(ApiError::new(3, "unknown")), 3),
            (
                PluginError::NotAvailable {
                    code: 50,
                    reason: "starting".into(),
                    details: None,
                },
                50,
            ),
            (
                PluginError::CheckFailed { msg: "x".into() },
                code::CHECK_FAILED,
            ),
        ];
        for (err, expected) in cases {
            assert_eq!(err.code(), expected, "{err}");
            assert_eq!(wire(&err)["code"], expected);
        }
    }

    #[test]
    fn unreachable_message_names_socket_and_advises_retry() {
        let err = PluginError::from(ClientError::Unreachable {
            socket: PathBuf::from("/tmp/nowhere.sock"),
            source: std::io::ErrorKind::NotFound.into(),
        });
        let msg = err.to_string();
        assert!(msg.contains("/tmp/nowhere.sock"), "{msg}");
        assert!(msg.ends_with("try again later"), "{msg}");
    }
}
