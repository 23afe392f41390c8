// Vendored from mqttbytes 0.6.0 (src/v4/mod.rs), Apache License 2.0 (see ../LICENSE-mqttbytes).
// Modified for ironhub: parses an already framed packet with exact lengths; adds `write`.

use crate::mqtt::codec::base::*;
use bytes::{BufMut, Bytes, BytesMut};

mod connack;
mod connect;
mod disconnect;
mod ping;
mod puback;
mod pubcomp;
mod publish;
mod pubrec;
mod pubrel;
mod suback;
mod subscribe;
mod unsuback;
mod unsubscribe;

pub use connack::*;
pub use connect::*;
pub use disconnect::*;
pub use ping::*;
pub use puback::*;
pub use pubcomp::*;
pub use publish::*;
pub use pubrec::*;
pub use pubrel::*;
pub use suback::*;
pub use subscribe::*;
pub use unsuback::*;
pub use unsubscribe::*;

/// Encapsulates all MQTT packet types
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    Connect(Connect),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubRec),
    PubRel(PubRel),
    PubComp(PubComp),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect,
}

/// Reads a stream of bytes and extracts next MQTT packet out of it
/// Parses one framed MQTT 3.1/3.1.1 packet (`packet` holds the whole frame, fixed header
/// included; type and fixed-header flags are already checked by the caller).
pub(crate) fn read_frame(fixed_header: FixedHeader, packet: Bytes) -> Result<Packet, Error> {
    let packet_type = fixed_header.packet_type()?;
    let expected_len = match packet_type {
        PacketType::ConnAck
        | PacketType::PubAck
        | PacketType::PubRec
        | PacketType::PubRel
        | PacketType::PubComp
        | PacketType::UnsubAck => Some(2),
        PacketType::PingReq | PacketType::PingResp | PacketType::Disconnect => Some(0),
        _ => None,
    };
    if let Some(expected) = expected_len {
        if fixed_header.remaining_len != expected {
            return Err(Error::PayloadSizeIncorrect);
        }
    }

    let packet = match packet_type {
        PacketType::Connect => Packet::Connect(Connect::read(fixed_header, packet)?),
        PacketType::ConnAck => Packet::ConnAck(ConnAck::read(fixed_header, packet)?),
        PacketType::Publish => Packet::Publish(Publish::read(fixed_header, packet)?),
        PacketType::PubAck => Packet::PubAck(PubAck::read(fixed_header, packet)?),
        PacketType::PubRec => Packet::PubRec(PubRec::read(fixed_header, packet)?),
        PacketType::PubRel => Packet::PubRel(PubRel::read(fixed_header, packet)?),
        PacketType::PubComp => Packet::PubComp(PubComp::read(fixed_header, packet)?),
        PacketType::Subscribe => Packet::Subscribe(Subscribe::read(fixed_header, packet)?),
        PacketType::SubAck => Packet::SubAck(SubAck::read(fixed_header, packet)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::read(fixed_header, packet)?),
        PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::read(fixed_header, packet)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect,
        PacketType::Auth => return Err(Error::InvalidPacketType(15)),
    };

    Ok(packet)
}

/// Writes one MQTT 3.1/3.1.1 packet; returns the number of bytes written.
pub(crate) fn write(packet: &Packet, buffer: &mut BytesMut) -> Result<usize, Error> {
    match packet {
        Packet::Connect(p) => p.write(buffer),
        Packet::ConnAck(p) => p.write(buffer),
        Packet::Publish(p) => p.write(buffer),
        Packet::PubAck(p) => p.write(buffer),
        Packet::PubRec(p) => p.write(buffer),
        Packet::PubRel(p) => p.write(buffer),
        Packet::PubComp(p) => p.write(buffer),
        Packet::Subscribe(p) => p.write(buffer),
        Packet::SubAck(p) => p.write(buffer),
        Packet::Unsubscribe(p) => p.write(buffer),
        Packet::UnsubAck(p) => p.write(buffer),
        Packet::PingReq => PingReq.write(buffer),
        Packet::PingResp => PingResp.write(buffer),
        Packet::Disconnect => Disconnect.write(buffer),
    }
}
