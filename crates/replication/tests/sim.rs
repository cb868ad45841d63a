//! The replication protocol under simulated faults. Every test drives whole
//! clusters of [`ferry_replication::Node`]s in virtual time (see `util`), and
//! the simulator checks the invariants after every action:
//!
//! 1. never two gates open for the application at the same instant (a gate
//!    is open from `OpenGate` until `CloseGate`, a crash, or its deadline on
//!    the node's own clock, frozen or not);
//! 2. no node's epoch goes backwards, even across a restart;
//! 3. in sync mode, every released record is in the log of every node that
//!    later becomes primary (same gseq, same epoch);
//! 4. (in the scenarios) a primary is back within the failover bound;
//! 5. a witness is never promoted;
//! 6. a planned switchover loses nothing.
//!
//! Also: a node closes its gate before its lease ends (given a tick at least
//! every heartbeat interval), and every backup the primary streams to, or
//! that resynchronises, holds a prefix of the primary's log.

mod util;

use ferry_replication::{Input, MigrateStep, MigrationPhase, Mode, Role, MS};
use util::{quantile, Rng, Sim, SimConfig};

const A: usize = 0;
const B: usize = 1;
const W: usize = 2;

fn sim3(seed: u64) -> Sim {
    Sim::new(SimConfig::default3(seed))
}

/// Time for the first primary to be up and protected.
fn settle(sim: &mut Sim) {
    let t = sim.run_until_cond(2_000 * MS, |s| {
        s.serving_primary() == Some(A) && s.status(A).is_some_and(|st| st.protected)
    });
    assert!(
        t.is_some(),
        "seed {}: primary never became protected",
        sim.cfg.seed
    );
}

#[test]
fn steady_state_releases_with_protection() {
    let mut sim = sim3(1);
    settle(&mut sim);
    sim.run_for(2_000 * MS);
    let st = sim.status(A).expect("a up");
    assert_eq!(st.role, Role::Primary);
    assert!(st.protected);
    assert!(st.gate_open);
    assert!(st.acked > 500, "released only {}", st.acked);
    assert!(st.logged - st.acked < 50, "gate lags: {st:?}");
    let b = sim.status(B).expect("b up");
    assert_eq!(b.role, Role::Backup);
    assert!(b.healthy);
    assert_eq!(sim.status(W).expect("w up").role, Role::Witness);
    assert_eq!(sim.promotions.len(), 0);
}

/// Crash the primary at a random moment; return the failover time (crash to
/// a new gate open) in virtual ns.
fn crash_primary_once(seed: u64, loss: f64) -> u64 {
    let mut cfg = SimConfig::default3(seed);
    cfg.net.loss = loss;
    let bound = cfg.timings.failover_bound();
    let mut sim = Sim::new(cfg);
    settle(&mut sim);
    let mut rng = Rng::new(seed);
    sim.run_for(rng.range(200, 1_500) * MS);
    let released_before = sim.released_gseq();
    sim.crash(A);
    let t0 = sim.now;
    let t = sim.run_until_cond(3 * bound, |s| s.serving_primary() == Some(B));
    let Some(t) = t else {
        panic!("seed {seed}: no new primary within {} ms", 3 * bound / MS);
    };
    sim.run_for(500 * MS);
    let st = sim.status(B).expect("b up");
    assert_eq!(st.role, Role::Primary);
    assert!(st.durable >= released_before);
    // One backup gone, witness left: serving unprotected.
    assert!(!st.protected);
    assert!(st.acked > released_before);
    t - t0
}

#[test]
fn crash_primary_failover_time() {
    let bound = SimConfig::default3(0).timings.failover_bound();
    let mut times: Vec<u64> = (0..60)
        .map(|seed| crash_primary_once(1_000 + seed, 0.0))
        .collect();
    let (p50, p99, max) = (
        quantile(&mut times, 0.5),
        quantile(&mut times, 0.99),
        quantile(&mut times, 1.0),
    );
    println!(
        "failover after a primary crash, 60 seeds: p50 {} ms, p99 {} ms, max {} ms (bound {} ms)",
        p50 / MS,
        p99 / MS,
        max / MS,
        bound / MS
    );
    assert!(
        max <= bound,
        "failover took {} ms > bound {} ms",
        max / MS,
        bound / MS
    );
}

