//! Binary mode: the input is "name: value" lines, a blank line, then the body.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| switchyard_fuzz::binary_headers(input));
