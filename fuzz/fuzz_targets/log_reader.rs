//! Any bytes given to the log reader: an error or records, never a panic,
//! a hang or an allocation the input's lengths ask for.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_fuzz::check(data));
