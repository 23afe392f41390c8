//! The MQTT client session as a plain state machine: packet ids, the outgoing QoS 1/2 window, the
//! QoS 2 handshakes both ways, and what is resent when a persistent session resumes on a new
//! connection. Packets in ([`In`]), packets to send and events out; no I/O, so the tests below
//! check the exact output of each step.
//!
//! A session outlives its connection: [`crate::Events::into_session`] hands it back when the
//! connection ends and [`crate::connect_with`] carries it to the next one. When the broker's
//! CONNACK says the session is present, [`Session::resend`] lists what MQTT requires to be sent
//! again, in the original order (3.1.1 §4.4, 5.0 §4.4): every PUBLISH not yet acknowledged (with
//! DUP set) and every PUBREL not yet completed. The packet ids of incoming QoS 2 messages that were
//! received but not yet released are kept too, so a message the broker sends again before its
//! PUBREL is handed to the application once (exactly once across reconnects). When the session is
//! not present, the broker forgot it and so does the client.

use std::collections::{HashMap, HashSet};

use bytes::{Bytes, BytesMut};

use crate::Qos;

/// A packet from the broker, as the session sees it (decoded by `codec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum In {
    /// CONNACK; `ok` when accepted, with the broker's receive maximum (MQTT 5).
    ConnAck {
        /// Accepted.
        ok: bool,
        /// The return / reason code.
        code: u8,
        /// The broker holds a session for this client id.
        session_present: bool,
        /// MQTT 5 Receive Maximum: QoS 1/2 publishes the broker accepts in flight.
        receive_max: Option<u16>,
    },
    /// SUBACK; `ok` when every filter was granted.
    SubAck {
        /// Packet id.
        pkid: u16,
        /// Every filter granted.
        ok: bool,
    },
    /// An incoming PUBLISH.
    Publish {
        /// Packet id (0 for QoS 0).
        pkid: u16,
        /// The message.
        msg: Message,
    },
    /// PUBACK.
    PubAck(u16),
    /// PUBREC.
    PubRec(u16),
    /// PUBREL.
    PubRel(u16),
    /// PUBCOMP.
    PubComp(u16),
    /// PINGRESP.
    PingResp,
    /// DISCONNECT from the broker (MQTT 5) with its reason code.
    Disconnect(u8),
    /// Anything the client does not act on (UNSUBACK, AUTH …).
    Other,
}

/// An incoming application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was delivered with.
    pub qos: Qos,
    /// DUP flag: the broker may have sent it before.
    pub dup: bool,
    /// RETAIN flag.
    pub retain: bool,
}

/// A packet the session wants sent (encoded by `codec`, or already encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// PUBACK.
    PubAck(u16),
    /// PUBREC.
    PubRec(u16),
    /// PUBREL.
    PubRel(u16),
    /// PUBCOMP.
    PubComp(u16),
    /// A PUBLISH sent before, encoded, with DUP set (a resumed session resends it).
    Publish(Bytes),
}

/// What the application learns from one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// CONNACK accepted; whether the broker resumed a session.
    Connected {
        /// The broker held a session (its subscriptions and queue are back).
        session_present: bool,
    },
    /// SUBACK: `true` when every filter was granted.
    Subscribed(bool),
    /// An incoming PUBLISH (QoS 2: once, at the first PUBLISH of its packet id, also across
    /// reconnects of a resumed session). Its acknowledgement goes out on the next poll, so it
    /// never acknowledges a message the application did not see.
    Message(Message),
    /// PUBACK or PUBCOMP: one outgoing QoS 1/2 publish completed.
    Acked,
    /// A QoS 0 publish was written.
    SentQos0,
    /// Nothing the application counts.
    Other,
}

/// A broker that broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// An acknowledgement for a packet id that is not in flight (or in the wrong stage).
    #[error("unsolicited {packet} for packet id {pkid}")]
    Unsolicited {
        /// Which acknowledgement.
        packet: &'static str,
        /// Its packet id.
        pkid: u16,
    },
    /// CONNACK refused the connection.
    #[error("connection refused with code {0:#04x}")]
    Refused(u8),
    /// The broker sent DISCONNECT.
    #[error("disconnected by the broker with reason {0:#04x}")]
    Disconnected(u8),
}

