// Vendored from mqttbytes 0.6.0 (src/lib.rs), https://github.com/bytebeamio/rumqtt,
// Copyright bytebeam and the rumqtt contributors, licensed under the Apache License 2.0
// (see LICENSE-mqttbytes in this directory). Modified for ironhub: framing checks the whole
// packet size before the body is buffered, body errors are "malformed" instead of "need more
// bytes", MQTT 3.1 and AUTH support, stricter validation, no panicking paths.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use core::fmt::{self, Display, Formatter};
use std::slice::Iter;

pub use super::topic::*;

/// Error during serialization and deserialization
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    NotConnect(PacketType),
    UnexpectedConnect,
    InvalidConnectReturnCode(u8),
    InvalidReason(u8),
    InvalidProtocol,
    InvalidProtocolLevel(u8),
    IncorrectPacketFormat,
    InvalidPacketType(u8),
    InvalidPropertyType(u8),
    InvalidRetainForwardRule(u8),
    InvalidQoS(u8),
    InvalidSubscribeReasonCode(u8),
    PacketIdZero,
    SubscriptionIdZero,
    PayloadSizeIncorrect,
    PayloadTooLong,
    /// The whole packet (fixed header + remaining length) is larger than the decoder's limit.
    PacketTooLarge {
        /// Size of the whole packet as announced by its fixed header.
        size: usize,
        /// The limit passed to the decoder.
        max: usize,
    },
    PayloadRequired,
    TopicNotUtf8,
    BoundaryCrossed(usize),
    MalformedPacket,
    MalformedRemainingLength,
    /// Fixed-header flags differ from the ones the packet type requires.
    InvalidFixedHeaderFlags(u8),
    /// A v5 property that may appear at most once appeared twice.
    DuplicateProperty(u8),
    /// A PUBLISH topic name that is empty or contains a wildcard.
    InvalidTopic,
    /// A malformed topic filter.
    InvalidFilter,
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter.
    EmptySubscription,
    /// Reserved bits of a subscription's options are set.
    ReservedSubscriptionOptions(u8),
    /// The reserved bit 0 of the CONNECT flags is set.
    ReservedConnectFlag,
    /// MQTT 3.1/3.1.1 CONNECT with the password flag but not the username flag.
    PasswordWithoutUsername,
    /// More bytes required to frame packet. Only used inside the codec; [`super::read`]
    /// reports it as `Ok(None)` and turns it into [`Error::MalformedPacket`] inside a body.
    InsufficientBytes(usize),
}

impl Error {
    /// The MQTT 5 reason code to close the connection with (DISCONNECT or CONNACK):
    /// 0x95 packet too large, 0x84 unsupported protocol version, 0x82 protocol error for
    /// well-formed but forbidden content, 0x81 malformed packet for everything else.
    pub fn reason_code(&self) -> u8 {
        match self {
            Error::PacketTooLarge { .. } | Error::PayloadTooLong => 0x95,
            Error::InvalidProtocol | Error::InvalidProtocolLevel(_) => 0x84,
            Error::DuplicateProperty(_)
            | Error::SubscriptionIdZero
            | Error::NotConnect(_)
            | Error::UnexpectedConnect
            | Error::PacketIdZero => 0x82,
            _ => 0x81,
        }
    }
}

impl std::error::Error for Error {}

/// MQTT packet type
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    Connect = 1,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    PingReq,
    PingResp,
    Disconnect,
    /// MQTT 5 only.
    Auth,
}

/// Protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3. Decoded with the v4 packets.
    V3,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V4,
    /// MQTT 5: protocol name `MQTT`, level 5.
    V5,
}

/// Quality of service
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

/// Packet type from a byte
///
/// ```text
///          7                          3                          0
///          +--------------------------+--------------------------+
/// byte 1   | MQTT Control Packet Type | Flags for each type      |
///          +--------------------------+--------------------------+
///          |         Remaining Bytes Len  (1/2/3/4 bytes)        |
///          +-----------------------------------------------------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd)]
pub struct FixedHeader {
    /// First byte of the stream. Used to identify packet types and
    /// several flags
    pub(crate) byte1: u8,
    /// Length of fixed header. Byte 1 + (1..4) bytes.
    pub(crate) fixed_header_len: usize,
    /// Remaining length of the packet. Doesn't include fixed header bytes
    pub(crate) remaining_len: usize,
}

