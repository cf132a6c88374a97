#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bedrock_broker::fuzzing::usage_tap(data));
