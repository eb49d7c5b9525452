//! Fuzz target `peer_payload`: see `ringkv::fuzzing::Target::PeerPayload`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv::fuzzing::Target::PeerPayload.run(data));
