//! The `POST /v1/start` body parser on arbitrary bytes: never a panic.
//! Built with the `v1` feature, which `run.sh` turns on.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = runfleet_server::v1::parse_start_body(data);
});
