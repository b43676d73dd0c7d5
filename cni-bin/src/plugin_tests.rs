//! Whole invocations against a scripted daemon.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::{json, Value};
use sluice_control::api::{
    code, Answer, ApiError, Attachment, AttachmentKey, ClientError, CniAttach, CniDetach, PodRef,
    Request, Response, RouteSpec, DEFAULT_SOCKET,
};

use super::{run, Daemon, Outcome, MAX_STDIN};

type Script = Box<dyn FnMut(&Request) -> Result<Response, ClientError>>;

/// Answers every request with `answer` and records what it was asked.
struct Fake {
    answer: Script,
    calls: Vec<(PathBuf, Request)>,
}

impl Fake {
    fn answering(answer: impl FnMut(&Request) -> Result<Response, ClientError> + 'static) -> Fake {
        Fake {
            answer: Box::new(answer),
            calls: Vec::new(),
        }
    }

    fn ok(answer: Answer) -> Fake {
        Fake::answering(move |_| Ok(Response::Ok(answer.clone())))
    }

    fn error(err: ApiError) -> Fake {
        Fake::answering(move |_| Ok(Response::Error(err.clone())))
    }

    fn unreachable() -> Fake {
        Fake::answering(|_| {
            Err(ClientError::Unreachable {
                socket: PathBuf::from(DEFAULT_SOCKET),
                source: io::ErrorKind::NotFound.into(),
            })
        })
    }

    /// A daemon that must not be asked anything.
    fn untouched() -> Fake {
        Fake::answering(|request| panic!("daemon called with {request:?}"))
    }

    fn only_request(&self) -> &Request {
        assert_eq!(self.calls.len(), 1, "{:?}", self.calls);
        &self.calls[0].1
    }
}

impl Daemon for Fake {
    fn call(&mut self, socket: &Path, request: &Request) -> Result<Response, ClientError> {
        self.calls.push((socket.to_path_buf(), request.clone()));
        (self.answer)(request)
    }
}

const NETNS: &str = "/run/netns/pod-a";

fn attachment() -> Attachment {
    Attachment {
        ifname: "eth0".into(),
        mac: "02:00:c6:13:01:05".into(),
        mtu: 1450,
        sandbox: NETNS.into(),
        address: "198.19.1.5/32".into(),
        gateway: "169.254.1.1".into(),
        routes: vec![RouteSpec {
            dst: "0.0.0.0/0".into(),
            gw: Some("169.254.1.1".into()),
        }],
    }
}

fn env(command: &str) -> HashMap<String, String> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", NETNS),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=7f2c;\
             K8S_POD_INFRA_CONTAINER_ID=c0ffee",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn without(mut env: HashMap<String, String>, key: &str) -> HashMap<String, String> {
    env.remove(key);
    env
}

fn with_var(mut env: HashMap<String, String>, key: &str, value: &str) -> HashMap<String, String> {
    env.insert(key.to_owned(), value.to_owned());
    env
}

fn conf(version: &str) -> Value {
    json!({"cniVersion": version, "name": "sluice", "type": "sluice", "mtu": 1450})
}

fn conf_with(version: &str, key: &str, value: Value) -> Value {
    let mut conf = conf(version);
    conf[key] = value;
    conf
}

fn prev_result() -> Value {
    json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "mac": "02:00:c6:13:01:05", "sandbox": NETNS}],
        "ips": [{"address": "198.19.1.5/32", "gateway": "169.254.1.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
        "dns": {}
    })
}

fn invoke(env: &HashMap<String, String>, stdin: &[u8], daemon: &mut Fake) -> Outcome {
    run(env, &mut &stdin[..], daemon)
}

fn invoke_json(env: &HashMap<String, String>, stdin: &Value, daemon: &mut Fake) -> Outcome {
    invoke(env, &serde_json::to_vec(stdin).unwrap(), daemon)
}

