//! Structured mode, JSON format.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| switchyard_fuzz::structured_json(input));
