//! Node-to-node frames: the stream deframer (any chunking) and every message decoder.
#![no_main]

use gossipnet::wire::{FrameReader, Msg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Msg::decode(data);
    // The first byte picks a chunk size, so frames split across reads are covered too.
    let Some((&cut, rest)) = data.split_first() else { return };
    let cut = (cut as usize).max(1);
    let mut r = FrameReader::new(4096);
    for chunk in rest.chunks(cut) {
        r.push(chunk);
        loop {
            match r.next_frame() {
                Ok(Some(body)) => {
                    if let Ok(m) = Msg::decode(&body) {
                        // Whatever decodes survives a round trip (the bytes may differ:
                        // `127.0.0.1:09` decodes, and encodes as `127.0.0.1:9`).
                        assert_eq!(Msg::decode(&m.encode()[4..]), Ok(m));
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(r.pending() <= 4096 + 4 + cut);
    }
});