fn stdout_json(outcome: &Outcome) -> Value {
    serde_json::from_slice(&outcome.stdout).unwrap_or_else(|err| {
        panic!(
            "stdout {:?}: {err}",
            String::from_utf8_lossy(&outcome.stdout)
        )
    })
}

/// Asserts a failed invocation and returns (code, msg) after checking the error's shape.
fn failed(outcome: &Outcome, version: &str) -> (u64, String) {
    assert_eq!(outcome.exit_code, 1, "{outcome:?}");
    let err = stdout_json(outcome);
    assert_eq!(err["cniVersion"], version, "{err}");
    let keys: Vec<&String> = err.as_object().unwrap().keys().collect();
    assert!(
        keys.iter()
            .all(|k| ["cniVersion", "code", "msg", "details"].contains(&k.as_str())),
        "{err}"
    );
    (
        err["code"].as_u64().unwrap(),
        err["msg"].as_str().unwrap().to_owned(),
    )
}

fn succeeded_silently(outcome: &Outcome) {
    assert_eq!(outcome.exit_code, 0, "{outcome:?}");
    assert!(outcome.stdout.is_empty(), "{outcome:?}");
}

// ---- no command, VERSION, unknown command ----

#[test]
fn without_command_it_describes_itself() {
    let outcome = invoke(&HashMap::new(), b"", &mut Fake::untouched());
    assert_eq!(outcome.exit_code, 0);
    assert!(outcome.stdout.is_empty());
    let about = String::from_utf8(outcome.stderr).unwrap();
    assert!(about.starts_with("Sluice CNI plugin "), "{about}");
    assert!(
        about.contains("0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"),
        "{about}"
    );
}

#[test]
fn version_answers_without_reading_stdin() {
    struct Failing;
    impl io::Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            panic!("VERSION read stdin")
        }
    }
    let vars = [("CNI_COMMAND".to_owned(), "VERSION".to_owned())].into();
    let outcome = run(&vars, &mut Failing, &mut Fake::untouched());
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(
        stdout_json(&outcome),
        json!({"cniVersion": "1.1.0",
               "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn unknown_command_is_code_4() {
    let outcome = invoke_json(&env("UPDATE"), &conf("1.0.0"), &mut Fake::untouched());
    let (code, msg) = failed(&outcome, "1.1.0");
    assert_eq!(code, 4);
    assert!(msg.contains("\"UPDATE\""), "{msg}");
}

// ---- stdin ----

#[test]
fn stdin_failures() {
    struct Broken;
    impl io::Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }
    let outcome = run(&env("ADD"), &mut Broken, &mut Fake::untouched());
    assert_eq!(failed(&outcome, "1.1.0").0, 5);

    let huge = vec![b' '; MAX_STDIN + 1];
    let outcome = invoke(&env("ADD"), &huge, &mut Fake::untouched());
    assert_eq!(failed(&outcome, "1.1.0").0, 6);

    let outcome = invoke(&env("ADD"), b"garbage", &mut Fake::untouched());
    let (code, msg) = failed(&outcome, "1.1.0");
    assert_eq!(code, 6);
    assert!(
        msg.starts_with("the network configuration on stdin is not valid"),
        "{msg}"
    );
}

// ---- ADD ----

#[test]
fn add_forwards_the_attachment_and_answers_in_every_version() {
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let mut daemon = Fake::ok(Answer::Attached(attachment()));
        let outcome = invoke_json(&env("ADD"), &conf(version), &mut daemon);
        assert_eq!(outcome.exit_code, 0, "{outcome:?}");
        assert_eq!(
            daemon.only_request(),
            &Request::CniAdd(CniAttach {
                container_id: "c0ffee".into(),
                netns: NETNS.into(),
                ifname: "eth0".into(),
                pod: PodRef {
                    namespace: Some("default".into()),
                    name: Some("web-0".into()),
                    uid: Some("7f2c".into()),
                    infra_container_id: Some("c0ffee".into()),
                },
                mtu: Some(1450),
            })
        );
        assert_eq!(daemon.calls[0].0, PathBuf::from(DEFAULT_SOCKET));
        let result = stdout_json(&outcome);
        assert_eq!(result["cniVersion"], version);
        assert_eq!(result["interfaces"][0]["sandbox"], NETNS);
        assert_eq!(result["ips"][0]["address"], "198.19.1.5/32");
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            version.starts_with("0."),
            "{result}"
        );
        assert_eq!(
            result["interfaces"][0].get("mtu").is_some(),
            version == "1.1.0",
            "{result}"
        );
    }
}

