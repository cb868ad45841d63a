//! The ring protocol on a region in ordinary memory, with a futex that
//! polls: records come out as they went in, across the end of the ring, and
//! a full ring holds its producer back without dropping anything.

extern crate std;

use super::*;
use core::sync::atomic::AtomicUsize;
use ferry_proto::{Kind, MAX_PAYLOAD};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::thread;
use std::time::{Duration, Instant};
use std::vec::Vec;

/// A zeroed, page-aligned allocation of [`REGION_LEN`] bytes.
struct Mem {
    ptr: *mut u8,
}

impl Mem {
    const LAYOUT: Layout = match Layout::from_size_align(REGION_LEN, 4096) {
        Ok(l) => l,
        Err(_) => panic!("bad region layout"),
    };

    fn new() -> Mem {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(Self::LAYOUT) };
        assert!(!ptr.is_null(), "cannot allocate a region");
        Mem { ptr }
    }

    /// An initialised region in record mode.
    fn region(&self) -> Region {
        // SAFETY: `ptr` is a live, writable, page-aligned allocation of
        // REGION_LEN bytes that outlives every use in these tests (threads
        // using it are scoped).
        let r = unsafe { Region::from_raw(self.ptr) };
        if !r.is_valid() {
            r.init(Mode::Record);
        }
        r
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { dealloc(self.ptr, Self::LAYOUT) }
    }
}

/// A futex that sleeps in short steps and counts its calls. A `polling` one
/// says so through [`Futex::polls`]: the ring then never registers it as a
/// sleeper, and its `wait` is a short pause.
#[derive(Default)]
struct TestFutex {
    polling: bool,
    waits: AtomicUsize,
    wakes: AtomicUsize,
}

impl TestFutex {
    fn polling() -> TestFutex {
        TestFutex {
            polling: true,
            ..TestFutex::default()
        }
    }
}

impl Futex for TestFutex {
    fn wait(&self, word: &AtomicU32, expected: u32, timeout_ms: Option<u32>) {
        self.waits.fetch_add(1, Ordering::Relaxed);
        if self.polling {
            thread::sleep(Duration::from_micros(50));
            return;
        }
        let deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms.into()));
        while word.load(Ordering::Acquire) == expected {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            thread::sleep(Duration::from_micros(50));
        }
    }

    fn wake_all(&self, _word: &AtomicU32) {
        self.wakes.fetch_add(1, Ordering::Relaxed);
    }

    fn polls(&self) -> bool {
        self.polling
    }
}

/// Payload bytes that depend on `gseq` and the position.
fn payload(gseq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (gseq as usize)
                .wrapping_mul(131)
                .wrapping_add(i.wrapping_mul(7)) as u8
        })
        .collect()
}

/// A sealed syscall record.
fn record(gseq: u64, len: usize) -> (RecordHeader, Vec<u8>) {
    let p = payload(gseq, len);
    let mut h = RecordHeader {
        kind: Kind::Syscall as u16,
        gseq,
        vpid: 1,
        vtid: 1,
        ..RecordHeader::default()
    };
    h.seal(&p);
    (h, p)
}

/// Wait for the record at `tail`, copy it out and consume it.
fn take(r: &Region, f: &TestFutex) -> (RecordHeader, Vec<u8>) {
    loop {
        if let Some(h) = r.peek() {
            let mut p = std::vec![0; h.payload_len as usize];
            r.read_payload(&h, 0, &mut p);
            r.consume(&h, f);
            return (h, p);
        }
        r.wait_published(f, Some(100));
    }
}

/// Check a record taken from the ring against what `record` made.
fn check(h: &RecordHeader, p: &[u8], gseq: u64) {
    assert_eq!(h.gseq, gseq);
    assert_eq!(h.crc, h.compute_crc(p), "record {gseq}: checksum");
    assert_eq!(p, &payload(gseq, p.len())[..], "record {gseq}: payload");
}

/// Wait until `cond` holds, at most 10 s.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Largest record (padded), and how many of them fit in the ring.
const BIG: usize = padded(RECORD_HEADER_LEN + MAX_PAYLOAD);
const BIG_FIT: usize = RING_CAP / BIG;

