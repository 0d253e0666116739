//! `seeds.yaml`: any text gives a config or a one-line error, never a panic.
#![no_main]

use gossipnet::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Err(e) = Config::parse(s) {
        assert!(!e.0.contains('\n'));
    }
});
