#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vvgate::fuzzing::kv_value(data));
