//! The `CNI_*` environment variables: which each command needs, and what makes their values
//! valid (CNI specification, section "Parameters").

use std::collections::HashMap;

use sluice_control::api::PodRef;

use crate::error::PluginError;

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(text: &str) -> Option<Command> {
        Some(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    /// The variables the specification requires besides `CNI_COMMAND`.
    fn required(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &[CONTAINERID, NETNS, IFNAME],
            Command::Del => &[CONTAINERID, IFNAME],
            Command::Gc => &[PATH],
            Command::Version | Command::Status => &[],
        }
    }
}

pub const COMMAND: &str = "CNI_COMMAND";
pub const CONTAINERID: &str = "CNI_CONTAINERID";
pub const NETNS: &str = "CNI_NETNS";
pub const IFNAME: &str = "CNI_IFNAME";
pub const ARGS: &str = "CNI_ARGS";
pub const PATH: &str = "CNI_PATH";

/// Linux's IFNAMSIZ is 16 bytes including the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

/// Reads `CNI_COMMAND`: `Ok(None)` when it is unset or empty (someone ran the binary by hand).
pub fn command(env: &HashMap<String, String>) -> Result<Option<Command>, PluginError> {
    match get(env, COMMAND) {
        None => Ok(None),
        Some(value) => Command::parse(value)
            .map(Some)
            .ok_or_else(|| PluginError::UnknownCommand {
                value: value.to_owned(),
            }),
    }
}

/// The environment of one invocation, with every variable `command` requires present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    /// `CNI_ARGS` as given; empty when unset.
    pub args: String,
    /// `CNI_PATH`, split. Sluice delegates to no other plugin, so it is only checked for.
    pub path: Vec<String>,
}