/// Fill the ring with `BIG_FIT` largest records, gseq 1..; returns the
/// next gseq. Another largest record does not fit after them.
fn fill(r: &Region, f: &TestFutex) -> u64 {
    for g in 1..=BIG_FIT as u64 {
        let (h, p) = record(g, MAX_PAYLOAD);
        assert!(r.publish(&h, &p, f));
    }
    assert!(r.free_space() < BIG);
    BIG_FIT as u64 + 1
}

#[test]
fn layout_fits() {
    assert_eq!(RING_OFFSET % 4096, 0);
    assert!(RING_CAP.is_power_of_two());
    assert_eq!(REGION_LEN, RING_OFFSET + RING_CAP);
}

#[test]
fn init_and_flags() {
    let mem = Mem::new();
    let r = mem.region();
    assert!(r.is_valid());
    assert_eq!(r.mode(), Some(Mode::Record));
    assert_eq!(r.control().next_gseq.load(Ordering::Relaxed), 1);
    assert_eq!(r.free_space(), RING_CAP);
    let f = TestFutex::default();
    assert!(!r.has(CTL_DIVERGED));
    r.raise(CTL_DIVERGED, &f);
    assert!(r.has(CTL_DIVERGED));
    assert!(!r.has(CTL_FAILED));
    assert_eq!(f.wakes.load(Ordering::Relaxed), 2);
}

#[test]
fn the_first_message_wins() {
    let mem = Mem::new();
    let r = mem.region();
    let mut out = [0u8; MESSAGE_LEN];
    assert_eq!(r.message(&mut out), 0);
    r.set_message(b"replay diverged at record #3");
    r.set_message(b"second");
    let n = r.message(&mut out);
    assert_eq!(&out[..n], b"replay diverged at record #3");
    let mut short = [0u8; 6];
    assert_eq!(r.message(&mut short), 6);
    assert_eq!(&short, b"replay");
}

#[test]
fn process_table_slots() {
    let mem = Mem::new();
    let r = mem.region();
    let a = r.alloc_proc(1, 0).unwrap();
    let b = r.alloc_proc(2, 1).unwrap();
    assert_ne!(a, b);
    r.proc(b).real_pid.store(4242, Ordering::Release);
    assert_eq!(r.slot_of_vpid(2), Some(b));
    assert_eq!(r.slot_of_real_pid(4242), Some(b));
    assert_eq!(r.slot_of_vpid(3), None);
    r.proc(b).state.store(PROC_EXITED, Ordering::Release);
    assert_eq!(r.slot_of_real_pid(4242), None);
    assert_eq!(r.slot_of_vpid(2), Some(b));
}

#[test]
fn publish_peek_read_consume() {
    let mem = Mem::new();
    let r = mem.region();
    let f = TestFutex::default();
    assert_eq!(r.peek(), None);
    let records: Vec<_> = [(1, 0), (2, 5), (3, 64), (4, 1000)]
        .iter()
        .map(|&(g, n)| record(g, n))
        .collect();
    for (h, p) in &records {
        assert!(r.publish(h, p, &f));
    }
    let used: usize = records.iter().map(|(h, _)| h.padded_len()).sum();
    assert_eq!(r.free_space(), RING_CAP - used);
    for (h, p) in &records {
        // Peeking does not consume.
        assert_eq!(r.peek(), Some(*h));
        assert_eq!(r.peek(), Some(*h));
        let mut all = std::vec![0; p.len()];
        r.read_payload(h, 0, &mut all);
        assert_eq!(&all, p);
        if p.len() > 3 {
            let mut part = [0u8; 3];
            r.read_payload(h, p.len() - 3, &mut part);
            assert_eq!(part, p[p.len() - 3..]);
        }
        r.consume(h, &f);
    }
    assert_eq!(r.peek(), None);
    assert_eq!(r.free_space(), RING_CAP);
    let c = r.control();
    assert_eq!(c.consumed.load(Ordering::Relaxed), 4);
    assert_eq!(c.head.load(Ordering::Relaxed), used as u64);
    assert_eq!(c.tail.load(Ordering::Relaxed), used as u64);
    // Nobody waited, so nobody was woken.
    assert_eq!(f.wakes.load(Ordering::Relaxed), 0);
}

