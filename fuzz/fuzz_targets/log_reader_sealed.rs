//! As `log_reader`, with the checksums of the input fixed up first, so the
//! checks behind them (lengths, kinds, order, start record) are reached.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_fuzz::check(&ferry_fuzz::seal_all(data)));
