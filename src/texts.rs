//! The assignment's human-readable texts: gossip messages, liveness request and reply, and
//! dead-node reports. Formatting and strict parsing, pure.
//!
//! Addresses inside the texts are `ip:port` (IPv6 as `[ip]:port`), so a text is split from the
//! ends, never by counting colons from the left.

use std::net::SocketAddr;

use sha2::{Digest, Sha256};

/// Data type of the assignment's text gossip messages.
pub const TEXT_DATA_TYPE: u16 = 0;

/// `<timestamp>:<addr>:<n>`.
pub fn gossip_text(ts_ms: u64, addr: &SocketAddr, n: u32) -> String {
    format!("{ts_ms}:{addr}:{n}")
}

/// The message id: SHA-256 of `data_type_be16 ‖ nonce_be64 ‖ payload`, where the type is left
/// out for the assignment's text type and the nonce when it is 0. The assignment's own
/// messages (text, nonce 0) thus have the SHA-256 of their text as id (`printf %s TEXT |
/// sha256sum` gives it); equal bytes of different types, or announced twice (each `ANNOUNCE`
/// draws a nonce), stay distinct items.
pub fn message_id(data_type: u16, nonce: u64, payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    if data_type != TEXT_DATA_TYPE {
        h.update(data_type.to_be_bytes());
    }
    if nonce != 0 {
        h.update(nonce.to_be_bytes());
    }
    h.update(payload);
    h.finalize().into()
}

pub fn liveness_request(ts_ms: u64, sender: &SocketAddr) -> String {
    format!("Liveness Request:{ts_ms}:{sender}")
}

pub fn liveness_reply(ts_ms: u64, sender: &SocketAddr, replier: &SocketAddr) -> String {
    format!("Liveness Reply:{ts_ms}:{sender}:{replier}")
}

/// `Dead Node:<DeadNode.IP>:<DeadNode.Port>:<self.timestamp>:<self.addr>`.
pub fn dead_node(dead: &SocketAddr, ts_ms: u64, reporter: &SocketAddr) -> String {
    format!(
        "Dead Node:{}:{}:{ts_ms}:{reporter}",
        ip_text(dead),
        dead.port()
    )
}

fn ip_text(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    }
}

/// Splits `<ts>:<addr>` where addr may itself contain colons.
fn split_ts_addr(s: &str) -> Option<(u64, SocketAddr)> {
    let (ts, addr) = s.split_once(':')?;
    Some((ts.parse().ok()?, addr.parse().ok()?))
}

/// Parses `Liveness Request:<ts>:<sender>`.
pub fn parse_liveness_request(text: &str) -> Option<(u64, SocketAddr)> {
    split_ts_addr(text.strip_prefix("Liveness Request:")?)
}

/// Parses `Liveness Reply:<ts>:<sender>:<replier>`.
pub fn parse_liveness_reply(text: &str) -> Option<(u64, SocketAddr, SocketAddr)> {
    let rest = text.strip_prefix("Liveness Reply:")?;
    let (ts, addrs) = rest.split_once(':')?;
    let ts = ts.parse().ok()?;
    // Try every split point between the two addresses; exactly one parses for valid text.
    for (i, _) in addrs.match_indices(':') {
        if let (Ok(a), Ok(b)) = (addrs[..i].parse(), addrs[i + 1..].parse()) {
            return Some((ts, a, b));
        }
    }
    None
}

/// A parsed `Dead Node:` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadNodeReport {
    pub dead: SocketAddr,
    pub ts_ms: u64,
    pub reporter: SocketAddr,
}

/// Parses `Dead Node:<ip>:<port>:<ts>:<reporter>`.
pub fn parse_dead_node(text: &str) -> Option<DeadNodeReport> {
    let rest = text.strip_prefix("Dead Node:")?;
    // `<ip>:<port>` then `:<ts>:` then the reporter's `ip:port`. The timestamp is the only
    // all-digit field between two colons that leaves two valid addresses around it.
    let parts: Vec<(usize, &str)> = rest.match_indices(':').collect();
    for w in parts.windows(2) {
        let (i, _) = w[0];
        let (j, _) = w[1];
        let (dead, ts, reporter) = (&rest[..i], &rest[i + 1..j], &rest[j + 1..]);
        if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let (Ok(dead), Ok(ts_ms), Ok(reporter)) = (dead.parse(), ts.parse(), reporter.parse()) {
            return Some(DeadNodeReport {
                dead,
                ts_ms,
                reporter,
            });
        }
    }
    None
}

/// How much of a remote's text the output files show.
pub const MAX_SHOWN: usize = 200;

/// `addr.to_string()`, written digit by digit for IPv4 (a record per delivery names its
/// sender, a joining peer's record its whole peer list).
pub fn addr_text(addr: &SocketAddr) -> String {
    fn push_decimal(out: &mut String, mut n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend(digits[i..].iter().map(|&d| d as char));
    }
    match addr {
        SocketAddr::V4(a) => {
            let mut out = String::with_capacity(21);
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(&mut out, octet.into());
            }
            out.push(':');
            push_decimal(&mut out, a.port().into());
            out
        }
        SocketAddr::V6(_) => addr.to_string(),
    }
}

