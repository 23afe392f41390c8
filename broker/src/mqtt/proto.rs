//! One session logic for every protocol version: MQTT 3.1/3.1.1 packets are lifted to their MQTT 5
//! form on the way in ([`lift`]) and lowered on the way out ([`lower`]); MQTT 3.x has no properties
//! and fewer reason codes, so lowering maps each v5 code to the 3.x code that means the same.

use super::codec::{v4, v5, Packet, Protocol};

/// An MQTT 3.x packet as its MQTT 5 equivalent (no properties).
pub fn lift(p: v4::Packet) -> v5::Packet {
    use v5::Packet as P;
    match p {
        v4::Packet::Connect(c) => P::Connect(v5::Connect {
            protocol: c.protocol,
            keep_alive: c.keep_alive,
            client_id: c.client_id,
            clean_session: c.clean_session,
            last_will: c.last_will.map(|w| v5::LastWill {
                topic: w.topic,
                message: w.message,
                qos: w.qos,
                retain: w.retain,
                properties: None,
            }),
            login: (c.username.is_some() || c.password.is_some())
                .then_some(v5::Login { username: c.username, password: c.password }),
            properties: None,
        }),
        v4::Packet::Publish(p) => P::Publish(v5::Publish {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: p.topic,
            pkid: p.pkid,
            properties: None,
            payload: p.payload,
        }),
        v4::Packet::PubAck(a) => P::PubAck(v5::PubAck::new(a.pkid)),
        v4::Packet::PubRec(a) => P::PubRec(v5::PubRec::new(a.pkid)),
        v4::Packet::PubRel(a) => P::PubRel(v5::PubRel::new(a.pkid)),
        v4::Packet::PubComp(a) => P::PubComp(v5::PubComp::new(a.pkid)),
        v4::Packet::Subscribe(s) => P::Subscribe(v5::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| v5::SubscribeFilter {
                    path: f.path,
                    qos: f.qos,
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: v5::RetainForwardRule::OnEverySubscribe,
                })
                .collect(),
            properties: None,
        }),
        v4::Packet::Unsubscribe(u) => {
            P::Unsubscribe(v5::Unsubscribe { pkid: u.pkid, filters: u.topics, properties: None })
        }
        v4::Packet::PingReq => P::PingReq,
        v4::Packet::PingResp => P::PingResp,
        v4::Packet::Disconnect => P::Disconnect(v5::Disconnect {
            reason_code: v5::DisconnectReasonCode::NormalDisconnection,
            properties: None,
        }),
        // Server-to-client packets a client must not send: keep them recognisable as such.
        v4::Packet::ConnAck(c) => P::ConnAck(v5::ConnAck {
            session_present: c.session_present,
            code: v5::ConnectReturnCode::Success,
            properties: None,
        }),
        v4::Packet::SubAck(s) => {
            P::SubAck(v5::SubAck { pkid: s.pkid, return_codes: vec![], properties: None })
        }
        v4::Packet::UnsubAck(u) => P::UnsubAck(v5::UnsubAck::new(u.pkid)),
    }
}

/// The CONNACK return code of MQTT 3.x meaning the same as a v5 one.
fn connack_code(code: v5::ConnectReturnCode) -> v4::ConnectReturnCode {
    use v4::ConnectReturnCode as C4;
    use v5::ConnectReturnCode as C5;
    match code {
        C5::Success => C4::Success,
        C5::UnsupportedProtocolVersion => C4::RefusedProtocolVersion,
        C5::ClientIdentifierNotValid => C4::BadClientId,
        C5::BadUserNamePassword => C4::BadUserNamePassword,
        C5::NotAuthorized | C5::Banned => C4::NotAuthorized,
        _ => C4::ServiceUnavailable,
    }
}

/// A server packet in the connection's protocol. `None`: the packet does not exist in MQTT 3.x
/// (a v5 DISCONNECT from the server, AUTH): close the connection without it.
pub fn lower(p: v5::Packet, protocol: Protocol) -> Option<Packet> {
    if protocol == Protocol::V5 {
        return Some(Packet::V5(p));
    }
    use v4::Packet as P;
    Some(Packet::V4(match p {
        v5::Packet::ConnAck(c) => {
            P::ConnAck(v4::ConnAck { session_present: c.session_present, code: connack_code(c.code) })
        }
        v5::Packet::Publish(p) => P::Publish(v4::Publish {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: p.topic,
            pkid: p.pkid,
            payload: p.payload,
        }),
        v5::Packet::PubAck(a) => P::PubAck(v4::PubAck::new(a.pkid)),
        v5::Packet::PubRec(a) => P::PubRec(v4::PubRec::new(a.pkid)),
        v5::Packet::PubRel(a) => P::PubRel(v4::PubRel::new(a.pkid)),
        v5::Packet::PubComp(a) => P::PubComp(v4::PubComp::new(a.pkid)),
        v5::Packet::SubAck(s) => P::SubAck(v4::SubAck {
            pkid: s.pkid,
            return_codes: s
                .return_codes
                .into_iter()
                .map(|c| match c {
                    v5::SubscribeReasonCode::QoS0 => {
                        v4::SubscribeReasonCode::Success(super::codec::QoS::AtMostOnce)
                    }
                    v5::SubscribeReasonCode::QoS1 => {
                        v4::SubscribeReasonCode::Success(super::codec::QoS::AtLeastOnce)
                    }
                    v5::SubscribeReasonCode::QoS2 => {
                        v4::SubscribeReasonCode::Success(super::codec::QoS::ExactlyOnce)
                    }
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        }),
        v5::Packet::UnsubAck(u) => P::UnsubAck(v4::UnsubAck::new(u.pkid)),
        v5::Packet::PingResp => P::PingResp,
        _ => return None,
    }))
}
