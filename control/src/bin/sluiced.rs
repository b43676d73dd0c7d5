//! sluiced: Sluice's node daemon. Reads its configuration, brings up the
//! uplink, host and pod ports and the workers, and serves the API until
//! SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use sluice_control::config::{Config, UplinkFacts};
use sluice_control::daemon::{self, net};

#[derive(Parser, Debug)]
#[command(
    name = "sluiced",
    version,
    about = "Sluice node daemon: userspace CNI dataplane and agent"
)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = "/etc/sluice/sluiced.toml")]
    config: PathBuf,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long)]
    log_level: Option<String>,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Print a fully commented example configuration and exit.
    #[arg(long)]
    print_example_config: bool,
    /// If the node state file and its backup are both unusable, set them aside and
    /// rebuild the node's endpoints from the pod TAP devices still present (each
    /// carries its record in its alias), then start as usual.
    #[arg(long)]
    recover: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_example_config {
        print!("{}", sluice_control::config::EXAMPLE);
        return ExitCode::SUCCESS;
    }
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluiced: {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    let level = args
        .log_level
        .clone()
        .unwrap_or_else(|| cfg.log_level.clone());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();

    let uplink = match net::uplink_info(&cfg.uplink) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("sluiced: {e}");
            return ExitCode::from(2);
        }
    };
    let facts = UplinkFacts {
        mtu: uplink.mtu,
        mac: uplink.mac,
        ipv4: uplink.ipv4.iter().map(|(a, _)| *a).collect(),
    };
    let resolved = match cfg.resolve(&facts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluiced: {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    let settings = match daemon::Settings::from_resolved(&resolved) {
        Ok(s) => daemon::Settings {
            recover: args.recover,
            ..s
        },
        Err(e) => {
            eprintln!("sluiced: {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("sluiced: cannot handle signal {sig}: {e}");
            return ExitCode::from(1);
        }
    }
    match daemon::run(settings, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("sluiced: {e}");
            ExitCode::from(1)
        }
    }
}