#[test]
fn add_uses_the_configured_socket_and_leaves_mtu_to_sluiced() {
    let mut value = conf_with("1.0.0", "socket", json!("/tmp/elsewhere.sock"));
    value.as_object_mut().unwrap().remove("mtu");
    let mut daemon = Fake::ok(Answer::Attached(attachment()));
    let outcome = invoke_json(&env("ADD"), &value, &mut daemon);
    assert_eq!(outcome.exit_code, 0, "{outcome:?}");
    assert_eq!(daemon.calls[0].0, PathBuf::from("/tmp/elsewhere.sock"));
    let Request::CniAdd(attach) = daemon.only_request() else {
        panic!()
    };
    assert_eq!(attach.mtu, None);
}

#[test]
fn add_fills_an_empty_sandbox_and_rejects_a_different_one() {
    let empty = Attachment {
        sandbox: String::new(),
        ..attachment()
    };
    let outcome = invoke_json(
        &env("ADD"),
        &conf("1.0.0"),
        &mut Fake::ok(Answer::Attached(empty)),
    );
    assert_eq!(stdout_json(&outcome)["interfaces"][0]["sandbox"], NETNS);

    let other = Attachment {
        sandbox: "/proc/1/ns/net".into(),
        ..attachment()
    };
    let outcome = invoke_json(
        &env("ADD"),
        &conf("1.0.0"),
        &mut Fake::ok(Answer::Attached(other)),
    );
    let (code, msg) = failed(&outcome, "1.0.0");
    assert_eq!(code, u64::from(code::PROTOCOL));
    assert!(msg.contains("/proc/1/ns/net"), "{msg}");
}

#[test]
fn add_rejects_odd_daemon_answers() {
    let wrong_if = Attachment {
        ifname: "eth1".into(),
        ..attachment()
    };
    let bad_addr = Attachment {
        address: "198.19.1.5".into(),
        ..attachment()
    };
    for answer in [
        Answer::Done,
        Answer::Json(json!({})),
        Answer::Attached(wrong_if),
        Answer::Attached(bad_addr),
    ] {
        let outcome = invoke_json(&env("ADD"), &conf("1.1.0"), &mut Fake::ok(answer.clone()));
        assert_eq!(
            failed(&outcome, "1.1.0").0,
            u64::from(code::PROTOCOL),
            "{answer:?}"
        );
    }
}

#[test]
fn add_passes_daemon_errors_through() {
    let mut daemon = Fake::error(
        ApiError::new(code::POOL_EXHAUSTED, "no free address in 198.19.1.0/26")
            .with_details("64 of 64 in use"),
    );
    let outcome = invoke_json(&env("ADD"), &conf("0.4.0"), &mut daemon);
    failed(&outcome, "0.4.0");
    assert_eq!(
        stdout_json(&outcome),
        json!({"cniVersion": "0.4.0", "code": 100, "msg": "no free address in 198.19.1.0/26",
               "details": "64 of 64 in use"})
    );
}

#[test]
fn add_with_daemon_unreachable_is_code_11() {
    let outcome = invoke_json(&env("ADD"), &conf("1.1.0"), &mut Fake::unreachable());
    let (code, msg) = failed(&outcome, "1.1.0");
    assert_eq!(code, 11);
    assert!(
        msg.contains(DEFAULT_SOCKET) && msg.contains("try again later"),
        "{msg}"
    );
}

