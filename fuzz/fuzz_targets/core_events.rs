#![no_main]
//! Fuzz target `core_events`: see `roomcast_net::fuzzing::core_events` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_net::fuzzing::core_events(data));
