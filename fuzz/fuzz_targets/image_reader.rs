//! Any bytes given to the image reader, as a process file and as a
//! manifest: an error of one line or a sound reading, never a panic, a hang
//! or an allocation the input's lengths ask for.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_fuzz::image::check(data));
