//! The peer's words for people and tools: every `.txt` line and `.jsonl` record a peer writes is
//! made here, so the wording of the output files lives in one place. No decisions.

use std::io::Write;
use std::net::SocketAddr;

use crate::node::{Receipt, Record};
use crate::peer::gossip::Via;
use crate::texts::{self, printable, MAX_SHOWN, TEXT_DATA_TYPE};
use crate::wire::{Payload, PeerEntry};

pub fn started(me: &SocketAddr, key: Option<&str>) -> Record {
    let rec = Record::new("started")
        .field("role", "peer")
        .line(format!("Peer {me} listening"));
    match key {
        Some(k) => rec.field("key", k),
        None => rec,
    }
}

pub fn peer_list(union: &[PeerEntry]) -> Record {
    let peers: Vec<String> = union.iter().map(|p| texts::addr_text(&p.addr)).collect();
    let line = if peers.is_empty() {
        "Peer list from the seeds: (empty, this is the first peer)".to_string()
    } else {
        format!("Peer list from the seeds: {}", peers.join(", "))
    };
    Record::new("peer_list").field("peers", peers).line(line)
}

pub fn registered_with(seed: &SocketAddr) -> Record {
    Record::new("registered_with")
        .field("seed", seed.to_string())
        .line(format!("Registered with seed {seed}"))
}

/// A seed told us we had been removed while alive.
pub fn removed_notice(seed: &SocketAddr) -> Record {
    Record::new("removed_notice")
        .field("seed", seed.to_string())
        .line(format!(
            "Seed {seed} says this peer was removed from the peer list (taken for dead): registering again"
        ))
}

/// Registered again, as a new incarnation, after being removed while alive.
pub fn rejoined(seed: &SocketAddr) -> Record {
    Record::new("rejoined")
        .field("seed", seed.to_string())
        .line(format!(
            "Rejoined: registered again with seed {seed} after being removed while alive"
        ))
}

/// Rooted mode: this peer left its parent for what it delivered (`Rooted::received`): of the
/// last `counted` counts, `first` were items it pushed first, the rest rounds of grafts for
/// items it did not bring.
pub fn parent_left(parent: &SocketAddr, for_s: u64, first: u32, counted: u32) -> Record {
    Record::new("parent_left")
        .field("parent", parent.to_string())
        .field("for_s", for_s)
        .field("first", u64::from(first))
        .field("counted", u64::from(counted))
        .line(format!(
            "Left parent {parent} for {for_s} s: it brought first only {first} of the last {counted} items and rounds of grafts"
        ))
}

pub fn neighbour_up(peer: &SocketAddr) -> Record {
    Record::new("neighbour_up")
        .field("peer", peer.to_string())
        .line(format!("Connected to neighbour {peer}"))
}

pub fn neighbour_down(peer: &SocketAddr, reason: &str) -> Record {
    Record::new("neighbour_down")
        .field("peer", peer.to_string())
        .field("reason", reason)
        .line(format!("Lost neighbour {peer}: {reason}"))
}

pub fn gossip_sent(id: &[u8; 32], text: &str) -> Record {
    Record::new("gossip_sent")
        .field("id", texts::id_hex(id))
        .field("text", text)
        .line(format!("Generated {text}"))
}

/// First receipt of an item, kept raw until written (see [`Receipt`] and [`receipt_words`]).
pub fn gossip_received(
    id: &[u8; 32],
    data_type: u16,
    payload: &Payload,
    from: &SocketAddr,
    via: Via,
) -> Record {
    Record::received(Receipt {
        id: *id,
        data_type,
        payload: payload.clone(),
        from: *from,
        caught_up: via == Via::Sync,
    })
}

/// The words of a first receipt: the assignment's messages with their text (one line, control
/// characters escaped, at most `MAX_SHOWN` characters, with its size when cut), other types by
/// size and id only. No remote byte reaches the files raw.
///
/// Items pulled by catch-up carry `via: "sync"` and their line says so; items pushed by gossip
/// carry no `via`, and their line is the assignment's.
pub fn receipt_words(r: &Receipt) -> Record {
    let mut rec = Record::new("gossip_received").field("id", texts::id_hex(&r.id));
    if r.caught_up {
        rec = rec.field("via", "sync");
    }
    let from = texts::addr_text(&r.from);
    let payload = &r.payload;
    if r.data_type == TEXT_DATA_TYPE {
        let text = printable(&String::from_utf8_lossy(payload), MAX_SHOWN);
        let line = if r.caught_up {
            format!("Received {text} from {from} (catch-up)")
        } else {
            format!("Received {text} from {from}")
        };
        let rec = rec.line(line).field("text", text).field("from", from);
        if payload.len() > MAX_SHOWN {
            rec.field("bytes", payload.len())
        } else {
            rec
        }
    } else {
        rec.field("from", from)
            .field("data_type", r.data_type)
            .field("bytes", payload.len())
    }
}

