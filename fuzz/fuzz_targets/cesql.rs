//! CESQL (`sql` filters): parsed, and evaluated on an event when they compile.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| switchyard_fuzz::cesql(input));
