//! `ferry demo`: the whole story on this machine. Four hosts in network
//! namespaces on a bridge, `ferryd` on three of them (two replicas and a
//! witness), the key-value server `ferry-kv` protected by Ferry behind a
//! service address, a client that writes, the primary host killed, the
//! takeover, and every acknowledged write read back; then everything is
//! removed.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use ferry_harness::cluster::{Binaries, Cluster, ClusterConfig, REPLICAS};
use ferry_harness::topology;
use ferry_kv::workload::{Stop, WorkloadConfig};

use crate::exit::{report, BAD_INPUT, PROGRAM_FAILED, SUCCESS};

/// Writes before the fault: clients × writes each.
const CLIENTS: usize = 4;
const WRITES_EACH: u64 = 250;

fn show_status(cluster: &Cluster) {
    println!("    node  role      epoch  logged   acked  replayed  protected");
    for n in cluster.nodes() {
        match cluster.app_status(&n.name, Duration::from_secs(2)) {
            Some(a) => println!(
                "    {:<5} {:<9} {:>5}  {:>6}  {:>6}  {:>8}  {}",
                n.name,
                a.role.as_str(),
                a.epoch,
                a.logged.map(|v| v.to_string()).unwrap_or("-".into()),
                a.acknowledged.map(|v| v.to_string()).unwrap_or("-".into()),
                a.replayed.map(|v| v.to_string()).unwrap_or("-".into()),
                match (a.role.as_str(), a.protected) {
                    ("primary", Some(true)) => "yes",
                    ("primary", Some(false)) => "no (no backup in sync)",
                    _ => "-",
                }
            ),
            None => println!("    {:<5} (no answer)", n.name),
        }
    }
}

/// Run the story; returns the exit code.
pub fn run() -> anyhow::Result<u8> {
    if let Err(e) = topology::require(false) {
        return Ok(report(
            BAD_INPUT,
            format!("the demo builds network namespaces and cannot run here: {e}"),
        ));
    }
    let binaries = Binaries::locate();
    if let Err(e) = binaries.check_all() {
        return Ok(report(BAD_INPUT, e));
    }
    let id = topology::new_run_id();
    println!("Ferry keeps a program running, with every acknowledged write, when its host dies.");
    println!("This demo builds four hosts on this machine and kills one of them.\n");

    println!("1. Hosts: network namespaces ferry-chaos-{id}-{{n1,n2,w,client}} on a bridge, 10.99.0.0/24.");
    let mut cluster = Cluster::build(
        &id,
        ClusterConfig {
            binaries,
            ..ClusterConfig::default()
        },
    )
    .map_err(|e| anyhow!("{e}"))?;

    println!("2. Certificates from a new cluster CA, then ferryd on n1 and n2 (replicas) and w (witness).");
    cluster.start_daemons().map_err(|e| anyhow!("{e}"))?;

    println!(
        "3. On n1: ferry run --name {} --vip {} -- ferry-kv --listen 0.0.0.0:{}",
        cluster.config().app,
        cluster.vip_arg(),
        cluster.config().service_port
    );
    cluster.run_app(REPLICAS[0]).map_err(|e| anyhow!("{e}"))?;
    let protected_by = cluster
        .wait_protected(Duration::from_secs(30))
        .map_err(|e| anyhow!("{e}"))?;
    let (p0, s0) = cluster
        .primary(Duration::from_secs(2))
        .ok_or_else(|| anyhow!("no primary after ferry run"))?;
    println!("   {protected_by} is primary; n2 runs a live replica of it.\n");

    println!(
        "4. The client (on its own host) writes to {} over {CLIENTS} connections, {WRITES_EACH} writes each.",
        cluster.service_addr()
    );
    println!("   In sync mode an answer leaves n1 only after n2 has logged the write durably.");
    let before = cluster
        .write(WorkloadConfig {
            clients: CLIENTS,
            stop: Stop::Writes(WRITES_EACH),
            ..WorkloadConfig::default()
        })
        .map_err(|e| anyhow!("{e}"))?;
    let r = before.report();
    println!(
        "   {} writes acknowledged ({:.0} writes/s, p50 {:?}, p99 {:?}).",
        r.acknowledged,
        r.throughput(),
        r.latency().p50,
        r.latency().p99
    );
    show_status(&cluster);
    println!();

    println!("5. Kill -9 every process of {p0} and cut its link: the primary host is gone.");
    let fault = Instant::now();
    cluster.kill_host(&p0).map_err(|e| anyhow!("{e}"))?;
    let (p1, e1) = cluster
        .wait_takeover(&p0, s0.epoch, Duration::from_secs(30))
        .map_err(|e| anyhow!("{e}"))?;
    println!(
        "   {p1} took over in epoch {e1}, {} ms after the fault: its replica went live, and the",
        fault.elapsed().as_millis()
    );
    println!("   service address moved to it (gratuitous ARP).");
    show_status(&cluster);
    println!();

    println!(
        "6. The client reconnects to the same address and reads back every acknowledged write."
    );
    let total = before.report().acknowledged;
    let (_, verified) = cluster.verify(before).map_err(|e| anyhow!("{e}"))?;
    let clean = verified.is_clean();
    println!("   {verified}");
    let after = cluster
        .write(WorkloadConfig {
            clients: 2,
            stop: Stop::Writes(50),
            seed: 2,
            ..WorkloadConfig::default()
        })
        .map_err(|e| anyhow!("{e}"))?;
    println!(
        "   The new primary serves: {} more writes acknowledged.\n",
        after.report().acknowledged
    );

    println!("7. Cleaning up: namespaces, processes, files.");
    cluster
        .down()
        .map_err(|errors| anyhow!("cleanup: {}", errors.join("; ")))
        .context("the demo's hosts")?;

    if clean {
        println!(
            "\nVerdict: the primary host died; {p1} took over and answered all {total} writes acknowledged before the fault."
        );
        Ok(SUCCESS)
    } else {
        println!("\nVerdict: acknowledged writes were LOST at the takeover (see above).");
        Ok(PROGRAM_FAILED)
    }
}
