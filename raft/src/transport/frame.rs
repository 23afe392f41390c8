//! Wire format of the cluster transport: the hello that opens a connection, request and response
//! frame headers. Pure encode/decode, no I/O, so it is unit-tested here and usable by test clients.
//!
//! ```text
//! hello     : magic 0x48 | version u8 | node_id u64 | mac_len u8 (0 or 32) | mac
//! request   : magic 0xA1 | cluster_id [16] | group u16 | kind u8 | request_id u64 | len u32 | body
//! response  : <request header fields, cluster_id = responder's> | status u8 | body
//! snapshot  : request header (kind 8, len = opaque header length) | header | file_len u64
//!             | file bytes | sha256(file) [32]
//! ```
//!
//! All integers are big-endian. A cluster id of all zeros means "unknown". `len` is checked against
//! the receiver's `max_frame` before a single body byte is read.

use uuid::Uuid;

/// First byte of every request/response frame (also the wire-format version).
pub const FRAME_MAGIC: u8 = 0xA1;
/// Size of an encoded [`RequestHeader`].
pub const REQUEST_HEADER_LEN: usize = 32;
/// Size of an encoded [`ResponseHeader`] (a request header plus the status byte).
pub const RESPONSE_HEADER_LEN: usize = REQUEST_HEADER_LEN + 1;
/// First byte of a [`Hello`].
pub const HELLO_MAGIC: u8 = 0x48;
/// Version of the hello exchange.
pub const HELLO_VERSION: u8 = 1;
/// Size of the fixed part of a [`Hello`] (before the MAC).
pub const HELLO_FIXED_LEN: usize = 11;
/// Length of the HMAC-SHA256 proof in a hello and of the snapshot digest.
pub const MAC_LEN: usize = 32;

/// Errors of decoding a frame or hello; each one makes the stream (or connection) fail, never panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first byte is not the expected magic: not an ironhub peer, or another wire version.
    #[error("bad magic byte {got:#04x} (expected {expected:#04x}): peer speaks another protocol or version")]
    BadMagic {
        /// What arrived.
        got: u8,
        /// What was expected.
        expected: u8,
    },
    /// A hello of an unsupported version.
    #[error("unsupported hello version {0}")]
    BadVersion(u8),
    /// A hello MAC length other than 0 or 32.
    #[error("bad hello MAC length {0}")]
    BadMacLen(u8),
    /// An unknown response status byte.
    #[error("unknown response status {0}")]
    BadStatus(u8),
}

fn uuid_to_wire(id: Option<Uuid>) -> [u8; 16] {
    id.map(|u| *u.as_bytes()).unwrap_or([0; 16])
}

fn uuid_from_wire(b: [u8; 16]) -> Option<Uuid> {
    let u = Uuid::from_bytes(b);
    (!u.is_nil()).then_some(u)
}

/// Header of a request frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// Sender's cluster id; `None` (zeros on the wire) when the sender does not know it yet.
    pub cluster_id: Option<Uuid>,
    /// Raft group the request is for.
    pub group: u16,
    /// Raw [`super::RpcKind`] byte (kept raw so an unknown kind gets an error reply, not a drop).
    pub kind: u8,
    /// Sender-chosen id, echoed in the response.
    pub request_id: u64,
    /// Body length in bytes.
    pub len: u32,
}

impl RequestHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut b = [0u8; REQUEST_HEADER_LEN];
        b[0] = FRAME_MAGIC;
        b[1..17].copy_from_slice(&uuid_to_wire(self.cluster_id));
        b[17..19].copy_from_slice(&self.group.to_be_bytes());
        b[19] = self.kind;
        b[20..28].copy_from_slice(&self.request_id.to_be_bytes());
        b[28..32].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Decodes a header; only the magic can be wrong.
    pub fn decode(b: &[u8; REQUEST_HEADER_LEN]) -> Result<Self, FrameError> {
        if b[0] != FRAME_MAGIC {
            return Err(FrameError::BadMagic { got: b[0], expected: FRAME_MAGIC });
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[1..17]);
        let mut req = [0u8; 8];
        req.copy_from_slice(&b[20..28]);
        Ok(Self {
            cluster_id: uuid_from_wire(id),
            group: u16::from_be_bytes([b[17], b[18]]),
            kind: b[19],
            request_id: u64::from_be_bytes(req),
            len: u32::from_be_bytes([b[28], b[29], b[30], b[31]]),
        })
    }
}

/// Outcome carried by a response frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// The handler answered; the body is its reply.
    Ok = 0,
    /// The handler returned an error; the body is its UTF-8 message.
    Remote = 1,
    /// The request's cluster id differs from the responder's (in the response header).
    ClusterMismatch = 2,
    /// The request's `len` exceeded the responder's limit; the body is the limit as u64.
    FrameTooLarge = 3,
    /// The request was malformed (unknown kind, bad snapshot trailer...); the body is a message.
    BadRequest = 4,
}