/// A message id in lowercase hex, as `hex::encode` writes it (a record per delivery has one:
/// written into a buffer, not through a character iterator).
pub fn id_hex(id: &[u8; 32]) -> String {
    let mut buf = [0u8; 64];
    match hex::encode_to_slice(id, &mut buf) {
        Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
        Err(_) => hex::encode(id),
    }
}

/// A remote's text as it may appear in an output file: on one line, with control characters
/// escaped (`\n`, `\u{1b}`, …) so no remote can write a line of its own or drive a terminal,
/// and cut to `max` characters (an ellipsis says it was cut).
pub fn printable(text: &str, max: usize) -> String {
    printable_cow(text, max).into_owned()
}

/// [`printable`], borrowing `text` when it needs nothing done: short, printable ASCII (a byte
/// a character, none a control character), as most texts are.
pub fn printable_cow(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max && text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(max + 8));
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_text_is_to_string() {
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:9000",
            "255.255.255.255:65535",
            "10.20.3.40:80",
            "[::1]:9000",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(addr_text(&addr), addr.to_string());
            assert_eq!(addr_text(&addr), a);
        }
    }

    #[test]
    fn id_hex_is_hex_encode() {
        let id: [u8; 32] = std::array::from_fn(|i| (i * 37 + 5) as u8);
        assert_eq!(id_hex(&id), hex::encode(id));
    }

    #[test]
    fn printable_copies_short_printable_ascii_and_cuts_at_max() {
        assert_eq!(printable("abc ~", 5), "abc ~");
        assert_eq!(printable("abcdef", 5), "abcde…");
        assert_eq!(printable("ab\x7f", 5), "ab\\u{7f}");
        assert_eq!(printable("é", 5), "é");
    }

    #[test]
    fn printable_text_is_one_short_line_without_control_characters() {
        let evil = "hi\n2026-12-01 20:39:16.617  Removed peer 1.2.3.4:5 (dead)\u{1b}[31m\u{7}";
        let p = printable(evil, MAX_SHOWN);
        assert!(!p.chars().any(|c| c.is_control()), "{p}");
        assert!(p.starts_with("hi\\n2026"), "{p}");
        assert!(p.contains("\\u{1b}[31m"), "{p}");
        let long = "x".repeat(1000);
        assert_eq!(printable(&long, 200).chars().count(), 201);
        assert_eq!(
            printable("1795313883123:127.0.0.1:9101:3", 200),
            "1795313883123:127.0.0.1:9101:3"
        );
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn gossip_text_and_id() {
        let t = gossip_text(1795313883123, &a("127.0.0.1:9101"), 3);
        assert_eq!(t, "1795313883123:127.0.0.1:9101:3");
        // printf %s '1795313883123:127.0.0.1:9101:3' | sha256sum
        let id = hex::encode(message_id(TEXT_DATA_TYPE, 0, t.as_bytes()));
        let expect = hex::encode(Sha256::digest(t.as_bytes()));
        assert_eq!(id, expect);
        assert_ne!(
            message_id(1, 0, t.as_bytes()),
            message_id(0, 0, t.as_bytes())
        );
        assert_ne!(
            message_id(0, 5, t.as_bytes()),
            message_id(0, 0, t.as_bytes())
        );
        assert_ne!(
            message_id(1, 5, t.as_bytes()),
            message_id(1, 6, t.as_bytes())
        );
    }

    #[test]
    fn liveness_round_trip() {
        for (s, r) in [
            ("127.0.0.1:9101", "127.0.0.1:9102"),
            ("[::1]:9101", "[::1]:9102"),
        ] {
            let (s, r) = (a(s), a(r));
            let req = liveness_request(17, &s);
            assert_eq!(parse_liveness_request(&req), Some((17, s)));
            let rep = liveness_reply(17, &s, &r);
            assert_eq!(parse_liveness_reply(&rep), Some((17, s, r)));
        }
        assert_eq!(
            liveness_reply(5, &a("127.0.0.1:1"), &a("127.0.0.1:2")),
            "Liveness Reply:5:127.0.0.1:1:127.0.0.1:2"
        );
        assert_eq!(
            parse_liveness_request("Liveness Request:x:127.0.0.1:1"),
            None
        );
        assert_eq!(parse_liveness_reply("Liveness Reply:1:127.0.0.1:1"), None);
    }

    #[test]
    fn dead_node_round_trip() {
        let t = dead_node(&a("127.0.0.1:9102"), 1795313883123, &a("127.0.0.1:9101"));
        assert_eq!(t, "Dead Node:127.0.0.1:9102:1795313883123:127.0.0.1:9101");
        let r = parse_dead_node(&t).unwrap();
        assert_eq!(r.dead, a("127.0.0.1:9102"));
        assert_eq!(r.ts_ms, 1795313883123);
        assert_eq!(r.reporter, a("127.0.0.1:9101"));
        let t6 = dead_node(&a("[::1]:9102"), 5, &a("[::1]:9101"));
        assert_eq!(t6, "Dead Node:[::1]:9102:5:[::1]:9101");
        assert_eq!(parse_dead_node(&t6).unwrap().dead, a("[::1]:9102"));
        for bad in [
            "Dead Node:",
            "Dead Node:127.0.0.1:9102:x:127.0.0.1:9101",
            "Dead Node:127.0.0.1:9102:5",
            "Dead:127.0.0.1:9102:5:127.0.0.1:9101",
        ] {
            assert_eq!(parse_dead_node(bad), None, "{bad}");
        }
    }
}
