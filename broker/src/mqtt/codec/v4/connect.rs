// Vendored from mqttbytes 0.6.0 (src/v4/connect.rs), Apache License 2.0 (see
// ../LICENSE-mqttbytes). Modified for ironhub: MQTT 3.1 (`MQIsdp`, level 3), binary passwords,
// the reserved flag and a password without a username are rejected.

use super::*;
use bytes::{Buf, Bytes};

/// Connection packet initiated by the client
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    /// Mqtt protocol version: [`Protocol::V3`] (3.1) or [`Protocol::V4`] (3.1.1)
    pub protocol: Protocol,
    /// Mqtt keep alive time
    pub keep_alive: u16,
    /// Client Id
    pub client_id: String,
    /// Clean session. Asks the broker to clear previous state
    pub clean_session: bool,
    /// Will that broker needs to publish when the client disconnects
    pub last_will: Option<LastWill>,
    /// User name (user name flag set)
    pub username: Option<String>,
    /// Password, arbitrary bytes (password flag set)
    pub password: Option<Bytes>,
}

/// Protocol name and level written for a protocol version.
pub(crate) fn protocol_name_level(protocol: Protocol) -> (&'static str, u8) {
    match protocol {
        Protocol::V3 => ("MQIsdp", 3),
        Protocol::V4 => ("MQTT", 4),
        Protocol::V5 => ("MQTT", 5),
    }
}

/// Reads protocol name and level; accepts `MQIsdp`/3, `MQTT`/4 and `MQTT`/5.
pub(crate) fn read_protocol(bytes: &mut Bytes) -> Result<Protocol, Error> {
    let protocol_name = read_mqtt_string(bytes)?;
    let protocol_level = read_u8(bytes)?;
    match (protocol_name.as_str(), protocol_level) {
        ("MQIsdp", 3) => Ok(Protocol::V3),
        ("MQTT", 4) => Ok(Protocol::V4),
        ("MQTT", 5) => Ok(Protocol::V5),
        ("MQIsdp", _) | ("MQTT", _) => Err(Error::InvalidProtocolLevel(protocol_level)),
        _ => Err(Error::InvalidProtocol),
    }
}

impl Connect {
    pub fn new<S: Into<String>>(id: S) -> Connect {
        Connect {
            protocol: Protocol::V4,
            keep_alive: 10,
            client_id: id.into(),
            clean_session: true,
            last_will: None,
            username: None,
            password: None,
        }
    }

    pub fn len(&self) -> usize {
        let (name, _) = protocol_name_level(self.protocol);
        let mut len = 2 + name.len() // protocol name
                              + 1            // protocol version
                              + 1            // connect flags
                              + 2; // keep alive

        len += 2 + self.client_id.len();

        // last will len
        if let Some(last_will) = &self.last_will {
            len += last_will.len();
        }

        if let Some(username) = &self.username {
            len += 2 + username.len();
        }
        if let Some(password) = &self.password {
            len += 2 + password.len();
        }

        len
    }

    pub fn read(fixed_header: FixedHeader, mut bytes: Bytes) -> Result<Connect, Error> {
        let variable_header_index = fixed_header.fixed_header_len;
        bytes.advance(variable_header_index);

        // Variable header
        let protocol = match read_protocol(&mut bytes)? {
            Protocol::V5 => return Err(Error::InvalidProtocolLevel(5)),
            protocol => protocol,
        };

        let connect_flags = read_u8(&mut bytes)?;
        if connect_flags & 0b1 != 0 {
            return Err(Error::ReservedConnectFlag);
        }
        if connect_flags & 0b1100_0000 == 0b0100_0000 {
            return Err(Error::PasswordWithoutUsername);
        }
        let clean_session = (connect_flags & 0b10) != 0;
        let keep_alive = read_u16(&mut bytes)?;

        let client_id = read_mqtt_string(&mut bytes)?;
        let last_will = LastWill::read(connect_flags, &mut bytes)?;
        let username = match connect_flags & 0b1000_0000 {
            0 => None,
            _ => Some(read_mqtt_string(&mut bytes)?),
        };
        let password = match connect_flags & 0b0100_0000 {
            0 => None,
            _ => Some(read_mqtt_bytes(&mut bytes)?),
        };
        if bytes.has_remaining() {
            return Err(Error::MalformedPacket);
        }

        let connect =
            Connect { protocol, keep_alive, client_id, clean_session, last_will, username, password };

        Ok(connect)
    }

    pub fn write(&self, buffer: &mut BytesMut) -> Result<usize, Error> {
        let len = self.len();
        buffer.put_u8(0b0001_0000);
        let count = write_remaining_length(buffer, len)?;
        let (name, level) = protocol_name_level(self.protocol);
        write_mqtt_string(buffer, name)?;
        buffer.put_u8(level);

        let mut connect_flags = 0;
        if self.clean_session {
            connect_flags |= 0x02;
        }
        if let Some(last_will) = &self.last_will {
            connect_flags |= last_will.flags();
        }
        if self.username.is_some() {
            connect_flags |= 0x80;
        }
        if self.password.is_some() {
            connect_flags |= 0x40;
        }

        buffer.put_u8(connect_flags);
        buffer.put_u16(self.keep_alive);
        write_mqtt_string(buffer, &self.client_id)?;

        if let Some(last_will) = &self.last_will {
            last_will.write(buffer)?;
        }
        if let Some(username) = &self.username {
            write_mqtt_string(buffer, username)?;
        }
        if let Some(password) = &self.password {
            write_mqtt_bytes(buffer, password)?;
        }

        Ok(1 + count + len)
    }
}

/// LastWill that broker forwards on behalf of the client
#[derive(Debug, Clone, PartialEq)]
pub struct LastWill {
    pub topic: String,
    pub message: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

impl LastWill {
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>, qos: QoS, retain: bool) -> LastWill {
        LastWill { topic: topic.into(), message: Bytes::from(payload.into()), qos, retain }
    }

    fn len(&self) -> usize {
        2 + self.topic.len() + 2 + self.message.len()
    }

    fn read(connect_flags: u8, bytes: &mut Bytes) -> Result<Option<LastWill>, Error> {
        let last_will = match connect_flags & 0b100 {
            0 if (connect_flags & 0b0011_1000) != 0 => {
                return Err(Error::IncorrectPacketFormat);
            }
            0 => None,
            _ => {
                let will_topic = read_mqtt_string(bytes)?;
                if !valid_topic(&will_topic) {
                    return Err(Error::InvalidTopic);
                }
                let will_message = read_mqtt_bytes(bytes)?;
                let will_qos = qos((connect_flags & 0b11000) >> 3)?;
                Some(LastWill {
                    topic: will_topic,
                    message: will_message,
                    qos: will_qos,
                    retain: (connect_flags & 0b0010_0000) != 0,
                })
            }
        };

        Ok(last_will)
    }

    fn flags(&self) -> u8 {
        let mut connect_flags = 0x04 | (self.qos as u8) << 3;
        if self.retain {
            connect_flags |= 0x20;
        }
        connect_flags
    }

    fn write(&self, buffer: &mut BytesMut) -> Result<(), Error> {
        write_mqtt_string(buffer, &self.topic)?;
        write_mqtt_bytes(buffer, &self.message)?;
        Ok(())
    }
}
