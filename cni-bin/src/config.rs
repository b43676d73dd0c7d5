//! The network configuration on stdin:
//!
//! ```json
//! {"cniVersion":"1.1.0","name":"sluice","type":"sluice","socket":"/run/sluice/sluiced.sock","mtu":1450}
//! ```
//!
//! `socket` and `mtu` are optional. Keys Sluice does not know are ignored, as CNI plugins do,
//! but every known key is type-checked. The runtime's keys (`runtimeConfig`, `args`,
//! `capabilities`, `prevResult`, `cni.dev/*`) are accepted; `ipam` is refused because Sluice
//! allocates addresses itself and would otherwise silently ignore the section.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_control::api::{AttachmentKey, DEFAULT_SOCKET};

use crate::error::PluginError;
use crate::result::{Dns, PrevResult};
use crate::version::CniVersion;

/// The `type` this plugin answers to.
pub const PLUGIN_TYPE: &str = "sluice";

/// IPv4's minimum MTU (RFC 791) to the largest a Linux link takes.
const MTU_RANGE: std::ops::RangeInclusive<u64> = 68..=65535;

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// A validated network configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConf {
    pub version: CniVersion,
    pub name: String,
    /// Where sluiced listens.
    pub socket: PathBuf,
    /// `None` lets sluiced choose.
    pub mtu: Option<u32>,
    /// Returned unchanged in the ADD result.
    pub dns: Dns,
    pub prev_result: Option<PrevResult>,
    /// `cni.dev/valid-attachments` (GC); `None` when absent.
    pub valid_attachments: Option<Vec<AttachmentKey>>,
}

/// The configuration's `cniVersion` if stdin is JSON naming a supported one; errors found
/// before (or while) validating the configuration are reported in it.
pub fn peek_version(stdin: &[u8]) -> Option<CniVersion> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    let peek: Peek = serde_json::from_slice(stdin).ok()?;
    CniVersion::parse(&peek.cni_version?)
}

/// Parses and validates stdin.
pub fn parse(stdin: &[u8]) -> Result<NetConf, PluginError> {
    let decode = |reason: String| PluginError::Decode {
        what: "the network configuration on stdin",
        reason,
    };
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(decode("stdin is empty".into()));
    }
    let value: Value = serde_json::from_slice(stdin).map_err(|err| decode(err.to_string()))?;
    let Value::Object(conf) = value else {
        return Err(decode(format!(
            "expected a JSON object, got {}",
            shown(&value)
        )));
    };

    let version = match conf.get("cniVersion") {
        None | Some(Value::Null) => return Err(PluginError::MissingVersion),
        Some(Value::String(text)) => {
            CniVersion::parse(text).ok_or_else(|| PluginError::IncompatibleVersion {
                found: text.clone(),
            })?
        }
        Some(other) => {
            return Err(wrong(
                "cniVersion",
                other,
                "a version string such as \"1.1.0\"",
            ))
        }
    };

    let name = required_str(&conf, "name")?;
    validate_network_name(name)?;
    let plugin_type = required_str(&conf, "type")?;
    if plugin_type != PLUGIN_TYPE {
        return Err(wrong("type", &conf["type"], "\"sluice\""));
    }
    if conf.contains_key("ipam") {
        return Err(PluginError::Config {
            msg: "the network configuration has an \"ipam\" section, but Sluice allocates pod \
                  addresses itself; remove it"
                .into(),
        });
    }

    let socket = match optional(&conf, "socket") {
        None => PathBuf::from(DEFAULT_SOCKET),
        Some(Value::String(path)) if path.starts_with('/') && path.len() <= MAX_SOCKET_PATH => {
            PathBuf::from(path)
        }
        Some(other) => {
            return Err(wrong(
                "socket",
                other,
                format!("an absolute path of at most {MAX_SOCKET_PATH} bytes"),
            ))
        }
    };

    let mtu = match optional(&conf, "mtu") {
        None => None,
        Some(value) => match value.as_u64() {
            Some(mtu) if MTU_RANGE.contains(&mtu) => u32::try_from(mtu).ok(),
            _ => {
                return Err(wrong(
                    "mtu",
                    value,
                    format!(
                        "an integer from {} to {}",
                        MTU_RANGE.start(),
                        MTU_RANGE.end()
                    ),
                ))
            }
        },
    };

    let dns = match optional(&conf, "dns") {
        None => Dns::default(),
        Some(value) => {
            let expected = "an object of nameservers, domain, search and options";
            if !value.is_object() {
                // serde would also take a JSON array for a struct.
                return Err(wrong("dns", value, expected));
            }
            Dns::deserialize(value)
                .map_err(|err| wrong("dns", value, format!("{expected} ({err})")))?
        }
    };

    for key in ["runtimeConfig", "args", "capabilities"] {
        if let Some(value) = optional(&conf, key) {
            if !value.is_object() {
                return Err(wrong(key, value, "a JSON object"));
            }
        }
    }

    let prev_result = optional(&conf, "prevResult")
        .map(PrevResult::parse)
        .transpose()?;

    Ok(NetConf {
        version,
        name: name.to_owned(),
        socket,
        mtu,
        dns,
        prev_result,
        valid_attachments: valid_attachments(&conf)?,
    })
}

