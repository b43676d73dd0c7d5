//! Fills etcd with simulated Sluice nodes and endpoints, for `scripts/bench-etcd-scale`.
//!
//! ```text
//! etcd_populate --endpoint http://198.18.0.201:2379 --nodes 1000 --pods-per-node 20 \
//!     --cluster-cidr 198.19.0.0/16 --block-size 26 --first-block 16
//! ```
//!
//! Node `simN` gets the record a real node writes (`/sluice/v1/nodes/simN`: underlay address
//! in 198.18.4.0/22 and up, one block), owns its block (`/sluice/v1/blocks/<cidr>`), and has
//! `--pods-per-node` endpoints (`/sluice/v1/endpoints/simN/default/simN-K`). Keys are written
//! in transactions of 100 puts. Prints how long the writes took. With `--delete` it removes
//! every `sim` key again instead.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Instant;

use etcd_client::{Client, DeleteOptions, Txn, TxnOp};
use sluice_control::datastore::keys::{self, EndpointRecord, Key, NodeRecord};
use sluice_dataplane::table::{default_vtep_mac, Mode, Prefix};

struct Args {
    endpoint: String,
    nodes: u32,
    pods_per_node: u32,
    cluster_cidr: Prefix,
    block_size: u8,
    first_block: usize,
    delete: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        endpoint: String::new(),
        nodes: 1000,
        pods_per_node: 20,
        cluster_cidr: "198.19.0.0/16".parse().map_err(|_| "default cidr")?,
        block_size: 26,
        first_block: 16,
        delete: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k}: expected a value"));
        match k.as_str() {
            "--endpoint" => a.endpoint = v()?,
            "--nodes" => a.nodes = v()?.parse().map_err(|e| format!("--nodes: {e}"))?,
            "--pods-per-node" => {
                a.pods_per_node = v()?.parse().map_err(|e| format!("--pods-per-node: {e}"))?
            }
            "--cluster-cidr" => {
                let s = v()?;
                a.cluster_cidr = s
                    .parse()
                    .map_err(|_| format!("--cluster-cidr {s:?}: expected an IPv4 prefix"))?
            }
            "--block-size" => {
                a.block_size = v()?.parse().map_err(|e| format!("--block-size: {e}"))?
            }
            "--first-block" => {
                a.first_block = v()?.parse().map_err(|e| format!("--first-block: {e}"))?
            }
            "--delete" => a.delete = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.endpoint.is_empty() {
        return Err("--endpoint URL is required".into());
    }
    Ok(a)
}

/// Underlay address of simulated node `i`: 198.18.4.0 and up, never on a real node's /24.
fn node_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 4, 1)) + i)
}

async fn run(a: Args) -> Result<(), String> {
    let mut c = Client::connect([a.endpoint.as_str()], None)
        .await
        .map_err(|e| format!("connecting to {}: {e}", a.endpoint))?;
    let t = Instant::now();
    if a.delete {
        for kind in ["nodes/sim", "endpoints/sim"] {
            c.delete(
                format!("{}{kind}", keys::PREFIX),
                Some(DeleteOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        // Blocks one by one: real nodes' blocks stay.
        let blocks: Vec<Prefix> = keys::candidate_blocks(a.cluster_cidr, a.block_size)
            .skip(a.first_block)
            .take(a.nodes as usize)
            .collect();
        for chunk in blocks.chunks(100) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|b| TxnOp::delete(Key::Block(*b).path(), None))
                .collect();
            c.txn(Txn::new().and_then(ops))
                .await
                .map_err(|e| e.to_string())?;
        }
        println!("deleted in {:.3} s", t.elapsed().as_secs_f64());
        return Ok(());
    }
    let blocks: Vec<Prefix> = keys::candidate_blocks(a.cluster_cidr, a.block_size)
        .skip(a.first_block)
        .take(a.nodes as usize)
        .collect();
    if blocks.len() < a.nodes as usize {
        return Err(format!(
            "{} nodes need {} blocks of /{} after the first {}; {} has {}",
            a.nodes,
            a.nodes,
            a.block_size,
            a.first_block,
            a.cluster_cidr,
            blocks.len()
        ));
    }
    let mut ops: Vec<TxnOp> = Vec::new();
    let mut written = 0usize;
    for (i, b) in blocks.iter().enumerate() {
        let name = format!("sim{i}");
        let ip = node_ip(i as u32);
        ops.push(TxnOp::put(Key::Block(*b).path(), name.clone(), None));
        let rec = NodeRecord::new(&name, ip, default_vtep_mac(ip), Mode::Vxlan, &[*b]);
        ops.push(TxnOp::put(
            Key::Node(name.clone()).path(),
            serde_json::to_string(&rec).map_err(|e| e.to_string())?,
            None,
        ));
        for k in 0..a.pods_per_node {
            let pod = format!("{name}-{k}");
            let ep = EndpointRecord {
                ip: b.nth(u64::from(k) + 1),
                namespace: "default".into(),
                name: pod.clone(),
                node: name.clone(),
                labels: Default::default(),
            };
            ops.push(TxnOp::put(
                Key::Endpoint {
                    node: name.clone(),
                    namespace: "default".into(),
                    name: pod,
                }
                .path(),
                serde_json::to_string(&ep).map_err(|e| e.to_string())?,
                None,
            ));
        }
        if ops.len() >= 100 {
            written += ops.len();
            c.txn(Txn::new().and_then(std::mem::take(&mut ops)))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    written += ops.len();
    if !ops.is_empty() {
        c.txn(Txn::new().and_then(ops))
            .await
            .map_err(|e| e.to_string())?;
    }
    println!(
        "wrote {written} keys ({} nodes, {} endpoints) in {:.3} s",
        a.nodes,
        u64::from(a.nodes) * u64::from(a.pods_per_node),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("etcd_populate: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("etcd_populate: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etcd_populate: {e}");
            ExitCode::from(1)
        }
    }
}
