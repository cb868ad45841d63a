//! Many clients writing and reading at once: every acknowledged write is
//! there afterwards, and the server's digest is the digest of exactly the
//! acknowledged writes.

mod common;

use common::start_server;
use ferry_kv::client::Client;
use ferry_kv::server::Config;
use ferry_kv::workload::{Stop, Workload, WorkloadConfig};
use std::thread;
use std::time::Duration;

#[test]
fn concurrent_writers_and_readers() {
    let addr = start_server(Config::default());
    let a = addr.to_string();
    // Readers that run alongside: COUNT only grows, DIGEST always parses.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let a = a.clone();
            thread::spawn(move || {
                let mut c = Client::connect(&a, Duration::from_secs(10)).unwrap();
                let mut last = 0;
                for _ in 0..100 {
                    let n = c.count().unwrap();
                    assert!(n >= last, "COUNT went from {last} to {n}");
                    last = n;
                    assert_eq!(c.digest().unwrap().len(), 64);
                }
            })
        })
        .collect();
    let w = Workload::run(WorkloadConfig {
        addr: a.clone(),
        clients: 8,
        stop: Stop::Writes(150),
        value_bytes: 24,
        keys_per_client: Some(40),
        read_back: true,
        ..WorkloadConfig::default()
    });
    for r in readers {
        r.join().unwrap();
    }
    let report = w.report();
    assert_eq!(report.attempted, 8 * 150);
    assert_eq!(report.acknowledged, 8 * 150, "{report}");
    assert_eq!(report.unknown + report.failed, 0, "{report}");
    assert_eq!(report.reads, 8 * 150);
    assert_eq!(report.read_mismatches, 0, "{report}");
    assert!(report.client_errors.is_empty(), "{report}");

    let v = w.verify(&a).unwrap();
    assert!(v.is_clean(), "{v}");
    assert_eq!(v.checked, 8 * 40);

    let mut c = Client::connect(&a, Duration::from_secs(10)).unwrap();
    assert_eq!(c.count().unwrap(), 8 * 40);
    assert_eq!(c.digest().unwrap(), w.expected_digest());
    // Versions were unique: the counter equals the number of writes.
    let max = w.acknowledged().map(|(_, v, _)| v).max().unwrap();
    assert_eq!(max, 8 * 150);
}
