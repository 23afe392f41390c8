//! MQTT bytes for the session, over rumqttc's public packet codecs (`rumqttc::mqttbytes` for
//! 3.1.1, `rumqttc::v5::mqttbytes` for 5): what the client sends, encoded; what the broker sends,
//! decoded into [`In`].

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes as m5;
use rumqttc::v5::mqttbytes::v5 as p5;

use crate::session::{In, Message, Out};
use crate::{Protocol, Qos};

/// Largest packet accepted from the broker (bytes).
pub const MAX_PACKET: usize = 1024 * 1024;

/// A packet the broker sent that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

/// What the client encodes.
#[derive(Debug, Clone)]
pub enum Request<'a> {
    /// CONNECT.
    Connect {
        /// Client id.
        client_id: &'a str,
        /// Keep-alive, seconds.
        keep_alive: u16,
        /// Clean session / clean start.
        clean: bool,
        /// MQTT 5 session expiry, seconds (persistent sessions).
        session_expiry: Option<u32>,
        /// Username and password.
        credentials: Option<&'a (String, String)>,
    },
    /// SUBSCRIBE to one filter.
    Subscribe {
        /// Packet id.
        pkid: u16,
        /// Filter.
        filter: &'a str,
        /// QoS.
        qos: Qos,
    },
    /// PUBLISH.
    Publish {
        /// Packet id (0 for QoS 0).
        pkid: u16,
        /// Topic.
        topic: &'a str,
        /// QoS.
        qos: Qos,
        /// Payload.
        payload: Bytes,
    },
    /// An acknowledgement the session asked for.
    Ack(Out),
    /// PINGREQ.
    PingReq,
    /// DISCONNECT.
    Disconnect,
}

fn q4(q: Qos) -> rumqttc::QoS {
    match q {
        Qos::Q0 => rumqttc::QoS::AtMostOnce,
        Qos::Q1 => rumqttc::QoS::AtLeastOnce,
        Qos::Q2 => rumqttc::QoS::ExactlyOnce,
    }
}

fn q5(q: Qos) -> m5::QoS {
    match q {
        Qos::Q0 => m5::QoS::AtMostOnce,
        Qos::Q1 => m5::QoS::AtLeastOnce,
        Qos::Q2 => m5::QoS::ExactlyOnce,
    }
}

fn from4(q: rumqttc::QoS) -> Qos {
    match q {
        rumqttc::QoS::AtMostOnce => Qos::Q0,
        rumqttc::QoS::AtLeastOnce => Qos::Q1,
        rumqttc::QoS::ExactlyOnce => Qos::Q2,
    }
}

fn from5(q: m5::QoS) -> Qos {
    match q {
        m5::QoS::AtMostOnce => Qos::Q0,
        m5::QoS::AtLeastOnce => Qos::Q1,
        m5::QoS::ExactlyOnce => Qos::Q2,
    }
}

