//! What the fuzz targets share: the checks a reader's answer must pass, and
//! a fix-up that gives random input valid checksums so the fuzzer gets past
//! them to the length, kind, order and start-record checks.

pub mod image;

use ferry_proto::log::{validate, LogError, LogHeader, LogReader, StartInfo, LOG_HEADER_LEN};
use ferry_proto::{padded, RecordHeader, MAX_PAYLOAD, RECORD_HEADER_LEN};
use zerocopy::{FromBytes, IntoBytes};

/// Read `data` as a log with both the reader and `validate`; panic if they
/// disagree or if an answer is malformed. Any bytes at all must get here
/// without a panic inside the reader.
pub fn check(data: &[u8]) {
    let summary = validate(data);
    let reader = match LogReader::new(data) {
        Ok(r) => r,
        Err(e) => {
            assert_eq!(summary, Err(e));
            return;
        }
    };
    let first_offset = reader.position();
    let mut last = None;
    let mut bad_start = None;
    let mut error = None;
    for record in reader {
        match record {
            Ok(r) => {
                assert_eq!(r.payload.len(), r.header.payload_len as usize);
                assert!(r.offset as usize + r.header.padded_len() <= data.len());
                if let Some(prev) = last {
                    assert!(r.header.gseq > prev);
                }
                last = Some(r.header.gseq);
                if r.index == 0 {
                    if let Err(why) = StartInfo::decode(r.payload) {
                        bad_start = Some(LogError::BadStart {
                            offset: r.offset,
                            why,
                        });
                    }
                }
            }
            Err(e) => {
                let line = e.to_string();
                assert!(line.starts_with(&format!("offset {}: ", e.offset())));
                assert!(!line.contains('\n'));
                error = Some(e);
            }
        }
    }
    // validate makes the same pass and stops at the first problem.
    match (bad_start, error, last) {
        (Some(e), _, _) | (None, Some(e), _) => assert_eq!(summary, Err(e)),
        (None, None, None) => {
            assert!(
                matches!(summary, Err(LogError::BadStart { offset, .. }) if offset == first_offset)
            )
        }
        (None, None, Some(last)) => assert_eq!(summary.unwrap().last_gseq, last),
    }
}

/// A copy of `data` with the file header's and every reachable record's
/// checksum set right (lengths are left as they are).
pub fn seal_all(data: &[u8]) -> Vec<u8> {
    let mut buf = data.to_vec();
    let Ok((mut h, _)) = LogHeader::read_from_prefix(&buf) else {
        return buf;
    };
    h.seal();
    buf[..LOG_HEADER_LEN].copy_from_slice(h.as_bytes());
    let mut pos = (h.header_len as usize).max(LOG_HEADER_LEN);
    while let Some(rest) = buf.get(pos..) {
        let Ok((mut r, _)) = RecordHeader::read_from_prefix(rest) else {
            break;
        };
        let len = r.len as usize;
        if r.payload_len as usize > MAX_PAYLOAD
            || len != RECORD_HEADER_LEN + r.payload_len as usize
            || rest.len() < padded(len)
        {
            break;
        }
        r.crc = r.compute_crc(&rest[RECORD_HEADER_LEN..len]);
        buf[pos..pos + RECORD_HEADER_LEN].copy_from_slice(r.as_bytes());
        pos += padded(len);
    }
    buf
}