impl FixedHeader {
    pub fn new(byte1: u8, remaining_len_len: usize, remaining_len: usize) -> FixedHeader {
        FixedHeader { byte1, fixed_header_len: remaining_len_len + 1, remaining_len }
    }

    pub fn packet_type(&self) -> Result<PacketType, Error> {
        let num = self.byte1 >> 4;
        match num {
            1 => Ok(PacketType::Connect),
            2 => Ok(PacketType::ConnAck),
            3 => Ok(PacketType::Publish),
            4 => Ok(PacketType::PubAck),
            5 => Ok(PacketType::PubRec),
            6 => Ok(PacketType::PubRel),
            7 => Ok(PacketType::PubComp),
            8 => Ok(PacketType::Subscribe),
            9 => Ok(PacketType::SubAck),
            10 => Ok(PacketType::Unsubscribe),
            11 => Ok(PacketType::UnsubAck),
            12 => Ok(PacketType::PingReq),
            13 => Ok(PacketType::PingResp),
            14 => Ok(PacketType::Disconnect),
            15 => Ok(PacketType::Auth),
            _ => Err(Error::InvalidPacketType(num)),
        }
    }

    /// Returns the size of full packet (fixed header + variable header + payload)
    pub fn frame_length(&self) -> usize {
        self.fixed_header_len + self.remaining_len
    }
}

/// Frames a packet: `Ok(None)` while the fixed header is incomplete or the body has not fully
/// arrived. The whole packet size is checked against `max_packet_size` as soon as the remaining
/// length is known, before the body is waited for.
pub(crate) fn frame(stream: Iter<u8>, max_packet_size: usize) -> Result<Option<FixedHeader>, Error> {
    let stream_len = stream.len();
    let fixed_header = match parse_fixed_header(stream) {
        Ok(header) => header,
        Err(Error::InsufficientBytes(_)) => return Ok(None),
        Err(e) => return Err(e),
    };

    // Don't let rogue connections attack with huge payloads.
    // Disconnect them before reading all that data
    let frame_length = fixed_header.frame_length();
    if frame_length > max_packet_size {
        return Err(Error::PacketTooLarge { size: frame_length, max: max_packet_size });
    }

    if stream_len < frame_length {
        return Ok(None);
    }

    Ok(Some(fixed_header))
}

/// Parses fixed header
pub(crate) fn parse_fixed_header(mut stream: Iter<u8>) -> Result<FixedHeader, Error> {
    let Some(byte1) = stream.next() else {
        return Err(Error::InsufficientBytes(2));
    };
    let (len_len, len) = length(stream)?;

    Ok(FixedHeader::new(*byte1, len_len, len))
}

/// Parses variable byte integer in the stream and returns the length
/// and number of bytes that make it. Used for remaining length calculation
/// as well as for calculating property lengths
pub(crate) fn length(stream: Iter<u8>) -> Result<(usize, usize), Error> {
    let mut len: usize = 0;
    let mut len_len = 0;
    let mut done = false;
    let mut shift = 0;

    for byte in stream {
        len_len += 1;
        let byte = *byte as usize;
        len += (byte & 0x7F) << shift;

        // stop when continue bit is 0
        done = (byte & 0x80) == 0;
        if done {
            break;
        }

        shift += 7;

        // Only a max of 4 bytes allowed for remaining length
        if shift > 21 {
            return Err(Error::MalformedRemainingLength);
        }
    }

    if !done {
        return Err(Error::InsufficientBytes(1));
    }

    Ok((len_len, len))
}