#[test]
fn add_environment_errors_are_code_4_in_the_requested_version() {
    let cases = [
        (without(env("ADD"), "CNI_CONTAINERID"), "CNI_CONTAINERID"),
        (without(env("ADD"), "CNI_NETNS"), "CNI_NETNS"),
        (without(env("ADD"), "CNI_IFNAME"), "CNI_IFNAME"),
        (
            with_var(env("ADD"), "CNI_CONTAINERID", "-bad"),
            "CNI_CONTAINERID \"-bad\"",
        ),
        (
            with_var(env("ADD"), "CNI_IFNAME", "eth0/x"),
            "CNI_IFNAME \"eth0/x\" is not a valid interface name: ",
        ),
        (
            with_var(env("ADD"), "CNI_NETNS", "pod-a"),
            "CNI_NETNS \"pod-a\"",
        ),
        (
            with_var(env("ADD"), "CNI_ARGS", "K8S_POD_NAME=a;FOO=b"),
            "unknown keys [\"FOO\"]",
        ),
        (
            with_var(env("ADD"), "CNI_ARGS", "K8S_POD_NAME"),
            "CNI_ARGS pair",
        ),
    ];
    for (vars, needle) in cases {
        let outcome = invoke_json(&vars, &conf("0.3.1"), &mut Fake::untouched());
        let (code, msg) = failed(&outcome, "0.3.1");
        assert_eq!(code, 4, "{msg}");
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }
}

#[test]
fn cni_args_without_ignore_unknown_are_strict_and_with_it_lenient() {
    let vars = with_var(env("ADD"), "CNI_ARGS", "K8S_POD_NAME=web-0");
    let mut daemon = Fake::ok(Answer::Attached(attachment()));
    assert_eq!(invoke_json(&vars, &conf("1.1.0"), &mut daemon).exit_code, 0);
    let vars = with_var(
        env("ADD"),
        "CNI_ARGS",
        "FOO=1;IgnoreUnknown=true;K8S_POD_NAME=web-0",
    );
    let mut daemon = Fake::ok(Answer::Attached(attachment()));
    assert_eq!(invoke_json(&vars, &conf("1.1.0"), &mut daemon).exit_code, 0);
    let Request::CniAdd(attach) = daemon.only_request() else {
        panic!()
    };
    assert_eq!(attach.pod.name.as_deref(), Some("web-0"));
    assert_eq!(attach.pod.namespace, None);
}

#[test]
fn add_configuration_errors() {
    let cases = [
        (conf("9.9.9"), 1, "1.1.0"),
        (
            conf_with("1.0.0", "ipam", json!({"type": "host-local"})),
            7,
            "1.0.0",
        ),
        (conf_with("1.0.0", "type", json!("bridge")), 7, "1.0.0"),
        (conf_with("1.0.0", "mtu", json!(10)), 7, "1.0.0"),
        (conf_with("1.0.0", "prevResult", prev_result()), 7, "1.0.0"),
        (conf_with("1.0.0", "prevResult", json!("x")), 6, "1.0.0"),
    ];
    for (value, expected, version) in cases {
        let outcome = invoke_json(&env("ADD"), &value, &mut Fake::untouched());
        let (code, msg) = failed(&outcome, version);
        assert_eq!(code, expected, "{value}: {msg}");
    }
    let outcome = invoke_json(
        &env("ADD"),
        &conf_with("1.0.0", "prevResult", prev_result()),
        &mut Fake::untouched(),
    );
    assert!(failed(&outcome, "1.0.0").1.contains("must come first"));
}

// ---- DEL ----