#[test]
fn crash_primary_with_20_percent_loss() {
    let mut times: Vec<u64> = (0..30)
        .map(|seed| crash_primary_once(2_000 + seed, 0.2))
        .collect();
    println!(
        "failover with 20% message loss, 30 seeds: p50 {} ms, p99 {} ms",
        quantile(&mut times, 0.5) / MS,
        quantile(&mut times, 0.99) / MS
    );
}

#[test]
fn frozen_primary_closes_its_gate_and_comes_back_as_backup() {
    for seed in 0..20 {
        let mut sim = sim3(3_000 + seed);
        settle(&mut sim);
        sim.run_for(300 * MS);
        sim.freeze(A, 2_000 * MS);
        let t = sim.run_until_cond(2_000 * MS, |s| s.serving_primary() == Some(B));
        assert!(
            t.is_some(),
            "seed {seed}: b did not take over while a was frozen"
        );
        sim.run_for(2_500 * MS);
        let a = sim.status(A).expect("a up");
        assert_eq!(a.role, Role::Backup, "seed {seed}: {a:?}");
        assert_eq!(a.primary.as_deref(), Some("b"));
        assert!(a.healthy, "seed {seed}: a did not resync: {a:?}");
        assert_eq!(sim.serving(), vec![B]);
    }
}

#[test]
fn partitioned_primary_steps_aside_and_rejoins() {
    for seed in 0..20 {
        let mut sim = sim3(4_000 + seed);
        settle(&mut sim);
        sim.run_for(300 * MS);
        sim.partition(&[A]);
        let lease = sim.cfg.timings.lease;
        // The minority side closes its gate within the lease.
        sim.run_for(lease);
        assert!(sim.status(A).is_some_and(|s| !s.gate_open), "seed {seed}");
        let t = sim.run_until_cond(2_000 * MS, |s| s.serving_primary() == Some(B));
        assert!(t.is_some(), "seed {seed}: majority side elected no primary");
        // The old primary keeps trying but never serves.
        sim.run_for(1_000 * MS);
        assert!(sim.status(A).is_some_and(|s| !s.gate_open));
        sim.heal();
        sim.run_for(1_500 * MS);
        let a = sim.status(A).expect("a up");
        assert_eq!(a.role, Role::Backup, "seed {seed}: {a:?}");
        assert!(a.healthy, "seed {seed}: {a:?}");
        assert!(sim.status(B).is_some_and(|s| s.protected));
    }
}

#[test]
fn killed_backup_leaves_the_primary_serving_unprotected() {
    for seed in 0..10 {
        let mut sim = sim3(5_000 + seed);
        settle(&mut sim);
        sim.crash(B);
        sim.run_for(1_000 * MS);
        let a = sim.status(A).expect("a up");
        assert!(a.gate_open);
        assert!(!a.protected, "seed {seed}: {a:?}");
        let before = a.acked;
        sim.run_for(1_000 * MS);
        let a = sim.status(A).expect("a up");
        assert!(
            a.acked > before + 300,
            "seed {seed}: released only {} -> {}",
            before,
            a.acked
        );
        assert!(
            a.logged - a.acked < 100,
            "seed {seed}: unprotected gate lags {a:?}"
        );
        // The backup comes back, resyncs and protects again.
        sim.restart(B);
        sim.run_for(1_500 * MS);
        let a = sim.status(A).expect("a up");
        assert!(a.protected, "seed {seed}: {a:?}");
        assert!(sim
            .status(B)
            .is_some_and(|s| s.healthy && s.role == Role::Backup));
        assert!(sim.promotions.is_empty());
    }
}

