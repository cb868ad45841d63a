//! Append + sync throughput of a `SegmentLog` on the disk of the temporary
//! directory (`TMPDIR`): each measured iteration appends one batch and
//! syncs it, as a backup does before it acknowledges. Building the batch
//! (sealing the records) is not measured.
//!
//! `cargo bench -p ferry-log`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferry_log::{SegmentLog, SegmentOptions};
use ferry_proto::{padded, Kind, RecordHeader};
use std::io::Write;
use std::time::{Duration, Instant};
use zerocopy::IntoBytes;

/// `count` sealed records of `payload` bytes each, from `gseq` on.
fn batch(gseq: u64, count: usize, payload: usize) -> Vec<u8> {
    let body: Vec<u8> = (0..payload).map(|i| (i * 13) as u8).collect();
    let mut out = Vec::with_capacity(count * padded(64 + payload));
    for g in gseq..gseq + count as u64 {
        let mut h = RecordHeader {
            kind: Kind::Syscall as u16,
            gseq: g,
            vpid: 1,
            vtid: 1,
            nr: 0,
            ret: payload as i64,
            ..RecordHeader::default()
        };
        h.seal(&body);
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&body);
        out.resize(padded(out.len()), 0);
    }
    out
}

/// Time `iters` rounds of append (and sync, if `sync`) of `count` records
/// of `payload` bytes.
fn run(log: &mut SegmentLog, iters: u64, count: usize, payload: usize, sync: bool) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let bytes = batch(log.next_gseq(), count, payload);
        let start = Instant::now();
        log.append(&bytes).unwrap();
        if sync {
            log.sync().unwrap();
        }
        total += start.elapsed();
        // Keep the disk use bounded: whole segments only, rarely.
        log.drop_below(log.next_gseq()).unwrap();
    }
    log.sync().unwrap();
    total
}

/// The floor: `iters` rounds of a plain `write` of `len` bytes and
/// `fdatasync` on a file of the same directory, no log.
fn raw(dir: &std::path::Path, iters: u64, len: usize) -> Duration {
    let mut file = std::fs::File::create(dir.join("raw")).unwrap();
    let bytes = vec![0x5a; len];
    let start = Instant::now();
    for _ in 0..iters {
        file.write_all(&bytes).unwrap();
        file.sync_data().unwrap();
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), SegmentOptions::default()).unwrap();
    let mut group = c.benchmark_group("append_sync");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (name, count, payload) in [
        ("1x100B", 1, 100),
        ("16x100B", 16, 100),
        ("256x100B", 256, 100),
        ("1x64KiB", 1, 64 << 10),
        ("16x64KiB", 16, 64 << 10),
    ] {
        group.throughput(Throughput::Bytes(batch(0, count, payload).len() as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| run(&mut log, iters, count, payload, true))
        });
    }
    group.finish();

    // The disk alone, for the same sizes.
    let mut group = c.benchmark_group("write_fdatasync");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (name, count, payload) in [("1x100B", 1, 100), ("16x64KiB", 16, 64 << 10)] {
        let len = batch(0, count, payload).len();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| raw(dir.path(), iters, len))
        });
    }
    group.finish();

    // The same batches without the sync: the cost of checking and
    // buffering alone.
    let mut group = c.benchmark_group("append_only");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for (name, count, payload) in [("256x100B", 256, 100), ("16x64KiB", 16, 64 << 10)] {
        group.throughput(Throughput::Bytes(batch(0, count, payload).len() as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| run(&mut log, iters, count, payload, false))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
