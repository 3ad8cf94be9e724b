#![no_main]
//! Fuzz target `publish_body`: see `roomcast_net::fuzzing::publish_body` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_net::fuzzing::publish_body(data));
