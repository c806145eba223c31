//! CEL filters: compiled, and run against a Tekton-like event when they compile.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| switchyard_fuzz::cel_filter(input));
