//! The load generator's numbers and output, and a timed workload.

mod common;

use common::start_server;
use ferry_kv::load::{run, LoadConfig};
use ferry_kv::server::Config;
use ferry_kv::workload::{Stop, Workload, WorkloadConfig};
use std::time::Duration;

#[test]
fn load_reports_throughput_and_latency() {
    let addr = start_server(Config::default()).to_string();
    let r = run(LoadConfig {
        addr: addr.clone(),
        conns: 2,
        duration: Duration::from_millis(300),
        pipeline: 4,
        value_bytes: 8,
        keys_per_conn: 10,
        timeout: Duration::from_secs(5),
    });
    assert!(r.ops > 0 && r.ops.is_multiple_of(4), "{}", r.text());
    assert_eq!(r.errors, 0, "{}", r.text());
    assert!(r.ops_per_sec() > 0.0);
    assert!(r.latency.p50 <= r.latency.p99 && r.latency.p99 <= r.latency.max);
    assert_eq!(r.latency.count, r.ops);
    let json = r.json();
    for field in [
        "\"conns\":2",
        "\"pipeline\":4",
        "\"ops\":",
        "\"ops_per_sec\":",
        "\"p50_us\":",
        "\"p99_us\":",
        "\"max_us\":",
    ] {
        assert!(json.contains(field), "{field} missing from {json}");
    }
    assert!(json.starts_with('{') && json.ends_with('}'));
    // The keys stay bounded: 10 per connection.
    let mut c = ferry_kv::Client::connect(&addr, Duration::from_secs(5)).unwrap();
    assert_eq!(c.count().unwrap(), 20);
}

#[test]
fn load_against_nothing_is_an_error_not_a_hang() {
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let r = run(LoadConfig {
        addr: gone,
        duration: Duration::from_millis(100),
        timeout: Duration::from_secs(1),
        ..LoadConfig::default()
    });
    assert_eq!(r.ops, 0);
    assert_eq!(r.errors, 1);
    assert!(r.json().contains("\"first_error\":\"cannot connect to"));
}

#[test]
fn a_workload_can_run_for_a_while() {
    let addr = start_server(Config::default());
    let w = Workload::run(WorkloadConfig {
        addr: addr.to_string(),
        clients: 2,
        stop: Stop::Duration(Duration::from_millis(200)),
        ..WorkloadConfig::default()
    });
    let r = w.report();
    assert!(r.acknowledged > 0 && r.acknowledged == r.attempted, "{r}");
    assert!(r.elapsed >= Duration::from_millis(200));
    assert!(r.throughput() > 0.0);
    assert!(r.to_string().contains("acknowledged"));
    assert!(w.verify(&addr.to_string()).unwrap().is_clean());
}
