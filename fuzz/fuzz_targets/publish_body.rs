#![no_main]
//! Fuzz target `publish_body`: see `roomcast_testkit::fuzz::publish_body` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_testkit::fuzz::publish_body(data));