/// Appends `r` to `buf` in protocol `p`.
pub fn encode(p: Protocol, r: Request<'_>, buf: &mut BytesMut) -> Result<(), DecodeError> {
    let err = |e: &dyn std::fmt::Display| DecodeError(format!("encoding: {e}"));
    if let Request::Ack(Out::Publish(packet)) = &r {
        buf.extend_from_slice(packet);
        return Ok(());
    }
    match p {
        Protocol::V311 => {
            use rumqttc::Packet as P;
            let packet = match r {
                Request::Connect { client_id, keep_alive, clean, credentials, .. } => {
                    let mut c = rumqttc::Connect::new(client_id);
                    c.keep_alive = keep_alive;
                    c.clean_session = clean;
                    c.login = credentials.map(|(u, p)| rumqttc::Login::new(u.clone(), p.clone()));
                    P::Connect(c)
                }
                Request::Subscribe { pkid, filter, qos } => {
                    let mut s = rumqttc::Subscribe::new(filter, q4(qos));
                    s.pkid = pkid;
                    P::Subscribe(s)
                }
                Request::Publish { pkid, topic, qos, payload } => P::Publish(rumqttc::Publish {
                    dup: false,
                    qos: q4(qos),
                    retain: false,
                    topic: topic.to_string(),
                    pkid,
                    payload,
                }),
                Request::Ack(Out::PubAck(id)) => P::PubAck(rumqttc::PubAck::new(id)),
                Request::Ack(Out::PubRec(id)) => P::PubRec(rumqttc::PubRec::new(id)),
                Request::Ack(Out::PubRel(id)) => P::PubRel(rumqttc::PubRel::new(id)),
                Request::Ack(Out::PubComp(id)) => P::PubComp(rumqttc::PubComp::new(id)),
                Request::Ack(Out::Publish(_)) => unreachable!("written above"),
                Request::PingReq => P::PingReq,
                Request::Disconnect => P::Disconnect,
            };
            packet.write(buf, MAX_PACKET).map_err(|e| err(&e))?;
        }
        Protocol::V5 => {
            use p5::Packet as P;
            let packet = match r {
                Request::Connect { client_id, keep_alive, clean, session_expiry, credentials } => {
                    let mut props = p5::ConnectProperties::new();
                    props.max_packet_size = Some(MAX_PACKET as u32);
                    props.session_expiry_interval = session_expiry;
                    let c = p5::Connect {
                        keep_alive,
                        client_id: client_id.to_string(),
                        clean_start: clean,
                        properties: Some(props),
                    };
                    P::Connect(c, None, credentials.map(|(u, p)| p5::Login::new(u.clone(), p.clone())))
                }
                Request::Subscribe { pkid, filter, qos } => {
                    let mut s = p5::Subscribe::new(p5::Filter::new(filter, q5(qos)), None);
                    s.pkid = pkid;
                    P::Subscribe(s)
                }
                Request::Publish { pkid, topic, qos, payload } => {
                    let mut p = p5::Publish::new(topic, q5(qos), payload, None);
                    p.pkid = pkid;
                    P::Publish(p)
                }
                Request::Ack(Out::PubAck(id)) => P::PubAck(p5::PubAck::new(id, None)),
                Request::Ack(Out::PubRec(id)) => P::PubRec(p5::PubRec::new(id, None)),
                Request::Ack(Out::PubRel(id)) => P::PubRel(p5::PubRel::new(id, None)),
                Request::Ack(Out::PubComp(id)) => P::PubComp(p5::PubComp::new(id, None)),
                Request::Ack(Out::Publish(_)) => unreachable!("written above"),
                Request::PingReq => P::PingReq(p5::PingReq),
                Request::Disconnect => {
                    P::Disconnect(p5::Disconnect::new(p5::DisconnectReasonCode::NormalDisconnection))
                }
            };
            packet.write(buf, Some(MAX_PACKET as u32)).map_err(|e| err(&e))?;
        }
    }
    Ok(())
}

/// Takes the next whole packet off the front of `buf`: `Ok(None)` until one is complete.
pub fn decode(p: Protocol, buf: &mut BytesMut) -> Result<Option<In>, DecodeError> {
    match p {
        Protocol::V311 => {
            use rumqttc::Packet as P;
            let packet = match P::read(buf, MAX_PACKET) {
                Ok(packet) => packet,
                Err(rumqttc::Error::InsufficientBytes(_)) => return Ok(None),
                Err(e) => return Err(DecodeError(e.to_string())),
            };
            Ok(Some(match packet {
                P::ConnAck(a) => In::ConnAck {
                    ok: a.code == rumqttc::ConnectReturnCode::Success,
                    code: a.code as u8,
                    session_present: a.session_present,
                    receive_max: None,
                },
                P::SubAck(a) => In::SubAck {
                    pkid: a.pkid,
                    ok: a.return_codes.iter().all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
                },
                P::Publish(p) => In::Publish {
                    pkid: p.pkid,
                    msg: Message {
                        topic: p.topic,
                        payload: p.payload,
                        qos: from4(p.qos),
                        dup: p.dup,
                        retain: p.retain,
                    },
                },
                P::PubAck(a) => In::PubAck(a.pkid),
                P::PubRec(a) => In::PubRec(a.pkid),
                P::PubRel(a) => In::PubRel(a.pkid),
                P::PubComp(a) => In::PubComp(a.pkid),
                P::PingResp => In::PingResp,
                _ => In::Other,
            }))
        }
        Protocol::V5 => {
            use p5::Packet as P;
            let packet = match P::read(buf, Some(MAX_PACKET as u32)) {
                Ok(packet) => packet,
                Err(m5::Error::InsufficientBytes(_)) => return Ok(None),
                Err(e) => return Err(DecodeError(e.to_string())),
            };
            Ok(Some(match packet {
                P::ConnAck(a) => In::ConnAck {
                    ok: a.code == p5::ConnectReturnCode::Success,
                    code: connack_code5(&a.code),
                    session_present: a.session_present,
                    receive_max: a.properties.and_then(|p| p.receive_max),
                },
                P::SubAck(a) => In::SubAck {
                    pkid: a.pkid,
                    ok: a.return_codes.iter().all(|c| matches!(c, p5::SubscribeReasonCode::Success(_))),
                },
                P::Publish(p) => In::Publish {
                    pkid: p.pkid,
                    msg: Message {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload,
                        qos: from5(p.qos),
                        dup: p.dup,
                        retain: p.retain,
                    },
                },
                P::PubAck(a) => In::PubAck(a.pkid),
                P::PubRec(a) => In::PubRec(a.pkid),
                P::PubRel(a) => In::PubRel(a.pkid),
                P::PubComp(a) => In::PubComp(a.pkid),
                P::PingResp(_) => In::PingResp,
                P::Disconnect(d) => In::Disconnect(d.reason_code as u8),
                _ => In::Other,
            }))
        }
    }
}

