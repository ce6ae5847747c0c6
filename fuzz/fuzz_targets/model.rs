//! The model-based adversarial test's operations (tests/it/model.rs), drawn from fuzzer bytes and
//! run against the real `deputy` binary (`DEPUTY_BIN`, a debug build) with every check after
//! every step. Slow (a process per input): run it long.
#![no_main]

#[path = "../../tests/it/common/mod.rs"]
mod common;
#[path = "../../tests/it/model/deputy.rs"]
mod deputy;
#[path = "../../tests/it/model/oracle.rs"]
mod oracle;
#[path = "../../tests/it/model/run.rs"]
mod run;

libfuzzer_sys::fuzz_target!(|data: &[u8]| run::fuzz(data));