/// GC's list of attachments still in use. Early libcni releases wrote `cni.dev/attachments`
/// and current ones write both keys, so either is read.
fn valid_attachments(conf: &Map<String, Value>) -> Result<Option<Vec<AttachmentKey>>, PluginError> {
    #[derive(Deserialize)]
    struct GcAttachment {
        #[serde(rename = "containerID")]
        container_id: String,
        ifname: String,
    }
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let Some(value) = optional(conf, key) else {
            continue;
        };
        let expected = "a list of {\"containerID\": ..., \"ifname\": ...} objects";
        let all_objects = value
            .as_array()
            .is_some_and(|list| list.iter().all(Value::is_object));
        if !all_objects {
            return Err(wrong(key, value, expected));
        }
        let list = Vec::<GcAttachment>::deserialize(value)
            .map_err(|err| wrong(key, value, format!("{expected} ({err})")))?;
        return Ok(Some(
            list.into_iter()
                .map(|a| AttachmentKey {
                    container_id: a.container_id,
                    ifname: a.ifname,
                })
                .collect(),
        ));
    }
    Ok(None)
}

/// The specification's rule for network names, as for container ids.
fn validate_network_name(name: &str) -> Result<(), PluginError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(wrong(
            "name",
            &Value::String(name.to_owned()),
            "letters, digits, '_', '.' and '-', starting with a letter or digit",
        ));
    }
    Ok(())
}

/// A key whose `null` means the same as its absence.
fn optional<'a>(conf: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    conf.get(key).filter(|value| !value.is_null())
}

fn required_str<'a>(
    conf: &'a Map<String, Value>,
    key: &'static str,
) -> Result<&'a str, PluginError> {
    match optional(conf, key) {
        None => Err(PluginError::Config {
            msg: format!("the network configuration has no {key:?}"),
        }),
        Some(Value::String(text)) if text.is_empty() => Err(PluginError::Config {
            msg: format!("the network configuration's {key:?} is empty"),
        }),
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(wrong(key, other, "a string")),
    }
}

fn wrong(key: &'static str, value: &Value, expected: impl Into<String>) -> PluginError {
    PluginError::InvalidConfig {
        key,
        value: shown(value),
        expected: expected.into(),
    }
}