#[test]
fn del_forwards_and_prints_nothing() {
    let vars = without(env("DEL"), "CNI_NETNS");
    let mut daemon = Fake::ok(Answer::Done);
    let outcome = invoke_json(
        &vars,
        &conf_with("0.4.0", "prevResult", prev_result()),
        &mut daemon,
    );
    succeeded_silently(&outcome);
    assert_eq!(
        daemon.only_request(),
        &Request::CniDel(CniDetach {
            container_id: "c0ffee".into(),
            ifname: "eth0".into(),
            netns: None,
            pod: PodRef {
                namespace: Some("default".into()),
                name: Some("web-0".into()),
                uid: Some("7f2c".into()),
                infra_container_id: Some("c0ffee".into()),
            },
        })
    );
    let mut daemon = Fake::ok(Answer::Done);
    succeeded_silently(&invoke_json(&env("DEL"), &conf("0.3.0"), &mut daemon));
    let Request::CniDel(detach) = daemon.only_request() else {
        panic!()
    };
    assert_eq!(detach.netns.as_deref(), Some(NETNS));
}

#[test]
fn del_failures() {
    let outcome = invoke_json(&env("DEL"), &conf("1.0.0"), &mut Fake::unreachable());
    assert_eq!(failed(&outcome, "1.0.0").0, 11);
    let outcome = invoke_json(
        &env("DEL"),
        &conf("1.0.0"),
        &mut Fake::error(ApiError::new(code::TRY_AGAIN_LATER, "sluiced is starting")),
    );
    assert_eq!(
        failed(&outcome, "1.0.0"),
        (11, "sluiced is starting".into())
    );
    let outcome = invoke_json(
        &env("DEL"),
        &conf_with("1.0.0", "prevResult", json!({"ips": [{"address": "x"}]})),
        &mut Fake::untouched(),
    );
    assert_eq!(failed(&outcome, "1.0.0").0, 6);
    let outcome = invoke_json(
        &without(env("DEL"), "CNI_IFNAME"),
        &conf("1.0.0"),
        &mut Fake::untouched(),
    );
    assert_eq!(failed(&outcome, "1.0.0").0, 4);
}

// ---- CHECK ----

fn check_conf(version: &str) -> Value {
    conf_with(version, "prevResult", prev_result())
}

#[test]
fn check_forwards_after_verifying_prev_result() {
    for answer in [Answer::Done, Answer::Attached(attachment())] {
        let mut daemon = Fake::ok(answer);
        succeeded_silently(&invoke_json(
            &env("CHECK"),
            &check_conf("1.0.0"),
            &mut daemon,
        ));
        assert!(matches!(daemon.only_request(), Request::CniCheck(a) if a.netns == NETNS));
    }
}

#[test]
fn check_needs_version_0_4_0() {
    for version in ["0.3.0", "0.3.1"] {
        let outcome = invoke_json(&env("CHECK"), &check_conf(version), &mut Fake::untouched());
        let (code, msg) = failed(&outcome, version);
        assert_eq!(code, 1);
        assert!(msg.contains("does not define CHECK"), "{msg}");
    }
    let mut daemon = Fake::ok(Answer::Done);
    succeeded_silently(&invoke_json(
        &env("CHECK"),
        &check_conf("0.4.0"),
        &mut daemon,
    ));
}

