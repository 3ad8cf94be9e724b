#![no_main]
//! Fuzz target `client_message`: see `roomcast_testkit::fuzz::client_message` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_testkit::fuzz::client_message(data));