#[test]
fn a_record_cut_by_the_end_of_the_ring_comes_out_whole() {
    let f = TestFutex::default();
    // Where the record starts relative to the end of the ring: inside its
    // header, at the header's end, inside its payload.
    for before_end in [8usize, 24, 56, 64, 72, 200, 1024] {
        let mem = Mem::new();
        let r = mem.region();
        let c = r.control();
        let at = (3 * RING_CAP - before_end) as u64;
        c.head.store(at, Ordering::Relaxed);
        c.tail.store(at, Ordering::Relaxed);
        let (h, p) = record(9, 500);
        assert!(r.publish(&h, &p, &f));
        assert_eq!(r.peek(), Some(h), "{before_end} bytes before the end");
        let mut out = std::vec![0; p.len()];
        r.read_payload(&h, 0, &mut out);
        assert_eq!(out, p, "{before_end} bytes before the end");
        for skip in [0, 1, 100, 499] {
            let mut part = std::vec![0; p.len() - skip];
            r.read_payload(&h, skip, &mut part);
            assert_eq!(part, p[skip..]);
        }
        r.consume(&h, &f);
        assert_eq!(c.tail.load(Ordering::Relaxed), at + h.padded_len() as u64);
        assert_eq!(r.peek(), None);
    }
}

#[test]
fn records_stream_through_the_ring_many_times_over() {
    stream(TestFutex::default());
}

#[test]
fn records_stream_through_the_ring_to_a_polling_side() {
    stream(TestFutex::polling());
}

/// `n` payload sizes in a fixed pseudo-random order (xorshift from `seed`),
/// each chosen by `pick` from the next random number.
fn payload_sizes(seed: u64, n: usize, pick: impl Fn(u64) -> usize) -> Vec<usize> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            pick(x)
        })
        .collect()
}

/// A producer thread and a consumer move records of assorted sizes, more
/// than three times the ring's capacity, through the ring.
fn stream(f: TestFutex) {
    let mem = Mem::new();
    let r = mem.region();
    // Sizes from small to the largest, in a fixed pseudo-random order.
    let sizes = payload_sizes(0x2545_f491_4f6c_dd1d, 400, |x| match x % 10 {
        0 => MAX_PAYLOAD - (x >> 8) as usize % 4096,
        1..=4 => (x >> 8) as usize % 200_000,
        _ => (x >> 8) as usize % 300,
    });
    let total: usize = sizes.iter().map(|&n| padded(RECORD_HEADER_LEN + n)).sum();
    assert!(total > 3 * RING_CAP, "{total}");

    let wrapped = thread::scope(|s| {
        let sizes = &sizes;
        let f = &f;
        s.spawn(move || {
            for (i, &n) in sizes.iter().enumerate() {
                let (h, p) = record(i as u64 + 1, n);
                assert!(r.publish(&h, &p, f));
            }
        });
        let mut wrapped = 0;
        for (i, &n) in sizes.iter().enumerate() {
            let tail = r.control().tail.load(Ordering::Acquire) as usize % RING_CAP;
            let (h, p) = take(&r, f);
            check(&h, &p, i as u64 + 1);
            assert_eq!(p.len(), n);
            if tail + h.padded_len() > RING_CAP {
                wrapped += 1;
            }
        }
        wrapped
    });
    assert!(
        wrapped >= 3,
        "only {wrapped} records crossed the end of the ring"
    );
    assert_eq!(r.peek(), None);
    assert_eq!(r.control().head.load(Ordering::Relaxed), total as u64);
    assert_eq!(
        r.control().consumed.load(Ordering::Relaxed),
        sizes.len() as u64
    );
}

#[test]
fn a_full_ring_holds_the_producer_until_a_consume() {
    full_ring(TestFutex::default());
}

#[test]
fn a_full_ring_holds_a_polling_producer_until_a_consume() {
    full_ring(TestFutex::polling());
}