#[test]
fn check_failures() {
    let outcome = invoke_json(&env("CHECK"), &conf("1.1.0"), &mut Fake::untouched());
    let (code, msg) = failed(&outcome, "1.1.0");
    assert_eq!(code, 7);
    assert!(msg.contains("prevResult"), "{msg}");

    let other_ns = with_var(env("CHECK"), "CNI_NETNS", "/run/netns/pod-b");
    let outcome = invoke_json(&other_ns, &check_conf("1.1.0"), &mut Fake::untouched());
    let (code, msg) = failed(&outcome, "1.1.0");
    assert_eq!(code, u64::from(code::CHECK_FAILED));
    assert!(msg.contains("/run/netns/pod-b"), "{msg}");

    let other_if = with_var(env("CHECK"), "CNI_IFNAME", "net1");
    let outcome = invoke_json(&other_if, &check_conf("1.1.0"), &mut Fake::untouched());
    assert_eq!(failed(&outcome, "1.1.0").0, u64::from(code::CHECK_FAILED));

    let moved = Attachment {
        address: "198.19.1.6/32".into(),
        ..attachment()
    };
    let outcome = invoke_json(
        &env("CHECK"),
        &check_conf("1.1.0"),
        &mut Fake::ok(Answer::Attached(moved)),
    );
    let (code, msg) = failed(&outcome, "1.1.0");
    assert_eq!(code, u64::from(code::CHECK_FAILED));
    assert!(msg.contains("198.19.1.6/32"), "{msg}");

    let new_mac = Attachment {
        mac: "02:00:00:00:00:01".into(),
        ..attachment()
    };
    let outcome = invoke_json(
        &env("CHECK"),
        &check_conf("1.1.0"),
        &mut Fake::ok(Answer::Attached(new_mac)),
    );
    assert!(failed(&outcome, "1.1.0").1.contains("MAC"));

    let outcome = invoke_json(
        &env("CHECK"),
        &check_conf("1.1.0"),
        &mut Fake::error(ApiError::new(
            code::UNKNOWN_CONTAINER,
            "no attachment c0ffee/eth0",
        )),
    );
    assert_eq!(failed(&outcome, "1.1.0").0, 3);

    let outcome = invoke_json(
        &env("CHECK"),
        &check_conf("1.1.0"),
        &mut Fake::ok(Answer::Json(json!(1))),
    );
    assert_eq!(failed(&outcome, "1.1.0").0, u64::from(code::PROTOCOL));
}

// ---- STATUS ----

fn status_env() -> HashMap<String, String> {
    [("CNI_COMMAND".to_owned(), "STATUS".to_owned())].into()
}

#[test]
fn status_ready_prints_nothing() {
    let mut daemon = Fake::ok(Answer::Ready {
        ready: true,
        reason: None,
    });
    succeeded_silently(&invoke_json(&status_env(), &conf("1.1.0"), &mut daemon));
    assert_eq!(daemon.only_request(), &Request::CniStatus);
}

#[test]
fn status_not_available() {
    let not_ready = Fake::ok(Answer::Ready {
        ready: false,
        reason: Some("waiting for the node's pod CIDR".into()),
    });
    let cases: Vec<(Fake, u64, &str)> = vec![
        (not_ready, 50, "waiting for the node's pod CIDR"),
        (Fake::unreachable(), 50, DEFAULT_SOCKET),
        (Fake::ok(Answer::Done), 50, "cni_status with done"),
        (
            Fake::error(ApiError::new(code::TRY_AGAIN_LATER, "starting")),
            50,
            "starting",
        ),
        (
            Fake::error(ApiError::new(
                code::NOT_AVAILABLE_DEGRADED,
                "dataplane stalled",
            )),
            51,
            "dataplane stalled",
        ),
    ];
    for (mut daemon, expected, needle) in cases {
        let outcome = invoke_json(&status_env(), &conf("1.1.0"), &mut daemon);
        let (code, msg) = failed(&outcome, "1.1.0");
        assert_eq!(code, expected, "{msg}");
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }
}

#[test]
fn status_and_gc_need_version_1_1_0() {
    for command in ["STATUS", "GC"] {
        for version in ["0.3.1", "0.4.0", "1.0.0"] {
            let value = conf_with(version, "cni.dev/valid-attachments", json!([]));
            let outcome = invoke_json(&env(command), &value, &mut Fake::untouched());
            let (code, msg) = failed(&outcome, version);
            assert_eq!(code, 1);
            assert!(msg.contains(&format!("does not define {command}")), "{msg}");
        }
    }
}

// ---- GC ----