impl Env {
    /// Collects the variables, failing with every missing one named at once. An empty value
    /// counts as missing, as in the reference implementation.
    pub fn read(env: &HashMap<String, String>, command: Command) -> Result<Env, PluginError> {
        let missing: Vec<&'static str> = command
            .required()
            .iter()
            .copied()
            .filter(|name| get(env, name).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(PluginError::MissingEnv {
                command: command.as_str(),
                names: missing,
            });
        }
        let owned = |name| get(env, name).map(str::to_owned);
        Ok(Env {
            command,
            container_id: owned(CONTAINERID),
            netns: owned(NETNS),
            ifname: owned(IFNAME),
            args: owned(ARGS).unwrap_or_default(),
            path: get(env, PATH)
                .map(|path| {
                    path.split(':')
                        .filter(|dir| !dir.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// The attachment ADD, CHECK and DEL work on, every value validated.
    pub fn target(&self) -> Result<Target, PluginError> {
        let container_id = self.container_id.clone().unwrap_or_default();
        validate_container_id(&container_id)?;
        let ifname = self.ifname.clone().unwrap_or_default();
        validate_ifname(&ifname)?;
        if let Some(netns) = &self.netns {
            validate_netns(netns)?;
        }
        Ok(Target {
            container_id,
            ifname,
            netns: self.netns.clone(),
            pod: parse_cni_args(&self.args)?,
        })
    }
}

/// One attachment, as named by the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub container_id: String,
    pub ifname: String,
    /// Always present for ADD and CHECK; DEL may lack it.
    pub netns: Option<String>,
    pub pod: PodRef,
}

fn get<'a>(env: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

fn invalid(
    var: &'static str,
    value: &str,
    expected: &'static str,
    reason: impl Into<String>,
) -> PluginError {
    PluginError::InvalidEnv {
        var,
        value: value.to_owned(),
        expected,
        reason: reason.into(),
    }
}

/// Non-UTF-8 bytes reach the plugin as U+FFFD (the environment is read lossily); passing such
/// a value on would name a different namespace or interface than the runtime meant.
fn reject_lossy(var: &'static str, value: &str, expected: &'static str) -> Result<(), PluginError> {
    if value.contains(char::REPLACEMENT_CHARACTER) {
        return Err(invalid(var, value, expected, "it is not valid UTF-8"));
    }
    Ok(())
}

/// The specification: an alphanumeric character, then alphanumerics, `_`, `.` or `-`.
pub fn validate_container_id(id: &str) -> Result<(), PluginError> {
    const EXPECTED: &str = "a valid container id";
    let mut chars = id.chars();
    match chars.next() {
        None => return Err(invalid(CONTAINERID, id, EXPECTED, "it is empty")),
        Some(first) if !first.is_ascii_alphanumeric() => {
            return Err(invalid(
                CONTAINERID,
                id,
                EXPECTED,
                format!("it starts with {first:?}; the first character must be a letter or digit"),
            ))
        }
        Some(_) => {}
    }
    if let Some(bad) = chars.find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(invalid(
            CONTAINERID,
            id,
            EXPECTED,
            format!("it contains {bad:?}; only letters, digits, '_', '.' and '-' are allowed"),
        ));
    }
    Ok(())
}

/// Linux's rules: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), PluginError> {
    const EXPECTED: &str = "a valid interface name";
    if name.is_empty() {
        return Err(invalid(IFNAME, name, EXPECTED, "it is empty"));
    }
    reject_lossy(IFNAME, name, EXPECTED)?;
    if name.len() > MAX_IFNAME_LEN {
        return Err(invalid(
            IFNAME,
            name,
            EXPECTED,
            format!(
                "it is {} bytes long; Linux allows at most {MAX_IFNAME_LEN}",
                name.len()
            ),
        ));
    }
    if name == "." || name == ".." {
        return Err(invalid(IFNAME, name, EXPECTED, "'.' and '..' are reserved"));
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(invalid(
            IFNAME,
            name,
            EXPECTED,
            format!("it contains {bad:?}; '/', ':' and whitespace are not allowed"),
        ));
    }
    Ok(())
}

/// A namespace is named by an absolute path (`/run/netns/x`, `/proc/123/ns/net`).
pub fn validate_netns(path: &str) -> Result<(), PluginError> {
    const EXPECTED: &str = "a network namespace path";
    reject_lossy(NETNS, path, EXPECTED)?;
    if !path.starts_with('/') {
        return Err(invalid(NETNS, path, EXPECTED, "it is not an absolute path"));
    }
    Ok(())
}

/// Parses `CNI_ARGS` (`"K=V;K2=V2"`) into the pod identity Kubernetes runtimes pass.
///
/// As with the reference implementation, keys are case-sensitive, the last occurrence of a key
/// wins, and an unknown key is an error unless `IgnoreUnknown` is `1` or `true`. Unlike it,
/// empty segments (a trailing `;`) are skipped and a value may itself contain `=`.
pub fn parse_cni_args(raw: &str) -> Result<PodRef, PluginError> {
    let mut pod = PodRef::default();
    let mut ignore_unknown = false;
    let mut unknown = Vec::new();
    for pair in raw.split(';').filter(|pair| !pair.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(PluginError::InvalidCniArgs {
                pair: pair.to_owned(),
                reason: "it has no '='".into(),
            });
        };
        let slot = match key {
            "K8S_POD_NAMESPACE" => &mut pod.namespace,
            "K8S_POD_NAME" => &mut pod.name,
            "K8S_POD_UID" => &mut pod.uid,
            "K8S_POD_INFRA_CONTAINER_ID" => &mut pod.infra_container_id,
            "IgnoreUnknown" => {
                ignore_unknown = parse_bool(value).ok_or_else(|| PluginError::InvalidCniArgs {
                    pair: pair.to_owned(),
                    reason: "IgnoreUnknown must be 1, 0, true or false".into(),
                })?;
                continue;
            }
            "" => {
                return Err(PluginError::InvalidCniArgs {
                    pair: pair.to_owned(),
                    reason: "the key is empty".into(),
                })
            }
            _ => {
                unknown.push(key.to_owned());
                continue;
            }
        };
        *slot = (!value.is_empty()).then(|| value.to_owned());
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(PluginError::UnknownCniArgs { keys: unknown });
    }
    Ok(pod)
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn commands_parse_exactly() {
        for command in [
            Command::Add,
            Command::Del,
            Command::Check,
            Command::Version,
            Command::Status,
            Command::Gc,
        ] {
            assert_eq!(Command::parse(command.as_str()), Some(command));
        }
        assert_eq!(Command::parse("add"), None);
        assert_eq!(command(&env(&[])).unwrap(), None);
        assert_eq!(command(&env(&[(COMMAND, "")])).unwrap(), None);
        let err = command(&env(&[(COMMAND, "ADDD")])).unwrap_err();
        assert_eq!(err.code(), 4);
        assert!(err.to_string().contains("\"ADDD\""), "{err}");
    }

    #[test]
    fn required_variables_per_command() {
        let full = [
            (CONTAINERID, "c1"),
            (NETNS, "/run/netns/a"),
            (IFNAME, "eth0"),
            (PATH, "/opt/cni/bin"),
        ];
        let all = env(&full);
        for command in [
            Command::Add,
            Command::Del,
            Command::Check,
            Command::Version,
            Command::Status,
            Command::Gc,
        ] {
            assert!(Env::read(&all, command).is_ok(), "{command:?}");
        }
        let missing = |command, names: &[&str]| {
            let vars: Vec<_> = full
                .iter()
                .copied()
                .filter(|(k, _)| !names.contains(k))
                .collect();
            Env::read(&env(&vars), command)
        };
        // ADD without container id and netns names both.
        let err = missing(Command::Add, &[CONTAINERID, NETNS]).unwrap_err();
        assert_eq!(err.code(), 4);
        assert_eq!(
            err.to_string(),
            "required environment variables missing for ADD: CNI_CONTAINERID, CNI_NETNS"
        );
        assert!(missing(Command::Check, &[IFNAME]).is_err());
        assert!(missing(Command::Add, &[PATH]).is_ok());
        assert!(missing(Command::Del, &[NETNS, PATH]).is_ok());
        assert!(missing(Command::Del, &[CONTAINERID]).is_err());
        assert!(missing(Command::Gc, &[PATH]).is_err());
        assert!(missing(Command::Gc, &[CONTAINERID, NETNS, IFNAME]).is_ok());
        assert!(missing(Command::Status, &[CONTAINERID, NETNS, IFNAME, PATH]).is_ok());
        // Empty counts as missing.
        let err = Env::read(&env(&[(CONTAINERID, ""), (IFNAME, "eth0")]), Command::Del);
        assert!(err.is_err());
    }

    #[test]
    fn env_values_are_collected() {
        let e = Env::read(
            &env(&[
                (CONTAINERID, "c1"),
                (IFNAME, "eth0"),
                (ARGS, "K8S_POD_NAME=web"),
                (PATH, "/opt/cni/bin::/usr/libexec/cni"),
            ]),
            Command::Del,
        )
        .unwrap();
        assert_eq!(e.netns, None);
        assert_eq!(e.path, ["/opt/cni/bin", "/usr/libexec/cni"]);
        let target = e.target().unwrap();
        assert_eq!(target.container_id, "c1");
        assert_eq!(target.pod.name.as_deref(), Some("web"));
    }

    #[test]
    fn container_ids() {
        for ok in ["a", "0", "abc123", "a_b.c-d", "3f6940ab5ab43bc5"] {
            validate_container_id(ok).unwrap();
        }
        for (bad, needle) in [
            ("", "empty"),
            ("-a", "starts with '-'"),
            ("_a", "starts with '_'"),
            ("a b", "contains ' '"),
            ("a/b", "contains '/'"),
            ("é", "starts with 'é'"),
        ] {
            let err = validate_container_id(bad).unwrap_err();
            assert_eq!(err.code(), 4);
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("CNI_CONTAINERID {bad:?}")),
                "{msg}"
            );
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn interface_names() {
        for ok in ["eth0", "e", "net1", "a.b-c_d", "fifteen-bytes15", "ünï"] {
            validate_ifname(ok).unwrap();
        }
        for (bad, needle) in [
            ("", "empty"),
            ("sixteen-bytes-16", "16 bytes long"),
            (".", "reserved"),
            ("..", "reserved"),
            ("eth0/x", "contains '/'"),
            ("eth0:1", "contains ':'"),
            ("eth 0", "contains ' '"),
            ("eth\t0", "contains '\\t'"),
            ("eth\u{FFFD}", "UTF-8"),
        ] {
            let err = validate_ifname(bad).unwrap_err();
            assert_eq!(err.code(), 4);
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!(
                    "CNI_IFNAME {bad:?} is not a valid interface name: "
                )),
                "{msg}"
            );
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn netns_paths() {
        validate_netns("/run/netns/a").unwrap();
        validate_netns("/proc/42/ns/net").unwrap();
        for bad in ["run/netns/a", "netns", "./a", "/run/\u{FFFD}"] {
            assert_eq!(validate_netns(bad).unwrap_err().code(), 4, "{bad}");
        }
    }

    #[test]
    fn cni_args_kubernetes_keys() {
        let pod = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=7f2c-11",
        )
        .unwrap();
        assert_eq!(
            pod,
            PodRef {
                namespace: Some("default".into()),
                name: Some("web-0".into()),
                uid: Some("7f2c-11".into()),
                infra_container_id: Some("c0ffee".into()),
            }
        );
        assert_eq!(parse_cni_args("").unwrap(), PodRef::default());
        // Trailing separator, empty value, repeated key (last wins), '=' in a value.
        let pod =
            parse_cni_args("K8S_POD_NAME=a;K8S_POD_NAME=b;K8S_POD_UID=;K8S_POD_NAMESPACE=x=y;")
                .unwrap();
        assert_eq!(pod.name.as_deref(), Some("b"));
        assert_eq!(pod.uid, None);
        assert_eq!(pod.namespace.as_deref(), Some("x=y"));
    }

    #[test]
    fn cni_args_unknown_keys_and_ignore_unknown() {
        let err = parse_cni_args("K8S_POD_NAME=web;FOO=1;BAR=2").unwrap_err();
        assert_eq!(err.code(), 4);
        assert!(err.to_string().contains(r#"["FOO", "BAR"]"#), "{err}");
        // Keys are case-sensitive.
        assert!(parse_cni_args("k8s_pod_name=web").is_err());
        for flag in ["1", "true", "TRUE", "True"] {
            let pod =
                parse_cni_args(&format!("FOO=1;IgnoreUnknown={flag};K8S_POD_NAME=web")).unwrap();
            assert_eq!(pod.name.as_deref(), Some("web"));
        }
        for flag in ["0", "false"] {
            assert!(parse_cni_args(&format!("FOO=1;IgnoreUnknown={flag}")).is_err());
        }
        // podman's form
        parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=pod").unwrap();
    }

    #[test]
    fn cni_args_malformed_pairs() {
        for (raw, needle) in [
            ("K8S_POD_NAME", "no '='"),
            ("IgnoreUnknown=1;junk", "no '='"),
            ("=x", "key is empty"),
            ("IgnoreUnknown=yes", "IgnoreUnknown must be"),
        ] {
            let err = parse_cni_args(raw).unwrap_err();
            assert_eq!(err.code(), 4, "{raw}");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
