//! Fuzz target `hook_record`: see `ringkv::fuzzing::Target::HookRecord`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv::fuzzing::Target::HookRecord.run(data));
