//! Structured and batch mode, protobuf format.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| switchyard_fuzz::protobuf(input));
