#![no_main]
//! Fuzz target `core_events`: see `roomcast_testkit::fuzz::core_events` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_testkit::fuzz::core_events(data));
