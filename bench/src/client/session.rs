//! The MQTT client session as a plain state machine: packet ids, the outgoing QoS 1/2 window and
//! the incoming QoS 2 handshake. Packets in ([`In`]), packets to send and events out; no I/O, so
//! the tests below check the exact output of each step.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::cli::Qos;

/// A packet from the broker, as the session sees it (decoded by `codec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum In {
    /// CONNACK; `ok` when accepted, with the broker's receive maximum (MQTT 5).
    ConnAck {
        /// Accepted.
        ok: bool,
        /// The return / reason code.
        code: u8,
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
        /// QoS.
        qos: Qos,
        /// Packet id (0 for QoS 0).
        pkid: u16,
        /// Payload.
        payload: Bytes,
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
    /// Anything the bench does not act on (UNSUBACK, AUTH …).
    Other,
}

/// A packet the session wants sent (encoded by `codec`).
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
}

/// What the bench learns from one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// CONNACK accepted.
    Connected,
    /// SUBACK: `true` when every filter was granted.
    Subscribed(bool),
    /// An incoming PUBLISH payload (QoS 2: once, at the first PUBLISH of its packet id).
    Message(Bytes),
    /// PUBACK or PUBCOMP: one outgoing QoS 1/2 publish completed.
    Acked,
    /// A QoS 0 publish was written.
    SentQos0,
    /// Nothing the bench counts.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// QoS 1 publish waiting for PUBACK.
    PubAck,
    /// QoS 2 publish waiting for PUBREC.
    PubRec,
    /// QoS 2 publish released, waiting for PUBCOMP.
    PubComp,
    /// SUBSCRIBE waiting for SUBACK.
    SubAck,
}

/// One connection's MQTT session state.
#[derive(Debug)]
pub struct Session {
    max_inflight: u16,
    /// Outgoing packet ids in use (publishes and subscribes).
    outgoing: HashMap<u16, Stage>,
    /// QoS 1/2 publishes in flight (the window `max_inflight` bounds).
    inflight: u16,
    next_pkid: u16,
    /// Incoming QoS 2 packet ids received but not yet released.
    incoming_qos2: HashSet<u16>,
}

impl Session {
    /// A new session with at most `max_inflight` outgoing QoS 1/2 publishes at once.
    pub fn new(max_inflight: u16) -> Self {
        Session {
            max_inflight: max_inflight.max(1),
            outgoing: HashMap::new(),
            inflight: 0,
            next_pkid: 0,
            incoming_qos2: HashSet::new(),
        }
    }

    /// Outgoing QoS 1/2 publishes in flight.
    pub fn inflight(&self) -> u16 {
        self.inflight
    }

    /// Whether a QoS 1/2 publish may be sent now.
    pub fn has_room(&self) -> bool {
        self.inflight < self.max_inflight
    }