#[test]
fn killed_witness_changes_nothing() {
    for seed in 0..10 {
        let mut sim = sim3(6_000 + seed);
        settle(&mut sim);
        let opens = sim.opens.len();
        sim.crash(W);
        sim.run_for(3_000 * MS);
        assert!(
            sim.promotions.is_empty(),
            "seed {seed}: killing the witness caused a failover"
        );
        assert_eq!(
            sim.opens.len(),
            opens,
            "seed {seed}: the gate closed while the witness was down"
        );
        let a = sim.status(A).expect("a up");
        assert!(a.gate_open && a.protected, "seed {seed}: {a:?}");
        sim.restart(W);
        sim.run_for(1_000 * MS);
        assert!(sim.promotions.is_empty());
        assert_eq!(sim.status(W).map(|s| s.role), Some(Role::Witness));
    }
}

#[test]
fn duplicated_and_reordered_messages() {
    for seed in 0..20 {
        let mut cfg = SimConfig::default3(7_000 + seed);
        cfg.net.dup = 0.3;
        cfg.net.delay_max = 20 * MS;
        let mut sim = Sim::new(cfg);
        settle(&mut sim);
        sim.run_for(500 * MS);
        sim.crash(A);
        let t = sim.run_until_cond(2_000 * MS, |s| s.serving_primary() == Some(B));
        assert!(t.is_some(), "seed {seed}");
        sim.restart(A);
        sim.run_for(1_500 * MS);
        assert!(
            sim.status(A)
                .is_some_and(|s| s.role == Role::Backup && s.healthy),
            "seed {seed}"
        );
    }
}

#[test]
fn restarted_primary_rejoins_as_backup() {
    for seed in 0..20 {
        let mut sim = sim3(8_000 + seed);
        settle(&mut sim);
        sim.run_for(700 * MS);
        sim.crash(A);
        sim.run_until_cond(2_000 * MS, |s| s.serving_primary() == Some(B))
            .expect("failover");
        sim.run_for(300 * MS);
        sim.restart(A);
        sim.run_for(1_500 * MS);
        let a = sim.status(A).expect("a up");
        assert_eq!(a.role, Role::Backup, "seed {seed}: {a:?}");
        assert_eq!(a.primary.as_deref(), Some("b"));
        assert!(a.healthy, "seed {seed}: {a:?}");
        assert_eq!(a.epoch, 2);
        let b = sim.status(B).expect("b up");
        assert!(b.protected, "seed {seed}: {b:?}");
        // And the roles can swap back with nothing lost.
        sim.command(
            B,
            Input::Failover {
                app: util::APP.into(),
                to: None,
            },
        );
        sim.run_until_cond(2_000 * MS, |s| s.serving_primary() == Some(A))
            .expect("failback");
        sim.run_for(1_000 * MS);
        assert!(
            sim.status(B)
                .is_some_and(|s| s.role == Role::Backup && s.healthy),
            "seed {seed}"
        );
    }
}

#[test]
fn corrupt_backup_never_promotes_until_resynced() {
    for seed in 0..20 {
        let mut sim = sim3(9_000 + seed);
        settle(&mut sim);
        sim.run_for(500 * MS);
        sim.corrupt(B);
        sim.run_for(5 * MS);
        // The primary dies before the backup could resynchronise.
        sim.crash(A);
        sim.run_for(3_000 * MS);
        assert!(
            sim.promotions.is_empty(),
            "seed {seed}: promoted from a corrupt log"
        );
        assert!(sim.status(B).is_some_and(|s| !s.healthy));
        // The old primary returns: it has every record, wins, and the backup
        // resynchronises from it.
        sim.restart(A);
        sim.run_until_cond(3_000 * MS, |s| s.serving_primary() == Some(A))
            .expect("a back");
        sim.run_for(1_000 * MS);
        assert!(
            sim.status(B)
                .is_some_and(|s| s.healthy && s.role == Role::Backup),
            "seed {seed}"
        );
        assert!(sim.status(A).is_some_and(|s| s.protected));
    }
}

