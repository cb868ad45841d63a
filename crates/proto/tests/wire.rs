//! The frame format of `docs/WIRE.md`: round trips, bad input, versions.

use ferry_proto::wire::{
    encode, encode_raw, frame_checksum, read_datagram, FrameHeader, FrameReader, WireError,
    DEFAULT_MAX_BODY, FLAG_OPTIONAL, FRAME_HEADER_LEN, KIND_CONTROL_REPLY, KIND_CONTROL_REQUEST,
    KIND_RECORD_BATCH, KIND_REPLICATION, WIRE_MAGIC, WIRE_MAJOR,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use zerocopy::{FromBytes, IntoBytes};

/// Records the largest allocation made by a thread that asked for it.
struct Tracking;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping touches const-initialised thread-locals only, which never
// allocate.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note(size: usize) {
    if TRACK.try_with(Cell::get).unwrap_or(false) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Ack {
    epoch: u64,
    gseq: u64,
    node: String,
    ranges: Vec<(u64, u64)>,
    stop: Option<bool>,
}

/// The same message as a newer minor writes it: two fields appended.
#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct AckV1 {
    epoch: u64,
    gseq: u64,
    node: String,
    ranges: Vec<(u64, u64)>,
    stop: Option<bool>,
    lag_ns: u64,
    note: String,
}

fn ack(i: u64) -> Ack {
    Ack {
        epoch: 3,
        gseq: 1000 + i,
        node: format!("node-{i}"),
        ranges: (0..i % 4).map(|k| (k, k * 10)).collect(),
        stop: (i & 1 == 0).then_some(true),
    }
}

/// `frame` with its header changed by `f` and the checksum made right again.
fn reseal(frame: &[u8], f: impl FnOnce(&mut FrameHeader)) -> Vec<u8> {
    let (mut h, body) = FrameHeader::read_from_prefix(frame).unwrap();
    f(&mut h);
    h.crc = frame_checksum(&h, body);
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

#[test]
fn header_layout() {
    let frame = encode_raw(KIND_RECORD_BATCH, 0x0102, b"abc").unwrap();
    assert_eq!(frame.len(), FRAME_HEADER_LEN + 3);
    assert_eq!(&frame[0..4], b"FRY1");
    assert_eq!(frame[4], 1);
    assert_eq!(frame[5], 0);
    assert_eq!(&frame[6..8], &2u16.to_le_bytes());
    assert_eq!(&frame[8..10], &0x0102u16.to_le_bytes());
    assert_eq!(&frame[10..12], &[0, 0]);
    assert_eq!(&frame[12..16], &3u32.to_le_bytes());
    let mut zeroed = frame.clone();
    zeroed[16..20].fill(0);
    assert_eq!(&frame[16..20], &crc32c::crc32c(&zeroed).to_le_bytes());
    assert_eq!(&frame[20..], b"abc");
}

#[test]
fn round_trip_struct() {
    let msg = ack(5);
    let bytes = encode(KIND_REPLICATION, 0, &msg).unwrap();
    let mut r = FrameReader::new();
    r.push(&bytes);
    let frame = r.next_frame().unwrap().unwrap();
    assert_eq!(
        (frame.kind, frame.flags, frame.minor, frame.offset),
        (KIND_REPLICATION, 0, 0, 0)
    );
    assert_eq!(frame.decode::<Ack>().unwrap(), msg);
    assert_eq!(r.next_frame(), Ok(None));
    assert_eq!(r.buffered(), 0);
    assert_eq!(r.offset(), bytes.len() as u64);
}

#[test]
fn raw_batch_and_datagram() {
    let batch: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let bytes = encode_raw(KIND_RECORD_BATCH, 0, &batch).unwrap();
    let frame = read_datagram(&bytes, DEFAULT_MAX_BODY).unwrap().unwrap();
    assert_eq!(frame.body, batch);

    let short = &bytes[..bytes.len() - 1];
    let e = read_datagram(short, DEFAULT_MAX_BODY).unwrap_err();
    assert!(matches!(e, WireError::Truncated { offset: 0, .. }), "{e}");
    let mut long = bytes.clone();
    long.push(0);
    let e = read_datagram(&long, DEFAULT_MAX_BODY).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("offset {}: 1 bytes after the frame", bytes.len())
    );
}