/// [`receipt_words`] written straight into the writer's buffers, with no `Record` in between:
/// the `.jsonl` fields (`,"id":…` up to the last field) appended to `json`, and the `.txt`
/// line's words (after the time) to `line` when the record has one, which it says. Byte for
/// byte what the fields and line of `receipt_words` write (the test below holds them
/// together); this runs once per delivery, where a `Record` cost half a dozen allocations.
/// `from` is `texts::addr_text(&r.from)`, which the writer makes once for a burst's receipts
/// from one link.
pub fn write_receipt(r: &Receipt, from: &str, json: &mut Vec<u8>, line: &mut String) -> bool {
    let mut hex = [0u8; 64];
    let id = match hex::encode_to_slice(r.id, &mut hex) {
        Ok(()) => &hex[..],
        Err(_) => return write_receipt_slowly(r, json, line),
    };
    json.extend_from_slice(b",\"id\":\"");
    json.extend_from_slice(id);
    json.push(b'"');
    if r.caught_up {
        json.extend_from_slice(b",\"via\":\"sync\"");
    }
    // An address's text needs no JSON escaping (digits, dots, colons, hex, brackets).
    let payload = &r.payload;
    if r.data_type == TEXT_DATA_TYPE {
        let lossy = String::from_utf8_lossy(payload);
        let text = texts::printable_cow(&lossy, MAX_SHOWN);
        json.extend_from_slice(b",\"text\":");
        let _ = serde_json::to_writer(&mut *json, text.as_ref());
        json.extend_from_slice(b",\"from\":\"");
        json.extend_from_slice(from.as_bytes());
        json.push(b'"');
        if payload.len() > MAX_SHOWN {
            let _ = write!(json, ",\"bytes\":{}", payload.len());
        }
        line.push_str("Received ");
        line.push_str(&text);
        line.push_str(" from ");
        line.push_str(from);
        if r.caught_up {
            line.push_str(" (catch-up)");
        }
        true
    } else {
        json.extend_from_slice(b",\"from\":\"");
        json.extend_from_slice(from.as_bytes());
        let _ = write!(
            json,
            "\",\"data_type\":{},\"bytes\":{}",
            r.data_type,
            payload.len()
        );
        false
    }
}

/// `write_receipt` through a `Record` (never taken: a 32-byte id always fits its hex buffer).
fn write_receipt_slowly(r: &Receipt, json: &mut Vec<u8>, line: &mut String) -> bool {
    let rec = receipt_words(r);
    for (key, value) in &rec.fields {
        json.push(b',');
        let _ = serde_json::to_writer(&mut *json, key);
        json.push(b':');
        let _ = serde_json::to_writer(&mut *json, value);
    }
    match rec.line {
        Some(l) => {
            line.push_str(&l);
            true
        }
        None => false,
    }
}

pub fn announced(id: &[u8; 32], data_type: u16, bytes: usize) -> Record {
    Record::new("announced")
        .field("id", texts::id_hex(id))
        .field("data_type", data_type)
        .field("bytes", bytes)
}

pub fn dead_reported(dead: &SocketAddr, text: &str, seeds: Vec<String>) -> Record {
    Record::new("dead_reported")
        .field("dead", dead.to_string())
        .field("text", text)
        .field("seeds", seeds)
        .line(text)
}

pub fn leaving() -> Record {
    Record::new("leaving").line("Leaving: told seeds and neighbours")
}

/// A remote's reason for closing a link, as it may appear in our log: cut short and on one
/// line.
pub fn remote_reason(reason: &str) -> String {
    printable(reason, MAX_SHOWN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_reason_is_one_short_line() {
        let long = format!("a\nb\r{}", "x".repeat(500));
        let r = remote_reason(&long);
        assert_eq!(r.chars().count(), MAX_SHOWN + 1 + 2, "cut, and two escapes");
        assert!(r.starts_with("a\\nb\\rx"), "{r}");
    }

    #[test]
    fn a_text_item_with_newlines_is_one_escaped_line() {
        let from = SocketAddr::from(([127, 0, 0, 1], 9101));
        let r = gossip_received(
            &[7; 32],
            0,
            &b"1:a\n00:00 Removed peer x (dead)\x1b[2J"[..].into(),
            &from,
            Via::Gossip,
        )
        .expanded();
        let line = r.line.clone().unwrap();
        assert!(!line.chars().any(|c| c.is_control()), "{line}");
        assert!(r.get("bytes").is_none(), "short texts are whole");
    }

    #[test]
    fn a_receipt_written_straight_is_its_record_byte_for_byte() {
        let long = "é\"x\\".repeat(100);
        let payloads: Vec<&[u8]> = vec![
            b"1733000000:127.0.0.1:9101:1",
            b"a \"quoted\" \\ text",
            b"1:a\n00:00 Removed peer x (dead)\x1b[2J\x7f",
            "caf\u{e9} \u{1F600} \u{85}".as_bytes(),
            b"\xff\xfe not utf-8",
            b"",
            long.as_bytes(),
        ];
        let froms: [SocketAddr; 2] = [
            "127.0.0.1:9101".parse().unwrap(),
            "[fe80::1%2]:65535".parse().unwrap(),
        ];
        for payload in payloads {
            for data_type in [TEXT_DATA_TYPE, 1337] {
                for from in froms {
                    for caught_up in [false, true] {
                        let r = Receipt {
                            id: texts::message_id(data_type, 7, payload),
                            data_type,
                            payload: payload.into(),
                            from,
                            caught_up,
                        };
                        let (mut json, mut line) = (Vec::new(), String::new());
                        let has_line =
                            write_receipt(&r, &texts::addr_text(&r.from), &mut json, &mut line);
                        let (mut json2, mut line2) = (Vec::new(), String::new());
                        let has_line2 = write_receipt_slowly(&r, &mut json2, &mut line2);
                        let shown = String::from_utf8_lossy(&json2).into_owned();
                        assert_eq!(String::from_utf8_lossy(&json), shown);
                        assert_eq!((has_line, &line), (has_line2, &line2), "{shown}");
                    }
                }
            }
        }
    }

    #[test]
    fn items_of_other_types_are_logged_by_size() {
        let from = SocketAddr::from(([127, 0, 0, 1], 9101));
        let r = gossip_received(
            &[7; 32],
            1337,
            &b"\x00\x01secret"[..].into(),
            &from,
            Via::Sync,
        )
        .expanded();
        assert_eq!(r.get("via").unwrap(), "sync");
        assert_eq!(r.get("bytes").unwrap(), 8);
        assert!(r.get("text").is_none() && r.line.is_none());
    }
}
