//! `/opt/cni/bin/sluice`: the CNI plugin binary. See the `sluice_cni` library.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;

use sluice_cni::{run, SocketDaemon};

fn main() -> ExitCode {
    // Lossy on purpose: the library rejects mangled CNI_* values by name.
    let env: HashMap<String, String> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let outcome = run(
        &env,
        &mut std::io::stdin().lock(),
        &mut SocketDaemon::default(),
    );
    // If the runtime closed our stdout there is no one left to tell.
    let _ = std::io::stdout().lock().write_all(&outcome.stdout);
    let _ = std::io::stderr().lock().write_all(&outcome.stderr);
    ExitCode::from(outcome.exit_code)
}
