//! As `image_reader`, with the checksums of the input fixed up first, so the
//! checks behind them (lengths, caps, kinds, order, page addresses) are
//! reached.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_fuzz::image::check(&ferry_fuzz::image::seal_all(data)));