/// Where an outgoing packet id is in its flow: which acknowledgement it waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// QoS 1 publish waiting for PUBACK (its packet, to resend).
    PubAck(Bytes),
    /// QoS 2 publish waiting for PUBREC (its packet, to resend).
    PubRec(Bytes),
    /// QoS 2 publish released, waiting for PUBCOMP.
    PubComp,
    /// SUBSCRIBE waiting for SUBACK.
    SubAck,
}

/// An outgoing packet id in use: its stage and when it was taken (resends keep that order).
#[derive(Debug, Clone)]
struct Outgoing {
    stage: Stage,
    order: u64,
}

/// The DUP flag in a PUBLISH's first byte (3.1.1 and 5 alike).
const DUP: u8 = 0x08;

/// One client's MQTT session state (a clone is a copy to resume from if a connection attempt
/// fails before CONNACK).
#[derive(Debug, Clone)]
pub struct Session {
    /// The window asked for.
    max_inflight: u16,
    /// The window on this connection: `max_inflight`, narrowed by the broker's receive maximum.
    window: u16,
    /// Outgoing packet ids in use (publishes and subscribes).
    outgoing: HashMap<u16, Outgoing>,
    /// QoS 1/2 publishes in flight (the window bounds).
    inflight: u16,
    next_pkid: u16,
    next_order: u64,
    /// Incoming QoS 2 packet ids received but not yet released.
    incoming_qos2: HashSet<u16>,
}

impl Session {
    /// A new session with at most `max_inflight` outgoing QoS 1/2 publishes at once.
    pub fn new(max_inflight: u16) -> Self {
        let max_inflight = max_inflight.max(1);
        Session {
            max_inflight,
            window: max_inflight,
            outgoing: HashMap::new(),
            inflight: 0,
            next_pkid: 0,
            next_order: 0,
            incoming_qos2: HashSet::new(),
        }
    }

    /// Outgoing QoS 1/2 publishes in flight.
    pub fn inflight(&self) -> u16 {
        self.inflight
    }

    /// Whether a QoS 1/2 publish may be sent now.
    pub fn has_room(&self) -> bool {
        self.inflight < self.window
    }

