//! MQTT: the wire codec. Sessions and connection handling will live beside it.

pub mod codec;