/// A value for a message: its JSON text, cut short.
fn shown(value: &Value) -> String {
    const MAX: usize = 80;
    let text = value.to_string();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(value: Value) -> Result<NetConf, PluginError> {
        parse(&serde_json::to_vec(&value).unwrap())
    }

    fn minimal() -> Value {
        json!({"cniVersion": "1.1.0", "name": "sluice", "type": "sluice"})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut conf = minimal();
        conf[key] = value;
        conf
    }

    #[test]
    fn minimal_configuration_takes_defaults() {
        let conf = conf(minimal()).unwrap();
        assert_eq!(
            conf,
            NetConf {
                version: CniVersion::V1_1_0,
                name: "sluice".into(),
                socket: PathBuf::from(DEFAULT_SOCKET),
                mtu: None,
                dns: Dns::default(),
                prev_result: None,
                valid_attachments: None,
            }
        );
    }

    #[test]
    fn full_configuration() {
        let conf = conf(json!({
            "cniVersion": "0.4.0", "name": "k8s-pod-network", "type": "sluice",
            "socket": "/var/run/sluice/api.sock", "mtu": 1450,
            "dns": {"nameservers": ["10.96.0.10"]},
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": []},
            "args": {"cni": {"labels": []}},
            "cni.dev/something": 1,
            "someFutureKey": {"x": 1},
            "prevResult": {"cniVersion": "0.4.0", "interfaces": [], "ips": []}
        }))
        .unwrap();
        assert_eq!(conf.version, CniVersion::V0_4_0);
        assert_eq!(conf.name, "k8s-pod-network");
        assert_eq!(conf.socket, PathBuf::from("/var/run/sluice/api.sock"));
        assert_eq!(conf.mtu, Some(1450));
        assert_eq!(conf.dns.nameservers, ["10.96.0.10"]);
        assert_eq!(conf.prev_result, Some(PrevResult::default()));
    }

    #[test]
    fn every_supported_version_is_accepted() {
        for version in CniVersion::SUPPORTED {
            let parsed = conf(with("cniVersion", json!(version.as_str()))).unwrap();
            assert_eq!(parsed.version, version);
        }
    }

    #[test]
    fn undecodable_stdin_is_code_6() {
        for bad in [
            &b""[..],
            b"  \n",
            b"garbage",
            b"{\"cniVersion\":",
            b"[1,2]",
            b"\"x\"",
            b"\xff\xfe",
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.code(), 6, "{:?}", String::from_utf8_lossy(bad));
            assert!(err
                .to_string()
                .starts_with("the network configuration on stdin is not valid: "));
        }
    }

    #[test]
    fn versions_are_code_1() {
        let err = conf(with("cniVersion", json!("9.9.9"))).unwrap_err();
        assert_eq!(err.code(), 1);
        assert_eq!(
            err.to_string(),
            "cniVersion \"9.9.9\" is not supported; Sluice supports 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"
        );
        assert_eq!(
            conf(with("cniVersion", json!("0.2.0"))).unwrap_err().code(),
            1
        );
        let mut missing = minimal();
        missing.as_object_mut().unwrap().remove("cniVersion");
        assert_eq!(conf(missing).unwrap_err().code(), 1);
        // Not a string: a configuration error naming the key.
        let err = conf(with("cniVersion", json!(1.1))).unwrap_err();
        assert_eq!(err.code(), 7);
        assert!(err.to_string().contains("\"cniVersion\" is 1.1"), "{err}");
    }

    #[test]
    fn invalid_configurations_are_code_7() {
        let cases = [
            (with("name", json!("")), "\"name\" is empty"),
            (
                with("name", json!(5)),
                "key \"name\" is 5: expected a string",
            ),
            (with("name", json!("-net")), "key \"name\" is \"-net\""),
            (with("name", json!("my net")), "key \"name\" is \"my net\""),
            (
                with("type", json!("bridge")),
                "key \"type\" is \"bridge\": expected \"sluice\"",
            ),
            (with("type", Value::Null), "has no \"type\""),
            (
                with("ipam", json!({"type": "host-local"})),
                "Sluice allocates pod addresses",
            ),
            (
                with("socket", json!("run/sluiced.sock")),
                "\"socket\" is \"run/sluiced.sock\"",
            ),
            (with("socket", json!(7)), "\"socket\" is 7"),
            (
                with("socket", json!(format!("/{}", "s".repeat(107)))),
                "at most 107 bytes",
            ),
            (
                with("mtu", json!(67)),
                "\"mtu\" is 67: expected an integer from 68 to 65535",
            ),
            (with("mtu", json!(65536)), "\"mtu\" is 65536"),
            (with("mtu", json!(1450.5)), "\"mtu\" is 1450.5"),
            (with("mtu", json!(-1)), "\"mtu\" is -1"),
            (with("mtu", json!("1450")), "\"mtu\" is \"1450\""),
            (with("dns", json!({"nameserver": ["x"]})), "key \"dns\""),
            (with("dns", json!([])), "key \"dns\""),
            (
                with("runtimeConfig", json!([])),
                "\"runtimeConfig\" is []: expected a JSON object",
            ),
            (with("args", json!("x")), "\"args\""),
            (with("capabilities", json!(true)), "\"capabilities\""),
            (
                with("cni.dev/valid-attachments", json!({})),
                "cni.dev/valid-attachments",
            ),
            (
                with("cni.dev/valid-attachments", json!([["c1", "eth0"]])),
                "containerID",
            ),
            (
                with("cni.dev/attachments", json!([{"containerID": "a"}])),
                "cni.dev/attachments",
            ),
        ];
        for (value, needle) in cases {
            let err = conf(value.clone()).expect_err(&value.to_string());
            assert_eq!(err.code(), 7, "{value}: {err}");
            assert!(err.to_string().contains(needle), "{needle:?} not in {err}");
        }
        let mut no_name = minimal();
        no_name.as_object_mut().unwrap().remove("name");
        assert_eq!(conf(no_name).unwrap_err().code(), 7);
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let err = conf(with("runtimeConfig", json!("x".repeat(1000)))).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
        assert!(err.to_string().contains("..."), "{err}");
    }

    #[test]
    fn null_means_absent() {
        let mut value = minimal();
        for key in [
            "socket",
            "mtu",
            "dns",
            "prevResult",
            "runtimeConfig",
            "cni.dev/valid-attachments",
        ] {
            value[key] = Value::Null;
        }
        assert_eq!(conf(value).unwrap(), conf(minimal()).unwrap());
    }

    #[test]
    fn prev_result_is_parsed() {
        let value = with(
            "prevResult",
            json!({"interfaces": [{"name": "eth0", "sandbox": "/n"}],
                   "ips": [{"address": "198.19.1.5/32", "interface": 0}]}),
        );
        let prev = conf(value).unwrap().prev_result.unwrap();
        assert_eq!(prev.interfaces[0].name, "eth0");
        let err = conf(with("prevResult", json!([]))).unwrap_err();
        assert_eq!(err.code(), 6);
    }

    #[test]
    fn gc_attachments_from_either_key() {
        let list = json!([{"containerID": "c1", "ifname": "eth0"},
                          {"containerID": "c2", "ifname": "net1", "extra": true}]);
        let expected = vec![
            AttachmentKey {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            },
            AttachmentKey {
                container_id: "c2".into(),
                ifname: "net1".into(),
            },
        ];
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let parsed = conf(with(key, list.clone())).unwrap();
            assert_eq!(parsed.valid_attachments.as_ref(), Some(&expected));
        }
        let empty = conf(with("cni.dev/valid-attachments", json!([]))).unwrap();
        assert_eq!(empty.valid_attachments, Some(vec![]));
    }

    #[test]
    fn peek_version_is_lenient() {
        assert_eq!(
            peek_version(br#"{"cniVersion":"0.3.1","type":5}"#),
            Some(CniVersion::V0_3_1)
        );
        assert_eq!(peek_version(br#"{"cniVersion":"9.9.9"}"#), None);
        assert_eq!(peek_version(br#"{"cniVersion":1}"#), None);
        assert_eq!(peek_version(b"garbage"), None);
        assert_eq!(peek_version(b"[]"), None);
    }
}