    fn take_pkid(&mut self, stage: Stage) -> u16 {
        // At most max_inflight + pending subscribes ids are in use, far below 65,535.
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.outgoing.contains_key(&self.next_pkid) {
                self.next_order += 1;
                self.outgoing.insert(self.next_pkid, Outgoing { stage, order: self.next_order });
                return self.next_pkid;
            }
        }
    }

    /// Starts a publish: its packet id (0 for QoS 0), or `None` when the window is full. A QoS 1/2
    /// publish must then be handed over encoded with [`Session::keep`], to be resent if needed.
    pub fn publish(&mut self, qos: Qos) -> Option<u16> {
        match qos {
            Qos::Q0 => Some(0),
            _ if !self.has_room() => None,
            Qos::Q1 => {
                self.inflight += 1;
                Some(self.take_pkid(Stage::PubAck(Bytes::new())))
            }
            Qos::Q2 => {
                self.inflight += 1;
                Some(self.take_pkid(Stage::PubRec(Bytes::new())))
            }
        }
    }

    /// Gives back the packet id of a publish that could not be sent (it failed to encode).
    pub fn abandon(&mut self, pkid: u16) {
        if let Some(Outgoing { stage: Stage::PubAck(_) | Stage::PubRec(_), .. }) = self.outgoing.get(&pkid) {
            self.outgoing.remove(&pkid);
            self.inflight -= 1;
        }
    }

    /// Keeps the encoded PUBLISH of `pkid` (from [`Session::publish`]) until it is acknowledged.
    pub fn keep(&mut self, pkid: u16, packet: Bytes) {
        if let Some(Outgoing { stage: Stage::PubAck(p) | Stage::PubRec(p), .. }) =
            self.outgoing.get_mut(&pkid)
        {
            *p = packet;
        }
    }

    /// Starts a subscribe: its packet id.
    pub fn subscribe(&mut self) -> u16 {
        self.take_pkid(Stage::SubAck)
    }

    /// What a resumed session sends again, in the order it was first sent: each unacknowledged
    /// PUBLISH with DUP set, each PUBREL not yet completed.
    pub fn resend(&self) -> Vec<Out> {
        let mut pending: Vec<(&u16, &Outgoing)> = self.outgoing.iter().collect();
        pending.sort_by_key(|(_, o)| o.order);
        pending
            .into_iter()
            .filter_map(|(pkid, o)| match &o.stage {
                Stage::PubAck(p) | Stage::PubRec(p) if !p.is_empty() => {
                    let mut dup = BytesMut::from(&p[..]);
                    dup[0] |= DUP;
                    Some(Out::Publish(dup.freeze()))
                }
                Stage::PubComp => Some(Out::PubRel(*pkid)),
                _ => None,
            })
            .collect()
    }

    /// The broker has no session: neither has the client.
    fn forget(&mut self) {
        self.outgoing.clear();
        self.incoming_qos2.clear();
        self.inflight = 0;
    }

    fn complete(
        &mut self,
        pkid: u16,
        packet: &'static str,
        done: fn(&Stage) -> bool,
    ) -> Result<(), ProtocolError> {
        match self.outgoing.get(&pkid) {
            Some(o) if done(&o.stage) => {
                self.outgoing.remove(&pkid);
                Ok(())
            }
            _ => Err(ProtocolError::Unsolicited { packet, pkid }),
        }
    }

    /// Handles one packet from the broker: what to send back and what happened.
    pub fn on_packet(&mut self, p: In) -> Result<(Option<Out>, Event), ProtocolError> {
        Ok(match p {
            In::ConnAck { ok: true, session_present, receive_max, .. } => {
                self.window = receive_max.map_or(self.max_inflight, |m| self.max_inflight.min(m.max(1)));
                if session_present {
                    // A SUBSCRIBE is not resent (MQTT resends only PUBLISH and PUBREL).
                    self.outgoing.retain(|_, o| o.stage != Stage::SubAck);
                } else {
                    self.forget();
                }
                (None, Event::Connected { session_present })
            }
            In::ConnAck { ok: false, code, .. } => return Err(ProtocolError::Refused(code)),
            In::SubAck { pkid, ok } => {
                self.complete(pkid, "SUBACK", |s| *s == Stage::SubAck)?;
                (None, Event::Subscribed(ok))
            }
            In::Publish { pkid, msg } => match msg.qos {
                Qos::Q0 => (None, Event::Message(msg)),
                Qos::Q1 => (Some(Out::PubAck(pkid)), Event::Message(msg)),
                Qos::Q2 => {
                    // Sent again before our PUBREC got through (also on an earlier connection of
                    // this session): the same message, handed over once.
                    let first = self.incoming_qos2.insert(pkid);
                    (Some(Out::PubRec(pkid)), if first { Event::Message(msg) } else { Event::Other })
                }
            },
            In::PubRel(pkid) => {
                self.incoming_qos2.remove(&pkid);
                (Some(Out::PubComp(pkid)), Event::Other)
            }
            In::PubAck(pkid) => {
                self.complete(pkid, "PUBACK", |s| matches!(s, Stage::PubAck(_)))?;
                self.inflight -= 1;
                (None, Event::Acked)
            }
            In::PubRec(pkid) => match self.outgoing.get_mut(&pkid) {
                Some(o) if matches!(o.stage, Stage::PubRec(_)) => {
                    o.stage = Stage::PubComp;
                    (Some(Out::PubRel(pkid)), Event::Other)
                }
                // A PUBREC again (our PUBREL crossed it): release again.
                Some(Outgoing { stage: Stage::PubComp, .. }) => (Some(Out::PubRel(pkid)), Event::Other),
                _ => return Err(ProtocolError::Unsolicited { packet: "PUBREC", pkid }),
            },
            In::PubComp(pkid) => {
                self.complete(pkid, "PUBCOMP", |s| *s == Stage::PubComp)?;
                self.inflight -= 1;
                (None, Event::Acked)
            }
            In::Disconnect(code) => return Err(ProtocolError::Disconnected(code)),
            In::PingResp | In::Other => (None, Event::Other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &mut Session, p: In) -> (Option<Out>, Event) {
        s.on_packet(p).expect("valid packet")
    }

    fn msg(qos: Qos, payload: &'static [u8]) -> Message {
        Message { topic: "t".into(), payload: Bytes::from_static(payload), qos, dup: false, retain: false }
    }

    fn connack(session_present: bool) -> In {
        In::ConnAck { ok: true, code: 0, session_present, receive_max: None }
    }

    #[test]
    fn qos1_window_fills_and_frees_on_puback() {
        let mut s = Session::new(2);
        assert_eq!(s.publish(Qos::Q1), Some(1));
        assert_eq!(s.publish(Qos::Q1), Some(2));
        assert_eq!(s.publish(Qos::Q1), None, "window of 2 is full");
        assert_eq!(s.publish(Qos::Q0), Some(0), "QoS 0 never waits for the window");
        assert_eq!(ok(&mut s, In::PubAck(1)), (None, Event::Acked));
        assert_eq!(s.inflight(), 1);
        assert_eq!(s.publish(Qos::Q1), Some(3));
        assert_eq!(s.on_packet(In::PubAck(1)), Err(ProtocolError::Unsolicited { packet: "PUBACK", pkid: 1 }));
    }

    #[test]
    fn an_abandoned_publish_frees_its_slot_and_is_not_resent() {
        let mut s = Session::new(1);
        let pkid = s.publish(Qos::Q1).unwrap();
        s.abandon(pkid);
        assert_eq!(s.inflight(), 0);
        assert!(s.resend().is_empty(), "nothing was sent, so nothing is resent");
        assert!(s.publish(Qos::Q1).is_some(), "the window has room again");
        assert_eq!(s.on_packet(In::PubAck(pkid)), Err(ProtocolError::Unsolicited { packet: "PUBACK", pkid }));
    }

    #[test]
    fn qos2_outgoing_is_released_then_completed() {
        let mut s = Session::new(10);
        assert_eq!(s.publish(Qos::Q2), Some(1));
        assert_eq!(ok(&mut s, In::PubRec(1)), (Some(Out::PubRel(1)), Event::Other));
        assert_eq!(
            ok(&mut s, In::PubRec(1)),
            (Some(Out::PubRel(1)), Event::Other),
            "PUBREC again: release again"
        );
        assert!(s.on_packet(In::PubAck(1)).is_err(), "a QoS 2 publish is not PUBACKed");
        assert_eq!(ok(&mut s, In::PubComp(1)), (None, Event::Acked));
        assert_eq!(s.inflight(), 0);
        assert!(s.on_packet(In::PubComp(1)).is_err());
    }

    #[test]
    fn incoming_qos2_is_delivered_once_and_completed() {
        let mut s = Session::new(10);
        let publish = In::Publish { pkid: 7, msg: msg(Qos::Q2, b"x") };
        assert_eq!(ok(&mut s, publish.clone()), (Some(Out::PubRec(7)), Event::Message(msg(Qos::Q2, b"x"))));
        assert_eq!(ok(&mut s, publish), (Some(Out::PubRec(7)), Event::Other), "resent before PUBREL");
        assert_eq!(ok(&mut s, In::PubRel(7)), (Some(Out::PubComp(7)), Event::Other));
        let again = In::Publish { pkid: 7, msg: msg(Qos::Q2, b"y") };
        assert_eq!(ok(&mut s, again).1, Event::Message(msg(Qos::Q2, b"y")), "a new message");
    }

    #[test]
    fn incoming_qos1_is_acked_and_qos0_is_not() {
        let mut s = Session::new(10);
        assert_eq!(
            ok(&mut s, In::Publish { pkid: 3, msg: msg(Qos::Q1, b"x") }),
            (Some(Out::PubAck(3)), Event::Message(msg(Qos::Q1, b"x")))
        );
        assert_eq!(
            ok(&mut s, In::Publish { pkid: 0, msg: msg(Qos::Q0, b"x") }),
            (None, Event::Message(msg(Qos::Q0, b"x")))
        );
    }

    #[test]
    fn connack_receive_maximum_narrows_the_window_of_that_connection() {
        let mut s = Session::new(100);
        assert_eq!(
            ok(&mut s, In::ConnAck { ok: true, code: 0, session_present: false, receive_max: Some(1) }),
            (None, Event::Connected { session_present: false })
        );
        assert_eq!(s.publish(Qos::Q1), Some(1));
        assert_eq!(s.publish(Qos::Q1), None);
        ok(&mut s, connack(true));
        assert_eq!(s.publish(Qos::Q1), Some(2), "a broker without a receive maximum: the full window");
        assert_eq!(
            s.on_packet(In::ConnAck { ok: false, code: 0x87, session_present: false, receive_max: None }),
            Err(ProtocolError::Refused(0x87))
        );
    }

    #[test]
    fn packet_ids_skip_those_in_use_and_wrap() {
        let mut s = Session::new(10);
        s.next_pkid = u16::MAX - 1;
        assert_eq!(s.publish(Qos::Q1), Some(u16::MAX));
        assert_eq!(s.subscribe(), 1, "wraps past 65535 to 1, never 0");
        assert_eq!(s.publish(Qos::Q1), Some(2));
        assert_eq!(ok(&mut s, In::SubAck { pkid: 1, ok: true }), (None, Event::Subscribed(true)));
        s.next_pkid = 1;
        assert_eq!(s.publish(Qos::Q1), Some(3), "2 is still in flight");
    }

    /// A QoS 1 publish, a QoS 2 one not yet received by the broker, a QoS 2 one released and a
    /// subscribe are in flight when the connection breaks; the session is resumed.
    #[test]
    fn a_resumed_session_resends_publishes_with_dup_and_pubrels_in_order() {
        let mut s = Session::new(10);
        let q1 = s.publish(Qos::Q1).expect("room");
        s.keep(q1, Bytes::from_static(&[0x32, 0x01, 0xAA]));
        let released = s.publish(Qos::Q2).expect("room");
        s.keep(released, Bytes::from_static(&[0x34, 0x01, 0xBB]));
        let q2 = s.publish(Qos::Q2).expect("room");
        s.keep(q2, Bytes::from_static(&[0x34, 0x01, 0xCC]));
        let sub = s.subscribe();
        assert_eq!(ok(&mut s, In::PubRec(released)), (Some(Out::PubRel(released)), Event::Other));
        // Incoming QoS 2 message 9 was received, its PUBREL has not come.
        let m9 = msg(Qos::Q2, b"m9");
        assert_eq!(ok(&mut s, In::Publish { pkid: 9, msg: m9.clone() }).1, Event::Message(m9.clone()));

        assert_eq!(ok(&mut s, connack(true)), (None, Event::Connected { session_present: true }));
        assert_eq!(
            s.resend(),
            vec![
                Out::Publish(Bytes::from_static(&[0x3A, 0x01, 0xAA])),
                Out::PubRel(released),
                Out::Publish(Bytes::from_static(&[0x3C, 0x01, 0xCC])),
            ],
            "DUP set, original order, the SUBSCRIBE not resent"
        );
        assert!(s.on_packet(In::SubAck { pkid: sub, ok: true }).is_err(), "the subscribe was dropped");
        let dup9 = In::Publish { pkid: 9, msg: Message { dup: true, ..m9 } };
        assert_eq!(ok(&mut s, dup9), (Some(Out::PubRec(9)), Event::Other), "not handed over twice");
        assert_eq!(ok(&mut s, In::PubAck(q1)), (None, Event::Acked));
        assert_eq!(ok(&mut s, In::PubComp(released)), (None, Event::Acked));
        assert_eq!(ok(&mut s, In::PubRec(q2)), (Some(Out::PubRel(q2)), Event::Other));
        assert_eq!(ok(&mut s, In::PubComp(q2)), (None, Event::Acked));
        assert_eq!((s.inflight(), s.resend()), (0, vec![]));
    }

    #[test]
    fn a_session_the_broker_lost_is_forgotten() {
        let mut s = Session::new(1);
        let p = s.publish(Qos::Q2).expect("room");
        s.keep(p, Bytes::from_static(&[0x34, 0x01, 0xCC]));
        ok(&mut s, In::Publish { pkid: 4, msg: msg(Qos::Q2, b"a") });
        assert_eq!(ok(&mut s, connack(false)), (None, Event::Connected { session_present: false }));
        assert_eq!(s.resend(), vec![]);
        assert!(s.has_room(), "the window is free again");
        assert_eq!(
            ok(&mut s, In::Publish { pkid: 4, msg: msg(Qos::Q2, b"b") }).1,
            Event::Message(msg(Qos::Q2, b"b"))
        );
    }
}