#[test]
fn gc_forwards_the_valid_attachments() {
    let vars: HashMap<String, String> = [
        ("CNI_COMMAND".to_owned(), "GC".to_owned()),
        ("CNI_PATH".to_owned(), "/opt/cni/bin".to_owned()),
    ]
    .into();
    let value = conf_with(
        "1.1.0",
        "cni.dev/valid-attachments",
        json!([{"containerID": "c1", "ifname": "eth0"}]),
    );
    let mut daemon = Fake::ok(Answer::Done);
    succeeded_silently(&invoke_json(&vars, &value, &mut daemon));
    assert_eq!(
        daemon.only_request(),
        &Request::CniGc {
            valid_attachments: vec![AttachmentKey {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        }
    );

    let outcome = invoke_json(
        &without(vars.clone(), "CNI_PATH"),
        &value,
        &mut Fake::untouched(),
    );
    assert_eq!(failed(&outcome, "1.1.0").0, 4);

    let outcome = invoke_json(&vars, &conf("1.1.0"), &mut Fake::untouched());
    let (code, msg) = failed(&outcome, "1.1.0");
    assert_eq!(code, 7);
    assert!(msg.contains("cni.dev/valid-attachments"), "{msg}");

    let outcome = invoke_json(&vars, &value, &mut Fake::unreachable());
    assert_eq!(failed(&outcome, "1.1.0").0, 11);
}

// ---- no input makes it panic or print anything but a CNI error ----

fn any_env() -> impl Strategy<Value = HashMap<String, String>> {
    let command = prop_oneof![
        Just("ADD"),
        Just("DEL"),
        Just("CHECK"),
        Just("STATUS"),
        Just("GC"),
        Just("VERSION"),
        Just(""),
        Just("add"),
    ];
    (
        command,
        proptest::option::of(".{0,20}"),
        proptest::option::of(".{0,20}"),
        proptest::option::of(".{0,20}"),
        proptest::option::of("[A-Za-z_=;0-9]{0,40}"),
    )
        .prop_map(|(command, id, netns, ifname, args)| {
            let mut env = HashMap::from([("CNI_COMMAND".to_owned(), command.to_owned())]);
            let mut put = |k: &str, v: Option<String>| {
                if let Some(v) = v {
                    env.insert(k.to_owned(), v);
                }
            };
            put("CNI_CONTAINERID", id);
            put("CNI_NETNS", netns);
            put("CNI_IFNAME", ifname);
            put("CNI_ARGS", args);
            put("CNI_PATH", Some("/opt/cni/bin".into()));
            env
        })
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("cniVersion".to_owned()),
                    Just("name".to_owned()),
                    Just("type".to_owned()),
                    Just("mtu".to_owned()),
                    Just("socket".to_owned()),
                    Just("dns".to_owned()),
                    Just("prevResult".to_owned()),
                    Just("interfaces".to_owned()),
                    Just("ips".to_owned()),
                    Just("address".to_owned()),
                    Just("cni.dev/valid-attachments".to_owned()),
                    ".{0,6}",
                ],
                inner,
                0..6,
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn assert_cni_shaped(outcome: &Outcome) {
    match outcome.exit_code {
        0 => {
            if !outcome.stdout.is_empty() {
                let value: Value = serde_json::from_slice(&outcome.stdout).unwrap();
                assert!(value["cniVersion"].is_string(), "{value}");
            }
        }
        1 => {
            let err: Value = serde_json::from_slice(&outcome.stdout).unwrap();
            assert!(err["code"].is_u64() && err["msg"].is_string(), "{err}");
            assert!(err["cniVersion"].is_string(), "{err}");
        }
        other => panic!("exit code {other}"),
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_give_a_cni_answer(vars in any_env(), stdin in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut daemon = Fake::ok(Answer::Attached(attachment()));
        assert_cni_shaped(&invoke(&vars, &stdin, &mut daemon));
    }

    #[test]
    fn arbitrary_configurations_give_a_cni_answer(vars in any_env(), body in any_json(), version in prop_oneof![Just("0.3.1"), Just("1.1.0"), Just("2")]) {
        let mut value = conf(version);
        if let (Some(conf), Value::Object(extra)) = (value.as_object_mut(), body.clone()) {
            conf.extend(extra);
        }
        for stdin in [value, body] {
            let mut daemon = Fake::ok(Answer::Attached(attachment()));
            assert_cni_shaped(&invoke_json(&vars, &stdin, &mut daemon));
        }
    }
}
