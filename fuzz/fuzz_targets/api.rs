//! Application API messages: the stream reader (any chunking) and the decoder.
#![no_main]

use gossipnet::api::{ApiMsg, ApiReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ApiMsg::decode(data) {
        // Reserved bits are dropped, so compare meaning, not bytes.
        assert_eq!(ApiMsg::decode(&m.encode().unwrap()), Ok(m));
    }
    let Some((&cut, rest)) = data.split_first() else { return };
    let cut = (cut as usize).max(1);
    let mut r = ApiReader::default();
    for chunk in rest.chunks(cut) {
        r.push(chunk);
        loop {
            match r.next_msg() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
