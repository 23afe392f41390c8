// Written for ironhub in the style of the vendored mqttbytes 0.6.0 v5 packets (which had no
// AUTH); Apache License 2.0 like the rest of this module (see ../LICENSE-mqttbytes).

use super::*;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// AUTH reason code (MQTT 5, 3.15.2.1)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AuthReasonCode {
    Success = 0x00,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
}

impl TryFrom<u8> for AuthReasonCode {
    type Error = Error;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            0x00 => Ok(Self::Success),
            0x18 => Ok(Self::ContinueAuthentication),
            0x19 => Ok(Self::ReAuthenticate),
            other => Err(Error::InvalidReason(other)),
        }
    }
}

/// AUTH properties
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthProperties {
    pub method: Option<String>,
    pub data: Option<Bytes>,
    pub reason: Option<String>,
    pub user_properties: Vec<(String, String)>,
}

/// Extended authentication exchange (MQTT 5 only)
#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    pub code: AuthReasonCode,
    pub properties: Option<AuthProperties>,
}

impl Auth {
    pub fn new(code: AuthReasonCode) -> Auth {
        Auth { code, properties: None }
    }

    fn len(&self) -> usize {
        match &self.properties {
            None if self.code == AuthReasonCode::Success => 0,
            None => 1,
            Some(properties) => {
                let properties_len = properties.len();
                1 + len_len(properties_len) + properties_len
            }
        }
    }

    pub fn read(fixed_header: FixedHeader, mut bytes: Bytes) -> Result<Self, Error> {
        bytes.advance(fixed_header.fixed_header_len);
        if !bytes.has_remaining() {
            return Ok(Auth::new(AuthReasonCode::Success));
        }
        let code = AuthReasonCode::try_from(read_u8(&mut bytes)?)?;
        // a reason code without properties (remaining length 1) means no properties
        let properties = if bytes.has_remaining() { AuthProperties::extract(&mut bytes)? } else { None };
        if bytes.has_remaining() {
            return Err(Error::MalformedPacket);
        }
        Ok(Auth { code, properties })
    }

    pub fn write(&self, buffer: &mut BytesMut) -> Result<usize, Error> {
        buffer.put_u8(0xF0);
        let len = self.len();
        let count = write_remaining_length(buffer, len)?;
        if len == 0 {
            return Ok(1 + count);
        }
        buffer.put_u8(self.code as u8);
        if let Some(properties) = &self.properties {
            properties.write(buffer)?;
        }
        Ok(1 + count + len)
    }
}

impl AuthProperties {
    fn len(&self) -> usize {
        let mut len = 0;
        if let Some(method) = &self.method {
            len += 1 + 2 + method.len();
        }
        if let Some(data) = &self.data {
            len += 1 + 2 + data.len();
        }
        if let Some(reason) = &self.reason {
            len += 1 + 2 + reason.len();
        }
        for (key, value) in self.user_properties.iter() {
            len += 1 + 2 + key.len() + 2 + value.len();
        }
        len
    }

    pub fn extract(bytes: &mut Bytes) -> Result<Option<AuthProperties>, Error> {
        let (properties_len_len, properties_len) = length(bytes.iter())?;
        bytes.advance(properties_len_len);
        let mut bytes = split_properties(bytes, properties_len)?;
        if properties_len == 0 {
            return Ok(None);
        }

        let mut properties = AuthProperties::default();
        while bytes.has_remaining() {
            let prop = read_u8(&mut bytes)?;
            match property(prop)? {
                PropertyType::AuthenticationMethod => {
                    set_once(&mut properties.method, read_mqtt_string(&mut bytes)?, prop)?
                }
                PropertyType::AuthenticationData => {
                    set_once(&mut properties.data, read_mqtt_bytes(&mut bytes)?, prop)?
                }
                PropertyType::ReasonString => {
                    set_once(&mut properties.reason, read_mqtt_string(&mut bytes)?, prop)?
                }
                PropertyType::UserProperty => {
                    let key = read_mqtt_string(&mut bytes)?;
                    let value = read_mqtt_string(&mut bytes)?;
                    properties.user_properties.push((key, value));
                }
                _ => return Err(Error::InvalidPropertyType(prop)),
            }
        }
        Ok(Some(properties))
    }

    fn write(&self, buffer: &mut BytesMut) -> Result<(), Error> {
        write_remaining_length(buffer, self.len())?;
        if let Some(method) = &self.method {
            buffer.put_u8(PropertyType::AuthenticationMethod as u8);
            write_mqtt_string(buffer, method)?;
        }
        if let Some(data) = &self.data {
            buffer.put_u8(PropertyType::AuthenticationData as u8);
            write_mqtt_bytes(buffer, data)?;
        }
        if let Some(reason) = &self.reason {
            buffer.put_u8(PropertyType::ReasonString as u8);
            write_mqtt_string(buffer, reason)?;
        }
        for (key, value) in self.user_properties.iter() {
            buffer.put_u8(PropertyType::UserProperty as u8);
            write_mqtt_string(buffer, key)?;
            write_mqtt_string(buffer, value)?;
        }
        Ok(())
    }
}
