//! The one MQTT codec (3.1, 3.1.1 and 5): vendored and patched mqttbytes 0.6.0 (Apache-2.0,
//! see `LICENSE-mqttbytes`).
//!
//! [`read`] frames first: it reads the fixed header and remaining length, checks the type, the
//! fixed-header flags and the size of the WHOLE packet against `max_size` before waiting for
//! the body, and only then parses the body. `Ok(None)` means "need more bytes" and consumes
//! nothing; once a frame is complete it is consumed and any body error is a malformed-packet
//! [`Error`] (see [`Error::reason_code`]), never "need more bytes".
//!
//! [`Packet`] keeps the two vendored packet families apart (`V4` for 3.1/3.1.1, `V5` for 5)
//! rather than unifying them: the v5 packets carry properties and reason codes the v4 ones do
//! not have, and a session knows its protocol after CONNECT, so a match on the version once is
//! cheaper than `Option`s on every field.

// The vendored packet types keep their upstream shape (undocumented fields, `len` without
// `is_empty`, `new` without `Default`, push-after-`Vec::new`).
#![allow(missing_docs, clippy::len_without_is_empty, clippy::new_without_default, clippy::vec_init_then_push)]

mod base;
mod topic;
pub mod v4;
pub mod v5;

#[cfg(test)]
mod tests;

use bytes::BytesMut;

pub use base::{qos, Error, FixedHeader, PacketType, Protocol, QoS};
pub use topic::{has_wildcards, matches, valid_filter, valid_topic};

/// A decoded MQTT packet of either protocol family. Not boxed: a packet is decoded, handled
/// and dropped, so one allocation per packet would cost more than the size difference.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// MQTT 3.1 or 3.1.1 (a CONNECT says which in `protocol`).
    V4(v4::Packet),
    /// MQTT 5.
    V5(v5::Packet),
}

impl Packet {
    /// The packet family: [`Protocol::V3`] only for a 3.1 CONNECT, otherwise V4 or V5.
    pub fn protocol(&self) -> Protocol {
        match self {
            Packet::V4(v4::Packet::Connect(connect)) => connect.protocol,
            Packet::V4(_) => Protocol::V4,
            Packet::V5(_) => Protocol::V5,
        }
    }
}

/// Decodes the next packet of a connection speaking `protocol` from `buf`.
///
/// A CONNECT is decoded by the protocol level in its own variable header whatever `protocol`
/// is, so a connection may pass any value until its CONNECT has been read. `max_size` bounds
/// the whole packet (fixed header included). `Ok(None)`: need more bytes, nothing consumed.
/// After an error the stream cannot be resynchronised: close the connection.
pub fn read(buf: &mut BytesMut, protocol: Protocol, max_size: usize) -> Result<Option<Packet>, Error> {
    let Some(fixed_header) = base::frame(buf.iter(), max_size)? else {
        return Ok(None);
    };
    let packet_type = fixed_header.packet_type()?;
    check_flags(packet_type, fixed_header.byte1)?;
    let v5 = match packet_type {
        PacketType::Connect => connect_is_v5(buf, &fixed_header),
        _ => protocol == Protocol::V5,
    };
    if packet_type == PacketType::Auth && !v5 {
        return Err(Error::InvalidPacketType(15));
    }

    let frame = buf.split_to(fixed_header.frame_length()).freeze();
    let packet = if v5 {
        v5::read_frame(fixed_header, frame).map(Packet::V5)
    } else {
        v4::read_frame(fixed_header, frame).map(Packet::V4)
    };
    packet.map(Some).map_err(|e| match e {
        // the frame is complete: a body that ends early is malformed
        Error::InsufficientBytes(_) => Error::MalformedPacket,
        e => e,
    })
}

/// Encodes `packet` at the end of `buf`; returns the number of bytes written.
pub fn write(packet: &Packet, buf: &mut BytesMut) -> Result<usize, Error> {
    match packet {
        Packet::V4(packet) => v4::write(packet, buf),
        Packet::V5(packet) => v5::write(packet, buf),
    }
}

/// Fixed-header flags: PUBLISH carries dup/qos/retain, PUBREL, SUBSCRIBE and UNSUBSCRIBE must
/// have 0b0010, every other packet 0b0000 (MQTT 3.1.1 2.2.2, MQTT 5 2.1.3).
fn check_flags(packet_type: PacketType, byte1: u8) -> Result<(), Error> {
    let flags = byte1 & 0x0F;
    let expected = match packet_type {
        PacketType::Publish => return Ok(()),
        PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
        _ => 0,
    };
    if flags != expected {
        return Err(Error::InvalidFixedHeaderFlags(byte1));
    }
    Ok(())
}

/// Whether a complete CONNECT frame announces protocol level 5. Anything unreadable is left to
/// the v4 parser, which reports the precise error.
fn connect_is_v5(buf: &BytesMut, fixed_header: &FixedHeader) -> bool {
    let body = buf.get(fixed_header.fixed_header_len..fixed_header.frame_length()).unwrap_or_default();
    matches!(body, [0, 4, b'M', b'Q', b'T', b'T', 5, ..])
}
