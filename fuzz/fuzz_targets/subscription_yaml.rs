//! Subscription files: any text is loaded or refused with errors, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| switchyard_fuzz::subscription_yaml(input));
