//! Fuzz target `snapshot`: see `ringkv::fuzzing::Target::Snapshot`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv::fuzzing::Target::Snapshot.run(data));