/// The MQTT 5 reason code of a CONNACK (rumqttc's enum does not expose the byte).
fn connack_code5(c: &p5::ConnectReturnCode) -> u8 {
    use p5::ConnectReturnCode as C;
    match c {
        C::Success => 0x00,
        C::UnspecifiedError => 0x80,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => 0x84,
        C::BadClientId | C::ClientIdentifierNotValid => 0x85,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServiceUnavailable | C::ServerUnavailable => 0x88,
        C::ServerBusy => 0x89,
        C::Banned => 0x8A,
        C::BadAuthenticationMethod => 0x8C,
        C::QuotaExceeded => 0x97,
        C::ConnectionRateExceeded => 0x9F,
        _ => 0x80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_publish(p: Protocol) {
        let mut buf = BytesMut::new();
        let payload = Bytes::from_static(b"hello");
        encode(
            p,
            Request::Publish { pkid: 9, topic: "a/b", qos: Qos::Q1, payload: payload.clone() },
            &mut buf,
        )
        .expect("encode");
        let whole = buf.clone();
        // Byte by byte: nothing until the packet is complete, then exactly it.
        let mut feed = BytesMut::new();
        for (i, b) in whole.iter().enumerate() {
            feed.extend_from_slice(&[*b]);
            let got = decode(p, &mut feed).expect("decode");
            if i + 1 < whole.len() {
                assert_eq!(got, None);
            } else {
                let msg = Message {
                    topic: "a/b".into(),
                    payload: payload.clone(),
                    qos: Qos::Q1,
                    dup: false,
                    retain: false,
                };
                assert_eq!(got, Some(In::Publish { pkid: 9, msg }));
            }
        }
        assert!(feed.is_empty());
    }

    #[test]
    fn a_publish_decodes_only_when_complete_in_both_versions() {
        roundtrip_publish(Protocol::V311);
        roundtrip_publish(Protocol::V5);
    }

    #[test]
    fn acks_are_encoded_as_their_packets() {
        let mut buf = BytesMut::new();
        encode(Protocol::V311, Request::Ack(Out::PubAck(0x0102)), &mut buf).expect("encode");
        assert_eq!(&buf[..], &[0x40, 0x02, 0x01, 0x02]);
        buf.clear();
        encode(Protocol::V311, Request::Ack(Out::PubRel(5)), &mut buf).expect("encode");
        assert_eq!(&buf[..], &[0x62, 0x02, 0x00, 0x05]);
        buf.clear();
        encode(Protocol::V311, Request::PingReq, &mut buf).expect("encode");
        assert_eq!(&buf[..], &[0xC0, 0x00]);
    }

    #[test]
    fn a_refused_v311_connack_carries_its_code() {
        let mut buf = BytesMut::from(&[0x20, 0x02, 0x00, 0x05][..]);
        assert_eq!(
            decode(Protocol::V311, &mut buf).expect("decode"),
            Some(In::ConnAck { ok: false, code: 5, session_present: false, receive_max: None })
        );
    }
}