/// Reads a series of bytes with a length from a byte stream
pub(crate) fn read_mqtt_bytes(stream: &mut Bytes) -> Result<Bytes, Error> {
    let len = read_u16(stream)? as usize;

    if len > stream.len() {
        return Err(Error::BoundaryCrossed(len));
    }

    Ok(stream.split_to(len))
}

/// Reads a string from bytes stream. U+0000 is not allowed in MQTT strings.
pub(crate) fn read_mqtt_string(stream: &mut Bytes) -> Result<String, Error> {
    let s = read_mqtt_bytes(stream)?;
    match String::from_utf8(s.to_vec()) {
        Ok(v) if !v.contains('\0') => Ok(v),
        _ => Err(Error::TopicNotUtf8),
    }
}

/// Serializes bytes to stream (including length)
pub(crate) fn write_mqtt_bytes(stream: &mut BytesMut, bytes: &[u8]) -> Result<(), Error> {
    let len = u16::try_from(bytes.len()).map_err(|_| Error::PayloadTooLong)?;
    stream.put_u16(len);
    stream.extend_from_slice(bytes);
    Ok(())
}

/// Serializes a string to stream
pub(crate) fn write_mqtt_string(stream: &mut BytesMut, string: &str) -> Result<(), Error> {
    write_mqtt_bytes(stream, string.as_bytes())
}

/// Writes remaining length to stream and returns number of bytes for remaining length
pub(crate) fn write_remaining_length(stream: &mut BytesMut, len: usize) -> Result<usize, Error> {
    if len > 268_435_455 {
        return Err(Error::PayloadTooLong);
    }

    let mut done = false;
    let mut x = len;
    let mut count = 0;

    while !done {
        let mut byte = (x % 128) as u8;
        x /= 128;
        if x > 0 {
            byte |= 128;
        }

        stream.put_u8(byte);
        count += 1;
        done = x == 0;
    }

    Ok(count)
}

/// Return number of remaining length bytes required for encoding length
pub(crate) fn len_len(len: usize) -> usize {
    if len >= 2_097_152 {
        4
    } else if len >= 16_384 {
        3
    } else if len >= 128 {
        2
    } else {
        1
    }
}

/// Maps a number to QoS
pub fn qos(num: u8) -> Result<QoS, Error> {
    match num {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        qos => Err(Error::InvalidQoS(qos)),
    }
}

pub(crate) fn read_u16(stream: &mut Bytes) -> Result<u16, Error> {
    if stream.len() < 2 {
        return Err(Error::MalformedPacket);
    }

    Ok(stream.get_u16())
}

pub(crate) fn read_u8(stream: &mut Bytes) -> Result<u8, Error> {
    if stream.is_empty() {
        return Err(Error::MalformedPacket);
    }

    Ok(stream.get_u8())
}

pub(crate) fn read_u32(stream: &mut Bytes) -> Result<u32, Error> {
    if stream.len() < 4 {
        return Err(Error::MalformedPacket);
    }

    Ok(stream.get_u32())
}

/// Sets a v5 property that may appear at most once.
pub(crate) fn set_once<T>(slot: &mut Option<T>, value: T, property: u8) -> Result<(), Error> {
    if slot.is_some() {
        return Err(Error::DuplicateProperty(property));
    }
    *slot = Some(value);
    Ok(())
}

/// Splits the properties (whose length was just read) off the body, so that a property can
/// never read past the announced properties length.
pub(crate) fn split_properties(stream: &mut Bytes, properties_len: usize) -> Result<Bytes, Error> {
    if properties_len > stream.len() {
        return Err(Error::MalformedPacket);
    }
    Ok(stream.split_to(properties_len))
}

/// Reads a subscription identifier (a variable byte integer, 1 to 268,435,455).
pub(crate) fn read_subscription_id(stream: &mut Bytes) -> Result<usize, Error> {
    let (id_len, id) = length(stream.iter()).map_err(|_| Error::MalformedPacket)?;
    stream.advance(id_len);
    if id == 0 {
        return Err(Error::SubscriptionIdZero);
    }
    Ok(id)
}

impl Display for Error {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "mqtt codec error: {self:?}")
    }
}
