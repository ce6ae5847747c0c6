#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deputy_fuzz::prover(data));