#[test]
fn many_frames_byte_by_byte() {
    let kinds = [KIND_REPLICATION, KIND_CONTROL_REQUEST, KIND_CONTROL_REPLY];
    let mut stream = Vec::new();
    let mut starts = Vec::new();
    for i in 0..50u64 {
        starts.push(stream.len() as u64);
        stream.extend(encode(kinds[i as usize % 3], 0, &ack(i)).unwrap());
    }
    let mut r = FrameReader::new();
    let mut got = Vec::new();
    for b in &stream {
        r.push(std::slice::from_ref(b));
        while let Some(f) = r.next_frame().unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got.len(), 50);
    for (i, f) in got.iter().enumerate() {
        assert_eq!(f.kind, kinds[i % 3]);
        assert_eq!(f.offset, starts[i]);
        assert_eq!(f.decode::<Ack>().unwrap(), ack(i as u64));
    }
    assert_eq!(r.buffered(), 0);
}

#[test]
fn garbage_is_bad_magic() {
    let mut r = FrameReader::new();
    r.push(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let e = r.next_frame().unwrap_err();
    assert_eq!(e.to_string(), "offset 0: bad magic");
    // The stream stays failed and keeps nothing.
    r.push(&[0u8; 1000]);
    assert_eq!(r.buffered(), 0);
    assert_eq!(r.next_frame(), Err(e));

    // After a good frame, the offset names where the bad one starts.
    let good = encode(KIND_REPLICATION, 0, &ack(1)).unwrap();
    let mut r = FrameReader::new();
    r.push(&good);
    r.push(b"FRY2");
    assert!(r.next_frame().unwrap().is_some());
    assert_eq!(
        r.next_frame().unwrap_err().to_string(),
        format!("offset {}: bad magic", good.len())
    );
}

#[test]
fn oversize_length_fails_before_allocating() {
    let mut header = FrameHeader {
        magic: WIRE_MAGIC,
        major: WIRE_MAJOR,
        minor: 0,
        kind: KIND_RECORD_BATCH,
        flags: 0,
        reserved: 0,
        len: u32::MAX,
        crc: 0,
    };
    header.crc = frame_checksum(&header, &[]);
    let mut r = FrameReader::new();
    TRACK.with(|t| t.set(true));
    r.push(header.as_bytes());
    for _ in 0..64 {
        r.push(&[0u8; 4096]);
    }
    let e = r.next_frame().unwrap_err();
    TRACK.with(|t| t.set(false));
    assert_eq!(
        e.to_string(),
        "offset 0: frame of 4294967295 bytes exceeds the 16777216-byte limit"
    );
    assert_eq!(r.buffered(), 0);
    let largest = LARGEST.with(Cell::get);
    assert!(largest < 4096, "largest allocation {largest} bytes");

    // A smaller cap applies too; encode refuses what no default reader takes.
    let mut r = FrameReader::with_max_body(10);
    r.push(&encode_raw(KIND_RECORD_BATCH, 0, &[0; 11]).unwrap());
    assert!(matches!(
        r.next_frame(),
        Err(WireError::TooLong {
            len: 11,
            max: 10,
            ..
        })
    ));
    let e = encode_raw(KIND_RECORD_BATCH, 0, &vec![0; DEFAULT_MAX_BODY + 1]).unwrap_err();
    assert!(matches!(e, WireError::EncodeTooLong { .. }), "{e}");
}

#[test]
fn flipped_byte_anywhere_fails() {
    let frame = encode(KIND_REPLICATION, 0, &ack(3)).unwrap();
    for i in 0..frame.len() {
        for bit in [0x01u8, 0x80, 0xff] {
            let mut bad = frame.clone();
            bad[i] ^= bit;
            // A cap of 1 MiB so that a grown length fails or completes
            // within the padding below.
            let mut r = FrameReader::with_max_body(1 << 20);
            r.push(&bad);
            r.push(&[0u8; 70_000]);
            let got = r.next_frame();
            assert!(got.is_err(), "byte {i} ^ {bit:#x}: {got:?}");
        }
    }
}

#[test]
fn checksum_mismatch_message() {
    let mut frame = encode(KIND_REPLICATION, 0, &ack(3)).unwrap();
    let last = frame.len() - 1;
    frame[last] ^= 1;
    let mut r = FrameReader::new();
    r.push(&encode_raw(KIND_RECORD_BATCH, 0, b"12345678").unwrap());
    r.push(&frame);
    assert!(r.next_frame().unwrap().is_some());
    assert_eq!(
        r.next_frame().unwrap_err().to_string(),
        "offset 28: checksum mismatch"
    );
}

#[test]
fn other_major_is_refused() {
    let frame = reseal(&encode(KIND_REPLICATION, 0, &ack(1)).unwrap(), |h| {
        h.major = 2
    });
    let mut r = FrameReader::new();
    r.push(&frame);
    assert_eq!(
        r.next_frame().unwrap_err().to_string(),
        "offset 0: unsupported major version 2"
    );
}

#[test]
fn newer_minor_with_appended_fields_decodes_into_older_struct() {
    let new = AckV1 {
        epoch: 9,
        gseq: 77,
        node: "b".into(),
        ranges: vec![(1, 2)],
        stop: None,
        lag_ns: 12345,
        note: "from 1.1".into(),
    };
    let frame = reseal(&encode(KIND_REPLICATION, 0x8000, &new).unwrap(), |h| {
        h.minor = 1
    });
    let mut r = FrameReader::new();
    r.push(&frame);
    let f = r.next_frame().unwrap().unwrap();
    assert_eq!(f.minor, 1);
    assert_eq!(f.flags, 0x8000, "unknown flag bits are kept and ignored");
    let old: Ack = f.decode().unwrap();
    assert_eq!(
        old,
        Ack {
            epoch: 9,
            gseq: 77,
            node: "b".into(),
            ranges: vec![(1, 2)],
            stop: None
        }
    );
    // The other way round a reader picks the older type by the frame's minor;
    // decoding a short body as the newer type is an error, not a panic.
    let f = read_datagram(&encode(KIND_REPLICATION, 0, &old).unwrap(), 1024)
        .unwrap()
        .unwrap();
    assert_eq!(f.minor, 0);
    let e = f.decode::<AckV1>().unwrap_err();
    assert!(
        e.to_string()
            .starts_with("offset 0: frame kind 1 body does not decode"),
        "{e}"
    );
}

#[test]
fn unknown_kind_optional_skipped_else_error() {
    let a = encode(KIND_REPLICATION, 0, &ack(1)).unwrap();
    let skip = encode(9, FLAG_OPTIONAL, &ack(2)).unwrap();
    let b = encode(KIND_CONTROL_REPLY, 0, &ack(3)).unwrap();
    let mut r = FrameReader::new();
    r.push(&a);
    r.push(&skip);
    r.push(&b);
    assert_eq!(
        r.next_frame().unwrap().unwrap().decode::<Ack>().unwrap(),
        ack(1)
    );
    let f = r.next_frame().unwrap().unwrap();
    assert_eq!(f.kind, KIND_CONTROL_REPLY);
    assert_eq!(f.offset, (a.len() + skip.len()) as u64);
    assert_eq!(r.next_frame(), Ok(None));
    assert_eq!(read_datagram(&skip, 1024), Ok(None));
    // A datagram holds one frame, even if the first is skipped.
    let two = [skip.clone(), b.clone()].concat();
    let e = read_datagram(&two, 1024).unwrap_err();
    assert!(matches!(e, WireError::TrailingBytes { count, .. } if count == b.len() as u64));

    let mut r = FrameReader::new();
    r.push(&a);
    r.push(&encode(9, 0, &ack(2)).unwrap());
    assert!(r.next_frame().unwrap().is_some());
    assert_eq!(
        r.next_frame().unwrap_err().to_string(),
        format!("offset {}: unknown frame kind 9", a.len())
    );
}

proptest! {
    #[test]
    fn random_streams_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..64,
        valid_prefix in any::<bool>(),
    ) {
        let mut stream = Vec::new();
        if valid_prefix {
            stream.extend(encode(KIND_REPLICATION, 0, &ack(1)).unwrap());
            // A plausible header so the random part reaches the later checks.
            stream.extend_from_slice(&WIRE_MAGIC);
            stream.push(WIRE_MAJOR);
        }
        stream.extend_from_slice(&bytes);
        let mut r = FrameReader::with_max_body(4096);
        for c in stream.chunks(chunk) {
            r.push(c);
            loop {
                match r.next_frame() {
                    Ok(Some(f)) => { let _ = f.decode::<Ack>(); }
                    Ok(None) => break,
                    Err(e) => { prop_assert!(e.offset().is_some()); break; }
                }
            }
            prop_assert!(r.buffered() <= FRAME_HEADER_LEN + 4096 + chunk);
        }
        let _ = read_datagram(&stream, 4096);
    }
}
