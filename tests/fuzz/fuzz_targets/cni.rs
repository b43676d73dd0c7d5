//! The CNI plugin's whole invocation (`sluice_cni::run`): environment, stdin and
//! the daemon's answer all come from the input, so the environment and
//! network-configuration parsers, the request building and the result printing
//! in every CNI version see hostile values.
//!
//! Input: three sections split by 0xff bytes: `KEY=VALUE` lines of the
//! environment, the stdin bytes, and the daemon's JSON answer.

#![no_main]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sluice_cni::{run, Daemon};
use sluice_control::api::{ClientError, Request, Response};

struct Scripted<'a>(&'a [u8]);

impl Daemon for Scripted<'_> {
    fn call(&mut self, _socket: &Path, request: &Request) -> Result<Response, ClientError> {
        // Every request must encode: the plugin only builds what the daemon reads.
        let line = sluice_control::api::encode(request);
        assert!(serde_json::from_slice::<Request>(line.trim_ascii_end()).is_ok());
        serde_json::from_slice(self.0).map_err(|_| ClientError::Timeout {
            op: request.op(),
            after: Duration::from_secs(5),
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0xff);
    let env_text = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let stdin = parts.next().unwrap_or_default();
    let answer = parts.next().unwrap_or_default();
    let env: HashMap<String, String> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let out = run(&env, &mut &stdin[..], &mut Scripted(answer));
    if out.exit_code != 0 && !out.stdout.is_empty() {
        // A failure prints one CNI error object.
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("error output is JSON");
        assert!(v["code"].is_u64(), "error without a code: {v}");
    }
});
