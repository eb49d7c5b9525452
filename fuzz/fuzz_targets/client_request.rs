//! Fuzz target `client_request`: see `ringkv::fuzzing::Target::ClientRequest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv::fuzzing::Target::ClientRequest.run(data));