/// Publish into a full ring waits until a consume makes room; nothing is
/// dropped and the order holds.
fn full_ring(f: TestFutex) {
    let mem = Mem::new();
    let r = mem.region();
    let next = fill(&r, &f);
    let published = AtomicUsize::new(0);
    thread::scope(|s| {
        let (f, published) = (&f, &published);
        s.spawn(move || {
            for g in next..next + 2 {
                let (h, p) = record(g, MAX_PAYLOAD);
                assert!(r.publish(&h, &p, f));
                published.fetch_add(1, Ordering::AcqRel);
            }
        });
        eventually("the producer to wait", || {
            f.waits.load(Ordering::Acquire) != 0
        });
        thread::sleep(Duration::from_millis(50));
        assert_eq!(
            published.load(Ordering::Acquire),
            0,
            "published into a full ring"
        );
        let head = r.control().head.load(Ordering::Acquire);
        assert_eq!(head, (BIG_FIT * BIG) as u64);

        // One consume makes room for exactly one more.
        let (h, p) = take(&r, f);
        check(&h, &p, 1);
        eventually("the first blocked record", || {
            published.load(Ordering::Acquire) == 1
        });
        if !f.polling {
            assert!(
                f.wakes.load(Ordering::Relaxed) >= 1,
                "the consume did not wake the sleeping producer"
            );
        }
        thread::sleep(Duration::from_millis(50));
        assert_eq!(published.load(Ordering::Acquire), 1);

        let (h, p) = take(&r, f);
        check(&h, &p, 2);
        eventually("the second blocked record", || {
            published.load(Ordering::Acquire) == 2
        });
    });
    // Everything comes out, in order.
    for g in 3..next + 2 {
        let (h, p) = take(&r, &f);
        check(&h, &p, g);
        assert_eq!(p.len(), MAX_PAYLOAD);
    }
    assert_eq!(r.peek(), None);
}

#[test]
fn a_departed_consumer_releases_a_blocked_producer() {
    consumer_gone(TestFutex::default());
}

#[test]
fn a_departed_consumer_releases_a_polling_producer() {
    consumer_gone(TestFutex::polling());
}

/// `CTL_CONSUMER_GONE` makes a publish waiting for room give up.
fn consumer_gone(f: TestFutex) {
    let mem = Mem::new();
    let r = mem.region();
    let next = fill(&r, &f);
    let head = r.control().head.load(Ordering::Acquire);
    let done = AtomicUsize::new(0);
    let ok = thread::scope(|s| {
        let t = s.spawn(|| {
            let (h, p) = record(next, MAX_PAYLOAD);
            let ok = r.publish(&h, &p, &f);
            done.store(1, Ordering::Release);
            ok
        });
        eventually("the producer to wait", || {
            f.waits.load(Ordering::Acquire) != 0
        });
        thread::sleep(Duration::from_millis(50));
        assert_eq!(done.load(Ordering::Acquire), 0);
        r.raise(CTL_CONSUMER_GONE, &f);
        t.join().unwrap()
    });
    assert!(!ok, "publish claimed success with nobody consuming");
    assert_eq!(
        r.control().head.load(Ordering::Acquire),
        head,
        "a record was published anyway"
    );
    // With the flag up a full ring refuses at once; a record that fits goes in.
    let (h, p) = record(next, MAX_PAYLOAD);
    assert!(!r.publish(&h, &p, &f));
    let (h, p) = record(next, 16);
    assert!(r.publish(&h, &p, &f));
}

/// A replica that went live keeps `CTL_WENT_LIVE` for good. Its replay
/// threads must never sleep past it, but the consumer of its new records
/// must still sleep while the ring is empty: a consumer that treated the
/// flag as an event would poll the empty ring at full speed for the rest
/// of the program's life.
#[test]
fn after_going_live_the_consumer_sleeps_and_replay_threads_do_not() {
    let mem = Mem::new();
    let r = mem.region();
    let f = TestFutex::default();
    r.go_live(1, &f);
    assert!(r.has(CTL_WENT_LIVE));
    r.wait_published(&f, Some(1));
    assert_eq!(
        f.waits.load(Ordering::Relaxed),
        0,
        "a replay thread slept past going live"
    );
    r.wait_for_records(&f, Some(1));
    assert_eq!(
        f.waits.load(Ordering::Relaxed),
        1,
        "the consumer did not sleep on an empty ring"
    );
    let (h, p) = record(1, 10);
    assert!(r.publish(&h, &p, &f));
    r.wait_for_records(&f, Some(1));
    assert_eq!(
        f.waits.load(Ordering::Relaxed),
        1,
        "the consumer slept with a record published"
    );
}

