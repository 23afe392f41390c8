// Vendored from mqttbytes 0.6.0 (src/v4/unsubscribe.rs), Apache License 2.0 (see ../LICENSE-mqttbytes).
// Modified for ironhub: no panicking paths, strict validation, bounded v5 properties with
// duplicates rejected.

use super::*;
use bytes::{Buf, Bytes};

/// Unsubscribe packet
#[derive(Debug, Clone, PartialEq)]
pub struct Unsubscribe {
    pub pkid: u16,
    pub topics: Vec<String>,
}

impl Unsubscribe {
    pub fn new<S: Into<String>>(topic: S) -> Unsubscribe {
        let mut topics = Vec::new();
        topics.push(topic.into());
        Unsubscribe { pkid: 0, topics }
    }

    pub fn read(fixed_header: FixedHeader, mut bytes: Bytes) -> Result<Self, Error> {
        let variable_header_index = fixed_header.fixed_header_len;
        bytes.advance(variable_header_index);

        let pkid = read_u16(&mut bytes)?;
        if pkid == 0 {
            return Err(Error::PacketIdZero);
        }
        let mut topics = Vec::with_capacity(1);

        while bytes.has_remaining() {
            let topic_filter = read_mqtt_string(&mut bytes)?;
            if !valid_filter(&topic_filter) {
                return Err(Error::InvalidFilter);
            }
            topics.push(topic_filter);
        }
        if topics.is_empty() {
            return Err(Error::EmptySubscription);
        }

        let unsubscribe = Unsubscribe { pkid, topics };
        Ok(unsubscribe)
    }

    pub fn write(&self, payload: &mut BytesMut) -> Result<usize, Error> {
        let remaining_len = 2 + self.topics.iter().fold(0, |s, topic| s + topic.len() + 2);

        payload.put_u8(0xA2);
        let remaining_len_bytes = write_remaining_length(payload, remaining_len)?;
        payload.put_u16(self.pkid);

        for topic in self.topics.iter() {
            write_mqtt_string(payload, topic.as_str())?;
        }
        Ok(1 + remaining_len_bytes + remaining_len)
    }
}