#[test]
fn corrupt_backup_resyncs_while_primary_lives() {
    let mut sim = sim3(9_500);
    settle(&mut sim);
    sim.run_for(500 * MS);
    sim.corrupt(B);
    sim.run_for(10 * MS);
    assert!(sim.status(A).is_some_and(|s| s.gate_open));
    sim.run_for(1_000 * MS);
    assert!(sim.status(B).is_some_and(|s| s.healthy));
    assert!(sim.status(A).is_some_and(|s| s.protected));
    assert!(sim.promotions.is_empty());
}

#[test]
fn primary_dies_during_catch_up() {
    for seed in 0..20 {
        let mut cfg = SimConfig::default3(10_000 + seed);
        cfg.resync = (200 * MS, 400 * MS);
        let mut sim = Sim::new(cfg);
        settle(&mut sim);
        sim.crash(B);
        sim.run_for(1_000 * MS);
        sim.restart(B);
        // B joins and starts a long resync; the primary dies in the middle.
        sim.run_until_cond(1_000 * MS, |s| {
            s.status(B)
                .is_some_and(|st| st.primary.as_deref() == Some("a"))
        })
        .expect("b hears a");
        sim.run_for(100 * MS);
        sim.crash(A);
        sim.run_for(3_000 * MS);
        assert!(
            sim.promotions.is_empty(),
            "seed {seed}: a half-resynchronised backup was promoted"
        );
        sim.restart(A);
        sim.run_until_cond(3_000 * MS, |s| s.serving_primary() == Some(A))
            .expect("a back");
        sim.run_for(1_500 * MS);
        assert!(sim.status(B).is_some_and(|s| s.healthy), "seed {seed}");
    }
}

#[test]
fn planned_failover_loses_nothing() {
    for seed in 0..20 {
        let mut sim = sim3(11_000 + seed);
        settle(&mut sim);
        sim.run_for(700 * MS);
        sim.command(
            A,
            Input::Failover {
                app: util::APP.into(),
                to: None,
            },
        );
        let t0 = sim.now;
        let t = sim
            .run_until_cond(2_000 * MS, |s| s.serving_primary() == Some(B))
            .unwrap_or_else(|| panic!("seed {seed}: no switchover"));
        let (_, who, epoch) = *sim.promotions.last().expect("promoted");
        assert_eq!((who, epoch), (B, 2));
        // Nothing lost: b went live after a's last record.
        let a_logged = sim.nodes[A].log.len;
        let b_base = sim.status(B).expect("b").logged;
        assert!(
            b_base >= a_logged,
            "seed {seed}: b has {b_base}, a logged {a_logged}"
        );
        sim.run_for(1_000 * MS);
        let a = sim.status(A).expect("a");
        assert_eq!(a.role, Role::Backup);
        assert!(a.healthy, "seed {seed}: {a:?}");
        assert!(sim.status(B).is_some_and(|s| s.protected));
        assert!(
            t - t0 < 100 * MS,
            "seed {seed}: switchover took {} ms",
            (t - t0) / MS
        );
    }
}

#[test]
fn async_mode_reports_lag_and_releases_at_once() {
    let mut cfg = SimConfig::default3(12_000);
    cfg.mode = Mode::Async;
    cfg.fsync = (20 * MS, 40 * MS);
    let mut sim = Sim::new(cfg);
    sim.run_for(1_000 * MS);
    let a = sim.status(A).expect("a");
    assert!(a.gate_open);
    assert!(!a.protected);
    assert_eq!(a.acked, a.logged);
    assert!(a.lag > 0, "{a:?}");
    sim.crash(A);
    sim.run_until_cond(2_000 * MS, |s| s.serving_primary() == Some(B))
        .expect("failover");
}

#[test]
fn five_members_survive_two_failures() {
    for seed in 0..10 {
        let cfg = SimConfig::default3(13_000 + seed).with_nodes(&[
            ("a", false),
            ("b", false),
            ("c", false),
            ("d", false),
            ("w", true),
        ]);
        let mut sim = Sim::new(cfg);
        settle(&mut sim);
        sim.run_for(500 * MS);
        sim.crash(A);
        sim.crash(1 + (seed as usize % 3));
        let t = sim.run_until_cond(3_000 * MS, |s| s.serving_primary().is_some_and(|p| p != A));
        assert!(t.is_some(), "seed {seed}: no primary with 3 of 5 up");
    }
}

