#![no_main]
//! Fuzz target `envelope`: see `roomcast_testkit::fuzz::envelope_round_trip` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_testkit::fuzz::envelope_round_trip(data));
