#![no_main]
//! Fuzz target `token`: see `roomcast_testkit::fuzz::token` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_testkit::fuzz::token(data));
