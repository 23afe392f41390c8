//! The payload header every bench message starts with: publisher id, sequence number, send time.
//!
//! Layout (big-endian): `u32` publisher id, `u64` sequence number, `u64` send time in ns since the
//! Unix epoch; the rest of the payload is filler up to `--payload-size`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes taken by the header; payloads are at least this long.
pub const HEADER_LEN: usize = 20;

/// The decoded header of a bench payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Which publisher sent it (index in the run's publisher list).
    pub publisher: u32,
    /// The publisher's sequence number, from 0.
    pub seq: u64,
    /// Send time, ns since the Unix epoch.
    pub sent_ns: u64,
}

/// Now, in ns since the Unix epoch (0 if the clock is before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Builds a payload of `size` bytes (at least [`HEADER_LEN`]) carrying `header`.
pub fn encode(header: Header, size: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(size.max(HEADER_LEN));
    buf.extend_from_slice(&header.publisher.to_be_bytes());
    buf.extend_from_slice(&header.seq.to_be_bytes());
    buf.extend_from_slice(&header.sent_ns.to_be_bytes());
    buf.resize(size.max(HEADER_LEN), b'x');
    buf
}

/// Reads the header of a payload; `None` if it is too short to be a bench payload.
pub fn decode(payload: &[u8]) -> Option<Header> {
    let publisher = u32::from_be_bytes(payload.get(0..4)?.try_into().ok()?);
    let seq = u64::from_be_bytes(payload.get(4..12)?.try_into().ok()?);
    let sent_ns = u64::from_be_bytes(payload.get(12..20)?.try_into().ok()?);
    Some(Header { publisher, seq, sent_ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_pads_to_size() {
        let h = Header { publisher: 7, seq: 123_456_789, sent_ns: 1_700_000_000_000_000_000 };
        let p = encode(h, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(decode(&p), Some(h));
        assert_eq!(encode(h, 3).len(), HEADER_LEN);
        assert_eq!(decode(&p[..19]), None);
    }
}
