//! The assignment's texts: dead-node reports and liveness request and reply parsers.
#![no_main]

use gossipnet::texts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some(r) = texts::parse_dead_node(s) {
        // A parsed report formats back to a text that parses to the same report.
        let again = texts::dead_node(&r.dead, r.ts_ms, &r.reporter);
        assert_eq!(texts::parse_dead_node(&again), Some(r));
    }
    let _ = texts::parse_liveness_request(s);
    let _ = texts::parse_liveness_reply(s);
});
