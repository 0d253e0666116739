//! The application API's byte layouts: the gossip API of the TUM P2PSec "VoidPhone" project,
//! so existing clients work unchanged. Pure encode/decode; never panics on any input.
//!
//! Every message starts with `size: u16` (the whole message, header included) and
//! `type: u16`, big-endian:
//!
//! | type | name | after the header |
//! |---|---|---|
//! | 500 | GOSSIP ANNOUNCE | `ttl: u8`, `reserved: u8`, `data_type: u16`, `data` |
//! | 501 | GOSSIP NOTIFY | `reserved: u16`, `data_type: u16` |
//! | 502 | GOSSIP NOTIFICATION | `message_id: u16`, `data_type: u16`, `data` |
//! | 503 | GOSSIP VALIDATION | `message_id: u16`, `reserved: 15 bits`, `valid: 1 bit` |

use std::fmt;

pub const ANNOUNCE: u16 = 500;
pub const NOTIFY: u16 = 501;
pub const NOTIFICATION: u16 = 502;
pub const VALIDATION: u16 = 503;
/// `size` and `type`.
pub const HEADER: usize = 4;
/// Largest `data` an ANNOUNCE or NOTIFICATION can carry: 65,535 − 8.
pub const MAX_DATA: usize = u16::MAX as usize - 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiMsg {
    Announce {
        ttl: u8,
        data_type: u16,
        data: Vec<u8>,
    },
    Notify {
        data_type: u16,
    },
    Notification {
        message_id: u16,
        data_type: u16,
        data: Vec<u8>,
    },
    Validation {
        message_id: u16,
        valid: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// `size` smaller than the header.
    BadSize(u16),
    UnknownType(u16),
    /// The size does not fit the type's layout.
    WrongSize {
        kind: u16,
        size: usize,
    },
    /// Data too large to fit one message.
    TooLarge(usize),
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::BadSize(s) => write!(f, "size {s} is smaller than the 4-byte header"),
            ApiError::UnknownType(t) => write!(f, "unknown message type {t}"),
            ApiError::WrongSize { kind, size } => {
                write!(f, "size {size} does not fit message type {kind}")
            }
            ApiError::TooLarge(n) => write!(f, "{n} bytes of data do not fit one message"),
        }
    }
}

impl std::error::Error for ApiError {}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

