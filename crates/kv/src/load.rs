//! The load generator behind `ferry-kv-load`: connections that send `SET`s
//! (optionally pipelined) as fast as the server answers, for a while.

use crate::client::Client;
use crate::protocol::{Request, Response};
use crate::stats::{Latencies, LatencySummary, SplitMix};
use std::fmt::Write as _;
use std::thread;
use std::time::{Duration, Instant};

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub addr: String,
    /// Concurrent connections, one thread each.
    pub conns: usize,
    pub duration: Duration,
    /// Requests sent together before reading their answers.
    pub pipeline: usize,
    pub value_bytes: usize,
    /// Each connection cycles over this many keys of its own.
    pub keys_per_conn: u64,
    pub timeout: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            addr: "127.0.0.1:7070".into(),
            conns: 1,
            duration: Duration::from_secs(5),
            pipeline: 1,
            value_bytes: 16,
            keys_per_conn: 10_000,
            timeout: Duration::from_secs(5),
        }
    }
}

/// What came of it.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub config: LoadConfig,
    /// Requests answered `OK`.
    pub ops: u64,
    /// Requests answered otherwise, and connections that failed.
    pub errors: u64,
    /// The first error, if any.
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Latency of each request: from sending its batch to the batch's last
    /// answer.
    pub latency: LatencySummary,
}

impl LoadReport {
    /// Answered requests per second.
    pub fn ops_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.ops as f64 / s
        } else {
            0.0
        }
    }

    /// One line for people.
    pub fn text(&self) -> String {
        let c = &self.config;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut s = format!(
            "{} conns, pipeline {}, {}-byte values, {:.1} s: {} ops, {:.0} ops/s, \
             latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, {} errors",
            c.conns,
            c.pipeline,
            c.value_bytes,
            self.elapsed.as_secs_f64(),
            self.ops,
            self.ops_per_sec(),
            ms(self.latency.p50),
            ms(self.latency.p99),
            ms(self.latency.max),
            self.errors
        );
        if let Some(e) = &self.first_error {
            let _ = write!(s, " (first: {e})");
        }
        s
    }

    /// One JSON object for scripts.
    pub fn json(&self) -> String {
        let c = &self.config;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let mut s = format!(
            "{{\"addr\":{},\"conns\":{},\"pipeline\":{},\"value_bytes\":{},\"seconds\":{:.3},\
             \"ops\":{},\"errors\":{},\"ops_per_sec\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\
             \"max_us\":{:.1}",
            json_string(&c.addr),
            c.conns,
            c.pipeline,
            c.value_bytes,
            self.elapsed.as_secs_f64(),
            self.ops,
            self.errors,
            self.ops_per_sec(),
            us(self.latency.p50),
            us(self.latency.p99),
            us(self.latency.max),
        );
        if let Some(e) = &self.first_error {
            let _ = write!(s, ",\"first_error\":{}", json_string(e));
        }
        s.push('}');
        s
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct ConnRun {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Latencies,
}

/// Run the load and measure it.
pub fn run(config: LoadConfig) -> LoadReport {
    let start = Instant::now();
    let handles: Vec<_> = (0..config.conns.max(1))
        .map(|c| {
            let config = config.clone();
            thread::spawn(move || run_conn(&config, c, start))
        })
        .collect();
    let mut ops = 0;
    let mut errors = 0;
    let mut first_error = None;
    let mut latencies = Latencies::new();
    for h in handles {
        match h.join() {
            Ok(r) => {
                ops += r.ops;
                errors += r.errors;
                first_error = first_error.or(r.first_error);
                latencies.merge(r.latencies);
            }
            Err(_) => errors += 1,
        }
    }
    LoadReport {
        elapsed: start.elapsed(),
        config,
        ops,
        errors,
        first_error,
        latency: latencies.summary(),
    }
}

fn run_conn(config: &LoadConfig, c: usize, start: Instant) -> ConnRun {
    let mut run = ConnRun {
        ops: 0,
        errors: 0,
        first_error: None,
        latencies: Latencies::new(),
    };
    let mut client = match Client::connect(&config.addr, config.timeout) {
        Ok(client) => client,
        Err(e) => {
            run.errors += 1;
            run.first_error = Some(e.to_string());
            return run;
        }
    };
    let mut rng = SplitMix::new(c as u64 + 1);
    // A few values, made up front, so that the generator measures the server.
    let values: Vec<String> = (0..16).map(|_| rng.value(config.value_bytes)).collect();
    let keys = config.keys_per_conn.max(1);
    let pipeline = config.pipeline.max(1);
    let mut requests = Vec::with_capacity(pipeline);
    let mut answers = Vec::with_capacity(pipeline);
    let mut n: u64 = 0;
    while start.elapsed() < config.duration {
        requests.clear();
        for _ in 0..pipeline {
            requests.push(Request::Set {
                key: format!("l{c}-{}", n % keys),
                value: values[(n % 16) as usize].clone(),
            });
            n += 1;
        }
        answers.clear();
        let t0 = Instant::now();
        if let Err(e) = client.pipeline_into(&requests, &mut answers) {
            run.errors += 1;
            run.first_error.get_or_insert_with(|| e.to_string());
            break;
        }
        let latency = t0.elapsed();
        for a in &answers {
            match a {
                Response::Ok(_) => run.ops += 1,
                other => {
                    run.errors += 1;
                    run.first_error
                        .get_or_insert_with(|| format!("unexpected answer {other}"));
                }
            }
        }
        run.latencies.record_n(latency, answers.len());
    }
    run
}
