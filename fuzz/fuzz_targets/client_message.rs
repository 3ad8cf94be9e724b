#![no_main]
//! Fuzz target `client_message`: see `roomcast_net::fuzzing::client_message` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_net::fuzzing::client_message(data));