impl ApiMsg {
    /// Decodes one whole message (exactly `size` bytes, header included).
    pub fn decode(msg: &[u8]) -> Result<ApiMsg, ApiError> {
        if msg.len() < HEADER {
            return Err(ApiError::BadSize(msg.len() as u16));
        }
        let size = be16(msg, 0) as usize;
        let kind = be16(msg, 2);
        if size != msg.len() {
            return Err(ApiError::WrongSize { kind, size });
        }
        let body = &msg[HEADER..];
        let wrong = || ApiError::WrongSize { kind, size };
        match kind {
            ANNOUNCE => {
                if body.len() < 4 {
                    return Err(wrong());
                }
                Ok(ApiMsg::Announce {
                    ttl: body[0],
                    data_type: be16(body, 2),
                    data: body[4..].to_vec(),
                })
            }
            NOTIFY => {
                if body.len() != 4 {
                    return Err(wrong());
                }
                Ok(ApiMsg::Notify {
                    data_type: be16(body, 2),
                })
            }
            NOTIFICATION => {
                if body.len() < 4 {
                    return Err(wrong());
                }
                Ok(ApiMsg::Notification {
                    message_id: be16(body, 0),
                    data_type: be16(body, 2),
                    data: body[4..].to_vec(),
                })
            }
            VALIDATION => {
                if body.len() != 4 {
                    return Err(wrong());
                }
                Ok(ApiMsg::Validation {
                    message_id: be16(body, 0),
                    valid: body[3] & 1 == 1,
                })
            }
            other => Err(ApiError::UnknownType(other)),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, ApiError> {
        let (kind, mut body) = match self {
            ApiMsg::Announce {
                ttl,
                data_type,
                data,
            } => {
                let mut b = vec![*ttl, 0];
                b.extend_from_slice(&data_type.to_be_bytes());
                b.extend_from_slice(data);
                (ANNOUNCE, b)
            }
            ApiMsg::Notify { data_type } => {
                let mut b = vec![0, 0];
                b.extend_from_slice(&data_type.to_be_bytes());
                (NOTIFY, b)
            }
            ApiMsg::Notification {
                message_id,
                data_type,
                data,
            } => {
                let mut b = message_id.to_be_bytes().to_vec();
                b.extend_from_slice(&data_type.to_be_bytes());
                b.extend_from_slice(data);
                (NOTIFICATION, b)
            }
            ApiMsg::Validation { message_id, valid } => {
                let mut b = message_id.to_be_bytes().to_vec();
                b.extend_from_slice(&[0, *valid as u8]);
                (VALIDATION, b)
            }
        };
        let size = HEADER + body.len();
        if size > u16::MAX as usize {
            return Err(ApiError::TooLarge(body.len() - 4));
        }
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&(size as u16).to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.append(&mut body);
        Ok(out)
    }
}

/// Splits a byte stream into whole API messages: messages may arrive back to back in one
/// read or split across reads. Holds at most one message (≤ 64 KiB) plus one read.
#[derive(Default)]
pub struct ApiReader {
    buf: Vec<u8>,
}

impl ApiReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message, `Ok(None)` when more bytes are needed.
    pub fn next_msg(&mut self) -> Result<Option<ApiMsg>, ApiError> {
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let size = be16(&self.buf, 0) as usize;
        if size < HEADER {
            return Err(ApiError::BadSize(size as u16));
        }
        if self.buf.len() < size {
            return Ok(None);
        }
        let msg = ApiMsg::decode(&self.buf[..size]);
        self.buf.drain(..size);
        msg.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_examples() {
        let announce = [
            0x00, 0x10, 0x01, 0xF4, 0x04, 0x00, 0x05, 0x39, 0x64, 0x65, 0x61, 0x64, 0x62, 0x65,
            0x65, 0x66,
        ];
        let m = ApiMsg::Announce {
            ttl: 4,
            data_type: 1337,
            data: b"deadbeef".to_vec(),
        };
        assert_eq!(ApiMsg::decode(&announce), Ok(m.clone()));
        assert_eq!(m.encode().unwrap(), announce);
        let notify = [0x00, 0x08, 0x01, 0xF5, 0x00, 0x00, 0x05, 0x39];
        assert_eq!(
            ApiMsg::decode(&notify),
            Ok(ApiMsg::Notify { data_type: 1337 })
        );
        let validation = [0x00, 0x08, 0x01, 0xF7, 0xBE, 0x7F, 0x00, 0x01];
        let v = ApiMsg::Validation {
            message_id: 0xBE7F,
            valid: true,
        };
        assert_eq!(ApiMsg::decode(&validation), Ok(v.clone()));
        assert_eq!(v.encode().unwrap(), validation);
        // Reserved bits are ignored; only the lowest bit says valid.
        let invalid = [0x00, 0x08, 0x01, 0xF7, 0xBE, 0x7F, 0xFF, 0xFE];
        assert_eq!(
            ApiMsg::decode(&invalid),
            Ok(ApiMsg::Validation {
                message_id: 0xBE7F,
                valid: false
            })
        );
    }

    #[test]
    fn notification_round_trip_and_the_largest_payload() {
        let n = ApiMsg::Notification {
            message_id: 7,
            data_type: 1,
            data: vec![0xAB; MAX_DATA],
        };
        let bytes = n.encode().unwrap();
        assert_eq!(bytes.len(), 65_535);
        assert_eq!(ApiMsg::decode(&bytes), Ok(n));
        let too_big = ApiMsg::Announce {
            ttl: 0,
            data_type: 1,
            data: vec![0; MAX_DATA + 1],
        };
        assert!(too_big.encode().is_err());
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert!(matches!(
            ApiMsg::decode(&[0, 8, 0x01, 0xF5, 0, 0, 5]),
            Err(ApiError::WrongSize { .. })
        ));
        assert!(matches!(
            ApiMsg::decode(&[0, 9, 0x01, 0xF5, 0, 0, 5, 0x39, 0]),
            Err(ApiError::WrongSize { .. })
        ));
        assert!(matches!(
            ApiMsg::decode(&[0, 7, 0x01, 0xF4, 0, 0, 5]),
            Err(ApiError::WrongSize { .. })
        ));
        assert_eq!(
            ApiMsg::decode(&[0, 4, 0x01, 0x00]),
            Err(ApiError::UnknownType(256))
        );
        let mut r = ApiReader::default();
        r.push(&[0, 2, 0, 0]);
        assert_eq!(r.next_msg(), Err(ApiError::BadSize(2)));
    }

    #[test]
    fn back_to_back_and_split() {
        let a = ApiMsg::Notify { data_type: 9 }.encode().unwrap();
        let b = ApiMsg::Announce {
            ttl: 1,
            data_type: 9,
            data: b"hi".to_vec(),
        }
        .encode()
        .unwrap();
        let all = [a, b].concat();
        let mut r = ApiReader::default();
        let mut got = Vec::new();
        for byte in &all {
            r.push(&[*byte]);
            while let Some(m) = r.next_msg().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 2);
        let mut r = ApiReader::default();
        r.push(&all);
        assert!(r.next_msg().unwrap().is_some());
        assert!(r.next_msg().unwrap().is_some());
        assert_eq!(r.next_msg().unwrap(), None);
        assert_eq!(r.pending(), 0);
    }
}