/// Many seeds of random faults. Safety is checked all along; at the end every
/// fault is healed and the cluster must converge: one primary serving, every
/// other replica a healthy backup. Two halves, so that they run side by side.
/// `FERRY_SIM_SEED=N FERRY_SIM_SEEDS=K` runs seeds N.. (K per half) instead.
#[test]
fn randomized_faults_first_half() {
    randomized(0);
}

#[test]
fn randomized_faults_second_half() {
    randomized(1);
}

fn randomized(half: u64) {
    let seeds: u64 = std::env::var("FERRY_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(75);
    let first: u64 = std::env::var("FERRY_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let first = first + half * seeds;
    let mut virtual_ms = 0;
    let mut failovers = 0;
    for seed in first..first + seeds {
        let (ms, f) = random_run(seed);
        virtual_ms += ms;
        failovers += f;
    }
    println!(
        "randomized: seeds {first}..{}, {} virtual s, {failovers} promotions",
        first + seeds,
        virtual_ms / 1000
    );
}

fn random_run(seed: u64) -> (u64, u64) {
    let mut rng = Rng::new(seed ^ 0xfa17);
    let mut cfg = SimConfig::default3(seed);
    if rng.chance(0.3) {
        cfg = cfg.with_nodes(&[("a", false), ("b", false), ("c", false), ("w", true)]);
    } else if rng.chance(0.2) {
        cfg = cfg.with_nodes(&[
            ("a", false),
            ("b", false),
            ("c", false),
            ("d", false),
            ("w", true),
        ]);
    } else if rng.chance(0.2) {
        cfg = cfg.with_nodes(&[("a", false), ("b", false), ("c", false)]);
    }
    if rng.chance(0.15) {
        cfg.mode = Mode::Async;
    }
    cfg.net.loss = [0.0, 0.0, 0.05, 0.2][rng.below(4)];
    cfg.net.dup = [0.0, 0.1][rng.below(2)];
    cfg.net.delay_max = [3 * MS, 10 * MS, 30 * MS][rng.below(3)];
    cfg.tick_max = [10 * MS, 49 * MS][rng.below(2)];
    let n = cfg.nodes.len();
    let mut sim = Sim::new(cfg);
    let duration = 3_000 * MS;
    while sim.now < duration {
        sim.run_for(rng.range(50, 400) * MS);
        let i = rng.below(n);
        match rng.below(10) {
            0 | 1 => sim.crash(i),
            2 | 3 => sim.restart(i),
            4 => sim.freeze(i, rng.range(50, 1_500) * MS),
            5 => {
                let k = 1 + rng.below(n - 1);
                let mut side: Vec<usize> = (0..n).collect();
                for j in (1..n).rev() {
                    side.swap(j, rng.below(j + 1));
                }
                side.truncate(k);
                sim.partition(&side);
            }
            6 => sim.heal(),
            7 => sim.corrupt_repairable(i),
            8 => {
                if let Some(p) = sim.serving_primary() {
                    sim.command(
                        p,
                        Input::Failover {
                            app: util::APP.into(),
                            to: None,
                        },
                    );
                }
            }
            _ => {
                let j = rng.below(n);
                if i != j {
                    sim.block(i, j);
                }
            }
        }
    }
    // Heal everything and let the cluster converge.
    sim.heal();
    sim.run_for(1_600 * MS);
    for i in 0..n {
        sim.restart(i);
    }
    let ok = sim.run_until_cond(8_000 * MS, |s| {
        let Some(p) = s.serving_primary() else {
            return false;
        };
        (0..n).all(|i| {
            i == p
                || s.status(i).is_some_and(|st| {
                    st.role == Role::Witness || (st.role == Role::Backup && st.healthy)
                })
        })
    });
    if ok.is_none() {
        let states: Vec<String> = (0..n).map(|i| format!("{:?}", sim.status(i))).collect();
        sim.violation(&format!(
            "no convergence after healing:\n{}",
            states.join("\n")
        ));
    }
    (sim.now / MS, sim.stats.promotions)
}

fn migrate(sim: &mut Sim, on: usize, to: &str, step: MigrateStep) {
    sim.command(
        on,
        Input::Migrate {
            app: util::APP.into(),
            to: to.into(),
            step,
        },
    );
}

fn member_names(sim: &Sim, i: usize) -> Vec<String> {
    let mut names: Vec<String> = sim
        .status(i)
        .expect("up")
        .members
        .iter()
        .map(|m| m.node.clone())
        .collect();
    names.sort();
    names
}

#[test]
fn migration_to_a_backup_moves_then_rolls_back_then_commits() {
    for seed in 0..10 {
        let mut sim = sim3(14_000 + seed);
        settle(&mut sim);
        sim.run_for(400 * MS);
        migrate(&mut sim, A, "b", MigrateStep::Start);
        let a_logged = sim.nodes[A].log.len;
        sim.run_until_cond(2_000 * MS, |s| s.serving_primary() == Some(B))
            .unwrap_or_else(|| panic!("seed {seed}: never moved to b"));
        assert!(
            sim.status(B).expect("b").logged >= a_logged,
            "seed {seed}: records lost"
        );
        sim.run_for(300 * MS);
        let b = sim.status(B).expect("b");
        let m = b.migration.clone().expect("migration kept until commit");
        assert_eq!((m.from.as_str(), m.to.as_str(), m.added), ("a", "b", false));
        assert_eq!(m.phase, MigrationPhase::Moved);
        let a = sim.status(A).expect("a");
        assert_eq!(a.role, Role::Backup);
        assert!(
            a.healthy,
            "seed {seed}: the source must keep replaying: {a:?}"
        );
        assert_eq!(
            a.migration.as_ref().map(|m| m.phase),
            Some(MigrationPhase::Moved)
        );
        let sw = a.switch.expect("the source saw the switch");
        let downtime = sw.downtime.expect("downtime measured");
        assert!(
            downtime < 100 * MS,
            "seed {seed}: downtime {} ms",
            downtime / MS
        );

        // A second migration is refused while this one is open.
        let before = sim.failed_commands.len();
        migrate(&mut sim, B, "a", MigrateStep::Start);
        assert_eq!(sim.failed_commands.len(), before + 1, "seed {seed}");

        migrate(&mut sim, B, "b", MigrateStep::Rollback);
        sim.run_until_cond(2_000 * MS, |s| s.serving_primary() == Some(A))
            .unwrap_or_else(|| panic!("seed {seed}: rollback never completed"));
        sim.run_for(300 * MS);
        assert_eq!(sim.status(A).expect("a").migration, None);
        assert_eq!(sim.status(B).expect("b").migration, None);
        assert_eq!(member_names(&sim, A), ["a", "b", "w"]);

        migrate(&mut sim, A, "b", MigrateStep::Start);
        sim.run_until_cond(2_000 * MS, |s| {
            s.serving_primary() == Some(B)
                && s.status(B).is_some_and(|st| {
                    st.migration.as_ref().map(|m| m.phase) == Some(MigrationPhase::Moved)
                })
        })
        .unwrap_or_else(|| {
            panic!(
                "seed {seed}: second move never completed: {:?}\n{:?}\n{:?}",
                sim.failed_commands,
                sim.status(A),
                sim.status(B)
            )
        });
        migrate(&mut sim, B, "b", MigrateStep::Commit);
        sim.run_for(300 * MS);
        assert_eq!(sim.status(B).expect("b").migration, None);
        assert_eq!(sim.status(A).expect("a").migration, None);
        // The target was a member already: committing keeps the source.
        assert_eq!(member_names(&sim, B), ["a", "b", "w"]);
        assert!(sim.status(B).expect("b").protected, "seed {seed}");
    }
}

fn four_nodes(seed: u64) -> Sim {
    let mut cfg = SimConfig::default3(seed).with_nodes(&[
        ("a", false),
        ("b", false),
        ("w", true),
        ("c", false),
    ]);
    cfg.spare = vec!["c".into()];
    Sim::new(cfg)
}

const C: usize = 3;

#[test]
fn migration_to_a_new_node_adds_it_and_commit_removes_the_source() {
    for seed in 0..10 {
        let mut sim = four_nodes(15_000 + seed);
        settle(&mut sim);
        assert!(sim.status(C).is_none(), "c is not a member yet");
        sim.run_for(300 * MS);
        migrate(&mut sim, A, "c", MigrateStep::Start);
        sim.run_until_cond(3_000 * MS, |s| s.serving_primary() == Some(C))
            .unwrap_or_else(|| panic!("seed {seed}: never moved to c"));
        sim.run_for(300 * MS);
        assert_eq!(member_names(&sim, C), ["a", "b", "c", "w"]);
        let m = sim.status(C).expect("c").migration.expect("open");
        assert!(m.added);
        assert!(sim.status(A).expect("a").healthy, "seed {seed}");
        migrate(&mut sim, C, "c", MigrateStep::Commit);
        sim.run_for(500 * MS);
        assert_eq!(member_names(&sim, C), ["b", "c", "w"]);
        assert_eq!(member_names(&sim, B), ["b", "c", "w"]);
        assert!(
            !sim.nodes[A].store.contains_key(util::APP),
            "seed {seed}: the source forgets the application"
        );
        // Still protected, and a crash of the new primary fails over to b.
        assert!(sim.status(C).expect("c").protected, "seed {seed}");
        sim.crash(C);
        sim.run_until_cond(3_000 * MS, |s| s.serving_primary() == Some(B))
            .unwrap_or_else(|| panic!("seed {seed}: b did not take over from c"));
    }
}

#[test]
fn migration_rolled_back_after_the_move_removes_the_added_node() {
    for seed in 0..10 {
        let mut sim = four_nodes(16_000 + seed);
        settle(&mut sim);
        migrate(&mut sim, A, "c", MigrateStep::Start);
        sim.run_until_cond(3_000 * MS, |s| s.serving_primary() == Some(C))
            .unwrap_or_else(|| panic!("seed {seed}: never moved to c"));
        migrate(&mut sim, C, "c", MigrateStep::Rollback);
        sim.run_until_cond(3_000 * MS, |s| s.serving_primary() == Some(A))
            .unwrap_or_else(|| panic!("seed {seed}: never moved back to a"));
        sim.run_for(500 * MS);
        assert_eq!(member_names(&sim, A), ["a", "b", "w"]);
        assert_eq!(sim.status(A).expect("a").migration, None);
        assert!(!sim.nodes[C].store.contains_key(util::APP), "seed {seed}");
        assert!(
            sim.status(A).expect("a").protected,
            "seed {seed}: {:?}\n{:?}",
            sim.status(A),
            sim.status(B)
        );
    }
}

#[test]
fn migration_waits_for_the_target_replica_and_can_be_cancelled() {
    let mut cfg = SimConfig::default3(17_000);
    cfg.replica_lag = 5_000;
    let mut sim = Sim::new(cfg);
    settle(&mut sim);
    sim.run_for(3_000 * MS);
    migrate(&mut sim, A, "b", MigrateStep::Start);
    assert!(
        sim.run_until_cond(2_000 * MS, |s| s.serving_primary() != Some(A))
            .is_none(),
        "switched over to a replica thousands of records behind"
    );
    let a = sim.status(A).expect("a");
    assert_eq!(
        a.migration.map(|m| m.phase),
        Some(MigrationPhase::CatchingUp)
    );
    assert!(
        a.gate_open,
        "the program keeps serving while the target catches up"
    );
    migrate(&mut sim, A, "b", MigrateStep::Rollback);
    sim.run_for(200 * MS);
    assert_eq!(sim.status(A).expect("a").migration, None);
    assert_eq!(sim.status(B).expect("b").migration, None);
    assert_eq!(sim.serving_primary(), Some(A));
}
