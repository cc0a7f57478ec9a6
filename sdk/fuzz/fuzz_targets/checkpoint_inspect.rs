//! Any bytes read as a checkpoint give its header or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = baton_sdk::checkpoint::inspect(bytes);
});