/// A thread checkpointed while it waited for its turn resumes, after a
/// restore, inside that wait, in a new region whose counts never had it.
/// Leaving the wait must not hide the next thread that sleeps there: the
/// thread that passes the turn must still wake it.
#[test]
fn a_wait_resumed_in_a_restored_region_leaves_the_next_sleeper_wakeable() {
    let mem = Mem::new();
    let r = mem.region();
    r.control()
        .mode
        .store(Mode::Replay as u32, Ordering::SeqCst);
    let f = TestFutex::default();
    let (mut h1, p1) = record(1, 8);
    let (mut h2, p2) = record(2, 8);
    h1.vtid = 1;
    h2.vtid = 2;
    assert!(r.publish(&h1, &p1, &f));
    assert!(r.publish(&h2, &p2, &f));
    let c = r.control();
    thread::scope(|s| {
        // Thread 2 sleeps for its turn (record 1, thread 1's, is the head).
        let t = s.spawn(|| r.wait_turn(2, &f, Some(10_000)));
        eventually("thread 2 to sleep", || {
            c.turn_waiters[2].load(Ordering::SeqCst) == 1
        });
        // The restore: a fresh region, whose counts are zero, under the
        // sleeping thread; then the thread comes out of its wait.
        c.turn_waiters[2].store(0, Ordering::SeqCst);
        c.turn_sleepers.store(0, Ordering::SeqCst);
        c.turn_words[2].fetch_add(1, Ordering::SeqCst);
        t.join().unwrap();
        assert_eq!(c.turn_waiters[2].load(Ordering::SeqCst), 0);
        assert_eq!(c.turn_sleepers.load(Ordering::SeqCst), 0);
        // It sleeps again; thread 1 replays record 1 and passes the turn.
        let t = s.spawn(|| r.wait_turn(2, &f, Some(10_000)));
        eventually("thread 2 to sleep again", || {
            c.turn_waiters[2].load(Ordering::SeqCst) == 1
        });
        let wakes = f.wakes.load(Ordering::SeqCst);
        let h = r.peek().expect("record 1 at the head");
        r.consume_and_pass(&h, &f);
        assert!(
            f.wakes.load(Ordering::SeqCst) > wakes,
            "the turn passed to thread 2 without waking it"
        );
        t.join().unwrap();
    });
}

#[test]
fn a_waiting_consumer_is_woken_by_publish() {
    let mem = Mem::new();
    let r = mem.region();
    let f = TestFutex::default();
    thread::scope(|s| {
        let t = s.spawn(|| take(&r, &f));
        eventually("the consumer to wait", || {
            r.control().head_waiters.load(Ordering::Acquire) != 0
        });
        let (h, p) = record(1, 10);
        assert!(r.publish(&h, &p, &f));
        let (h2, p2) = t.join().unwrap();
        assert_eq!((h2, p2), (h, p));
    });
    assert!(f.wakes.load(Ordering::Relaxed) >= 1);
    assert!(f.waits.load(Ordering::Relaxed) >= 1);
}

#[test]
fn interleaved_publish_and_consume_at_every_alignment_near_the_end() {
    // Start 0..=80 bytes (in steps of 8) before the end of the ring, and
    // push batches of records of assorted sizes through.
    let f = TestFutex::default();
    let mem = Mem::new();
    let r = mem.region();
    let c = r.control();
    let sizes = [0usize, 1, 7, 8, 9, 56, 57, 64, 100, 4095, 65_536];
    for (lap, before_end) in (0..=80).step_by(8).enumerate() {
        // The counters only grow: each start lies ahead of the last.
        let at = ((5 + lap) * RING_CAP - before_end) as u64;
        assert!(at >= c.head.load(Ordering::Relaxed));
        c.head.store(at, Ordering::Relaxed);
        c.tail.store(at, Ordering::Relaxed);
        let mut g = 1;
        for batch in sizes.chunks(3) {
            let start = g;
            for &n in batch {
                let (h, p) = record(g, n);
                assert!(r.publish(&h, &p, &f));
                g += 1;
            }
            for (k, &n) in batch.iter().enumerate() {
                let (h, p) = take(&r, &f);
                check(&h, &p, start + k as u64);
                assert_eq!(p.len(), n);
            }
        }
        assert_eq!(r.peek(), None);
        assert_eq!(r.free_space(), RING_CAP);
    }
}