impl Status {
    fn from_u8(b: u8) -> Result<Self, FrameError> {
        Ok(match b {
            0 => Self::Ok,
            1 => Self::Remote,
            2 => Self::ClusterMismatch,
            3 => Self::FrameTooLarge,
            4 => Self::BadRequest,
            other => return Err(FrameError::BadStatus(other)),
        })
    }
}

/// Header of a response frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHeader {
    /// Same fields as the request's, with the responder's cluster id and the reply's length.
    pub header: RequestHeader,
    /// Outcome.
    pub status: Status,
}

impl ResponseHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; RESPONSE_HEADER_LEN] {
        let mut b = [0u8; RESPONSE_HEADER_LEN];
        b[..REQUEST_HEADER_LEN].copy_from_slice(&self.header.encode());
        b[REQUEST_HEADER_LEN] = self.status as u8;
        b
    }

    /// Decodes a header.
    pub fn decode(b: &[u8; RESPONSE_HEADER_LEN]) -> Result<Self, FrameError> {
        let mut h = [0u8; REQUEST_HEADER_LEN];
        h.copy_from_slice(&b[..REQUEST_HEADER_LEN]);
        Ok(Self { header: RequestHeader::decode(&h)?, status: Status::from_u8(b[REQUEST_HEADER_LEN])? })
    }
}

/// First message of each side on a new connection: who I am, and (secret mode) the proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Sender's node id.
    pub node_id: u64,
    /// HMAC proof of the cluster secret, absent in certificate and insecure modes.
    pub mac: Option<[u8; MAC_LEN]>,
}

impl Hello {
    /// Encodes the hello.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HELLO_FIXED_LEN + MAC_LEN);
        v.push(HELLO_MAGIC);
        v.push(HELLO_VERSION);
        v.extend_from_slice(&self.node_id.to_be_bytes());
        match &self.mac {
            Some(mac) => {
                v.push(MAC_LEN as u8);
                v.extend_from_slice(mac);
            }
            None => v.push(0),
        }
        v
    }

    /// Decodes the fixed part; returns the node id and how many MAC bytes follow.
    pub fn decode_fixed(b: &[u8; HELLO_FIXED_LEN]) -> Result<(u64, usize), FrameError> {
        if b[0] != HELLO_MAGIC {
            return Err(FrameError::BadMagic { got: b[0], expected: HELLO_MAGIC });
        }
        if b[1] != HELLO_VERSION {
            return Err(FrameError::BadVersion(b[1]));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[2..10]);
        match b[10] {
            0 => Ok((u64::from_be_bytes(id), 0)),
            n if n as usize == MAC_LEN => Ok((u64::from_be_bytes(id), MAC_LEN)),
            n => Err(FrameError::BadMacLen(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_roundtrips_with_and_without_cluster_id() {
        for cluster_id in [None, Some(Uuid::from_u128(0x1234_5678_9abc_def0_1122_3344_5566_7788))] {
            let h = RequestHeader { cluster_id, group: 513, kind: 6, request_id: u64::MAX - 3, len: 70_000 };
            let enc = h.encode();
            assert_eq!(enc[0], FRAME_MAGIC);
            assert_eq!(RequestHeader::decode(&enc), Ok(h));
        }
    }

    #[test]
    fn request_header_rejects_bad_magic() {
        let mut enc = RequestHeader { cluster_id: None, group: 0, kind: 1, request_id: 1, len: 0 }.encode();
        enc[0] = 0x16;
        assert!(matches!(RequestHeader::decode(&enc), Err(FrameError::BadMagic { got: 0x16, .. })));
    }

    #[test]
    fn response_header_roundtrips_and_rejects_unknown_status() {
        let h = RequestHeader { cluster_id: None, group: 7, kind: 2, request_id: 9, len: 3 };
        let r = ResponseHeader { header: h, status: Status::FrameTooLarge };
        let mut enc = r.encode();
        assert_eq!(ResponseHeader::decode(&enc), Ok(r));
        enc[REQUEST_HEADER_LEN] = 200;
        assert_eq!(ResponseHeader::decode(&enc), Err(FrameError::BadStatus(200)));
    }

    #[test]
    fn hello_roundtrips_and_rejects_bad_fields() {
        let h = Hello { node_id: 42, mac: Some([7; MAC_LEN]) };
        let enc = h.encode();
        assert_eq!(enc.len(), HELLO_FIXED_LEN + MAC_LEN);
        let mut fixed = [0u8; HELLO_FIXED_LEN];
        fixed.copy_from_slice(&enc[..HELLO_FIXED_LEN]);
        assert_eq!(Hello::decode_fixed(&fixed), Ok((42, MAC_LEN)));
        fixed[10] = 5;
        assert_eq!(Hello::decode_fixed(&fixed), Err(FrameError::BadMacLen(5)));
        fixed[1] = 9;
        assert_eq!(Hello::decode_fixed(&fixed), Err(FrameError::BadVersion(9)));
        let plain = Hello { node_id: 1, mac: None }.encode();
        assert_eq!(plain.len(), HELLO_FIXED_LEN);
    }
}