    fn take_pkid(&mut self, stage: Stage) -> u16 {
        // At most max_inflight + pending subscribes ids are in use, far below 65,535.
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.outgoing.contains_key(&self.next_pkid) {
                self.outgoing.insert(self.next_pkid, stage);
                return self.next_pkid;
            }
        }
    }

    /// Starts a publish: its packet id (0 for QoS 0), or `None` when the window is full.
    pub fn publish(&mut self, qos: Qos) -> Option<u16> {
        match qos {
            Qos::Q0 => Some(0),
            _ if !self.has_room() => None,
            Qos::Q1 => {
                self.inflight += 1;
                Some(self.take_pkid(Stage::PubAck))
            }
            Qos::Q2 => {
                self.inflight += 1;
                Some(self.take_pkid(Stage::PubRec))
            }
        }
    }

    /// Starts a subscribe: its packet id.
    pub fn subscribe(&mut self) -> u16 {
        self.take_pkid(Stage::SubAck)
    }

    fn complete(&mut self, pkid: u16, expect: Stage, packet: &'static str) -> Result<(), ProtocolError> {
        match self.outgoing.get(&pkid) {
            Some(s) if *s == expect => {
                self.outgoing.remove(&pkid);
                Ok(())
            }
            _ => Err(ProtocolError::Unsolicited { packet, pkid }),
        }
    }

    /// Handles one packet from the broker: what to send back and what happened.
    pub fn on_packet(&mut self, p: In) -> Result<(Option<Out>, Event), ProtocolError> {
        Ok(match p {
            In::ConnAck { ok: true, receive_max, .. } => {
                if let Some(m) = receive_max {
                    self.max_inflight = self.max_inflight.min(m.max(1));
                }
                (None, Event::Connected)
            }
            In::ConnAck { ok: false, code, .. } => return Err(ProtocolError::Refused(code)),
            In::SubAck { pkid, ok } => {
                self.complete(pkid, Stage::SubAck, "SUBACK")?;
                (None, Event::Subscribed(ok))
            }
            In::Publish { qos: Qos::Q0, payload, .. } => (None, Event::Message(payload)),
            In::Publish { qos: Qos::Q1, pkid, payload } => (Some(Out::PubAck(pkid)), Event::Message(payload)),
            In::Publish { qos: Qos::Q2, pkid, payload } => {
                // A PUBLISH resent before our PUBREC arrived is the same message: deliver it once.
                let first = self.incoming_qos2.insert(pkid);
                (Some(Out::PubRec(pkid)), if first { Event::Message(payload) } else { Event::Other })
            }
            In::PubRel(pkid) => {
                self.incoming_qos2.remove(&pkid);
                (Some(Out::PubComp(pkid)), Event::Other)
            }
            In::PubAck(pkid) => {
                self.complete(pkid, Stage::PubAck, "PUBACK")?;
                self.inflight -= 1;
                (None, Event::Acked)
            }
            In::PubRec(pkid) => match self.outgoing.get_mut(&pkid) {
                Some(s @ Stage::PubRec) => {
                    *s = Stage::PubComp;
                    (Some(Out::PubRel(pkid)), Event::Other)
                }
                // A PUBREC again (our PUBREL crossed it): release again.
                Some(Stage::PubComp) => (Some(Out::PubRel(pkid)), Event::Other),
                _ => return Err(ProtocolError::Unsolicited { packet: "PUBREC", pkid }),
            },
            In::PubComp(pkid) => {
                self.complete(pkid, Stage::PubComp, "PUBCOMP")?;
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
        let p = Bytes::from_static(b"x");
        let publish = In::Publish { qos: Qos::Q2, pkid: 7, payload: p.clone() };
        assert_eq!(ok(&mut s, publish.clone()), (Some(Out::PubRec(7)), Event::Message(p)));
        assert_eq!(ok(&mut s, publish), (Some(Out::PubRec(7)), Event::Other), "resent before PUBREL");
        assert_eq!(ok(&mut s, In::PubRel(7)), (Some(Out::PubComp(7)), Event::Other));
        let again = In::Publish { qos: Qos::Q2, pkid: 7, payload: Bytes::from_static(b"y") };
        assert_eq!(ok(&mut s, again).1, Event::Message(Bytes::from_static(b"y")), "a new message");
    }

    #[test]
    fn incoming_qos1_is_acked_and_qos0_is_not() {
        let mut s = Session::new(10);
        let p = Bytes::from_static(b"x");
        assert_eq!(
            ok(&mut s, In::Publish { qos: Qos::Q1, pkid: 3, payload: p.clone() }),
            (Some(Out::PubAck(3)), Event::Message(p.clone()))
        );
        assert_eq!(
            ok(&mut s, In::Publish { qos: Qos::Q0, pkid: 0, payload: p.clone() }),
            (None, Event::Message(p))
        );
    }

    #[test]
    fn connack_receive_maximum_narrows_the_window() {
        let mut s = Session::new(100);
        assert_eq!(
            ok(&mut s, In::ConnAck { ok: true, code: 0, receive_max: Some(1) }),
            (None, Event::Connected)
        );
        assert_eq!(s.publish(Qos::Q1), Some(1));
        assert_eq!(s.publish(Qos::Q1), None);
        assert_eq!(
            s.on_packet(In::ConnAck { ok: false, code: 0x87, receive_max: None }),
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
}