/// A batch consumer (as `ferry record` and `ferryd` drain the ring): walk
/// the published records with `header_at`, take them with `copy_record` or
/// in place with `unconsumed_mut`, release each batch with one
/// `consume_to`. Records of assorted sizes, many of them small, more than
/// three times the ring's capacity, come out whole and in order, those cut
/// by the end of the ring included, and the producer is held back, never
/// overrun.
#[test]
fn a_batch_consumer_takes_every_record_whole() {
    let mem = Mem::new();
    let r = mem.region();
    let f = TestFutex::default();
    let sizes = payload_sizes(0x9e37_79b9_7f4a_7c15, 3000, |x| match x % 20 {
        0 => MAX_PAYLOAD - (x >> 8) as usize % 4096,
        1..=3 => (x >> 8) as usize % 100_000,
        _ => (x >> 8) as usize % 40,
    });
    let total: usize = sizes.iter().map(|&n| padded(RECORD_HEADER_LEN + n)).sum();
    assert!(total > 3 * RING_CAP, "{total}");
    let (cut, in_place) = thread::scope(|s| {
        let sizes = &sizes;
        let f = &f;
        s.spawn(move || {
            for (i, &n) in sizes.iter().enumerate() {
                let (h, p) = record(i as u64 + 1, n);
                assert!(r.publish(&h, &p, f));
            }
        });
        let (mut next, mut cut, mut in_place) = (0usize, 0, 0);
        let mut batch_no = 0u64;
        while next < sizes.len() {
            let head = r.head();
            let start = r.consume_pos();
            let mut pos = start;
            let mut n = 0;
            while let Some(h) = r.header_at(pos, head) {
                let len = h.len as usize;
                assert_eq!(len, RECORD_HEADER_LEN + sizes[next], "record {}", next + 1);
                let mut bytes = std::vec![0u8; len];
                if pos + padded(len) as u64 > Region::lap_end(pos) {
                    cut += 1;
                    r.copy_record(pos, &mut bytes);
                } else if batch_no.is_multiple_of(2) {
                    in_place += 1;
                    // SAFETY: this test is the one consumer; the record is
                    // published, not released, and inside one lap.
                    let rec = unsafe { r.unconsumed_mut(pos, padded(len)) };
                    bytes.copy_from_slice(&rec[..len]);
                } else {
                    r.copy_record(pos, &mut bytes);
                }
                let (hh, p) = RecordHeader::read_from_prefix(&bytes).unwrap();
                check(&hh, p, next as u64 + 1);
                pos += padded(len) as u64;
                next += 1;
                n += 1;
            }
            r.consume_to(pos, n, f);
            assert_eq!(r.consume_pos(), pos);
            batch_no += 1;
            if n == 0 {
                r.wait_published(f, Some(100));
            }
        }
        (cut, in_place)
    });
    assert!(cut >= 3, "only {cut} records crossed the end of the ring");
    assert!(in_place > 0);
    assert_eq!(r.peek(), None);
    assert_eq!(
        r.control().consumed.load(Ordering::Relaxed),
        sizes.len() as u64
    );
}

#[test]
fn sealing_a_record_in_place_gives_the_checksum_seal_gives() {
    for n in [0usize, 1, 7, 8, 100, 4096] {
        let (h, p) = record(5, n);
        let mut bytes = std::vec::Vec::from(h.as_bytes());
        bytes.extend_from_slice(&p);
        // Whatever the crc field held before, as in the ring (zero there).
        bytes[28..32].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        RecordHeader::seal_bytes(&mut bytes);
        let (sealed, _) = RecordHeader::read_from_prefix(&bytes).unwrap();
        assert_eq!(sealed, h, "payload of {n} bytes");
    }
}
