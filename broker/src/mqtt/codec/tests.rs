//! Golden tests (exact bytes in, exact packet or error out) for every defect fixed in the
//! vendored mqttbytes, round trips of every packet type, and a no-panic/no-desync property.

use super::*;
use bytes::Bytes;
use proptest::prelude::*;

const MAX: usize = 1024;

fn decode(protocol: Protocol, bytes: &[u8]) -> (Result<Option<Packet>, Error>, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let result = read(&mut buf, protocol, MAX);
    (result, buf)
}

fn decode_one(protocol: Protocol, bytes: &[u8]) -> Result<Packet, Error> {
    let (result, rest) = decode(protocol, bytes);
    assert!(rest.is_empty() || result.is_err(), "left {rest:?}");
    result.map(|p| p.expect("a complete frame"))
}

fn encode(packet: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let n = write(packet, &mut buf).unwrap();
    assert_eq!(n, buf.len(), "write returns the bytes written for {packet:?}");
    buf.to_vec()
}

fn v5_disconnect(reason_code: v5::DisconnectReasonCode) -> Packet {
    Packet::V5(v5::Packet::Disconnect(v5::Disconnect { reason_code, properties: None }))
}

// --- v5 DISCONNECT with remaining length 0 or 1 ---------------------------------------------

#[test]
fn v5_disconnect_with_remaining_length_0_is_a_normal_disconnect() {
    let (result, rest) = decode(Protocol::V5, &[0xE0, 0x00, 0xC0, 0x00]);
    assert_eq!(result, Ok(Some(v5_disconnect(v5::DisconnectReasonCode::NormalDisconnection))));
    assert_eq!(&rest[..], &[0xC0, 0x00]);
    assert_eq!(encode(&v5_disconnect(v5::DisconnectReasonCode::NormalDisconnection)), [0xE0, 0x00]);
}

#[test]
fn v5_disconnect_with_remaining_length_1_decodes_and_keeps_the_stream_in_sync() {
    let mut buf = BytesMut::from(&[0xE0, 0x01, 0x04, 0xC0, 0x00][..]);
    let first = read(&mut buf, Protocol::V5, MAX);
    assert_eq!(first, Ok(Some(v5_disconnect(v5::DisconnectReasonCode::DisconnectWithWillMessage))));
    assert_eq!(read(&mut buf, Protocol::V5, MAX), Ok(Some(Packet::V5(v5::Packet::PingReq))));
    assert!(buf.is_empty());
    assert_eq!(
        encode(&v5_disconnect(v5::DisconnectReasonCode::DisconnectWithWillMessage)),
        [0xE0, 0x01, 0x04]
    );
}

// --- AUTH -----------------------------------------------------------------------------------

#[test]
fn v5_auth_decodes_and_encodes() {
    let bytes = [
        0xF0, 0x0F, 0x18, 0x0D, 0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', 0x16, 0x00, 0x02, 0xAB, 0xCD,
    ];
    let expected = Packet::V5(v5::Packet::Auth(v5::Auth {
        code: v5::AuthReasonCode::ContinueAuthentication,
        properties: Some(v5::AuthProperties {
            method: Some("SCRAM".into()),
            data: Some(Bytes::from_static(&[0xAB, 0xCD])),
            reason: None,
            user_properties: vec![],
        }),
    }));
    assert_eq!(decode_one(Protocol::V5, &bytes), Ok(expected.clone()));
    assert_eq!(encode(&expected), bytes);

    let empty = Packet::V5(v5::Packet::Auth(v5::Auth::new(v5::AuthReasonCode::Success)));
    assert_eq!(decode_one(Protocol::V5, &[0xF0, 0x00]), Ok(empty.clone()));
    assert_eq!(encode(&empty), [0xF0, 0x00]);
    let reauth = v5::Auth::new(v5::AuthReasonCode::ReAuthenticate);
    assert_eq!(decode_one(Protocol::V5, &[0xF0, 0x01, 0x19]), Ok(Packet::V5(v5::Packet::Auth(reauth))));
}

#[test]
fn auth_is_not_an_mqtt_3_packet() {
    assert_eq!(decode_one(Protocol::V4, &[0xF0, 0x00]), Err(Error::InvalidPacketType(15)));
}

// --- CONNECT: MQTT 3.1 and binary passwords ----------------------------------------------------

const CONNECT_31: [u8; 26] = [
    0x10, 0x18, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0xC2, 0x00, 0x3C, 0x00, 0x02, b'c',
    b'1', 0x00, 0x01, b'u', 0x00, 0x03, 0xFF, 0x00, 0xFE,
];

#[test]
fn connect_accepts_mqtt_3_1_with_a_binary_password() {
    let expected = Packet::V4(v4::Packet::Connect(v4::Connect {
        protocol: Protocol::V3,
        keep_alive: 60,
        client_id: "c1".into(),
        clean_session: true,
        last_will: None,
        username: Some("u".into()),
        password: Some(Bytes::from_static(&[0xFF, 0x00, 0xFE])),
    }));
    // whatever the connection assumed so far, a CONNECT is decoded by its own level
    for assumed in [Protocol::V3, Protocol::V4, Protocol::V5] {
        assert_eq!(decode_one(assumed, &CONNECT_31), Ok(expected.clone()));
    }
    assert_eq!(expected.protocol(), Protocol::V3);
    assert_eq!(encode(&expected), CONNECT_31);
}

#[test]
fn v5_connect_accepts_a_binary_password_without_username() {
    let bytes = [
        0x10, 0x13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x42, 0x00, 0x3C, 0x00, 0x00, 0x02, b'c', b'1',
        0x00, 0x02, 0xFF, 0xFE,
    ];
    let mut connect = v5::Connect::new("c1");
    connect.keep_alive = 60;
    connect.login = Some(v5::Login { username: None, password: Some(Bytes::from_static(&[0xFF, 0xFE])) });
    let expected = Packet::V5(v5::Packet::Connect(connect));
    assert_eq!(decode_one(Protocol::V4, &bytes), Ok(expected.clone()));
    assert_eq!(encode(&expected), bytes);
}

// --- malformed packets that mqttbytes accepted -------------------------------------------------

#[test]
fn subscribe_with_wrong_fixed_header_flags_is_rejected() {
    let ok = [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00];
    assert!(decode_one(Protocol::V4, &ok).is_ok());
    let mut bad = ok;
    bad[0] = 0x80;
    assert_eq!(decode_one(Protocol::V4, &bad), Err(Error::InvalidFixedHeaderFlags(0x80)));
    assert_eq!(
        decode_one(Protocol::V5, &[0x80, 0x07, 0, 1, 0, 0, 1, b'a', 0]),
        Err(Error::InvalidFixedHeaderFlags(0x80))
    );
}

#[test]
fn subscribe_without_filters_is_rejected() {
    assert_eq!(decode_one(Protocol::V4, &[0x82, 0x02, 0x00, 0x01]), Err(Error::EmptySubscription));
    assert_eq!(decode_one(Protocol::V5, &[0x82, 0x03, 0x00, 0x01, 0x00]), Err(Error::EmptySubscription));
    assert_eq!(decode_one(Protocol::V4, &[0xA2, 0x02, 0x00, 0x01]), Err(Error::EmptySubscription));
}

#[test]
fn publish_topic_with_wildcards_is_rejected() {
    assert_eq!(
        decode_one(Protocol::V4, &[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'+']),
        Err(Error::InvalidTopic)
    );
    assert_eq!(
        decode_one(Protocol::V4, &[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'#']),
        Err(Error::InvalidTopic)
    );
    assert_eq!(
        decode_one(Protocol::V5, &[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'#', 0x00]),
        Err(Error::InvalidTopic)
    );
}

const CONNECT_311_HEAD: [u8; 12] = [0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C];

fn connect_311(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = CONNECT_311_HEAD.to_vec();
    bytes[1] = (10 + payload.len()) as u8;
    bytes[9] = flags;
    bytes.extend_from_slice(payload);
    bytes
}

#[test]
fn connect_with_the_reserved_flag_is_rejected() {
    let client_id = [0x00, 0x01, b'c'];
    assert!(decode_one(Protocol::V4, &connect_311(0x02, &client_id)).is_ok());
    assert_eq!(decode_one(Protocol::V4, &connect_311(0x03, &client_id)), Err(Error::ReservedConnectFlag));
}

#[test]
fn mqtt_3_1_1_connect_with_a_password_but_no_username_is_rejected() {
    let payload = [0x00, 0x01, b'c', 0x00, 0x01, b'p'];
    assert_eq!(decode_one(Protocol::V4, &connect_311(0x42, &payload)), Err(Error::PasswordWithoutUsername));
}

#[test]
fn duplicated_v5_properties_are_a_protocol_error() {
    // PUBLISH "t" with Message Expiry Interval twice
    let bytes = [0x30, 0x0E, 0x00, 0x01, b't', 0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2];
    let err = decode_one(Protocol::V5, &bytes).unwrap_err();
    assert_eq!(err, Error::DuplicateProperty(0x02));
    assert_eq!(err.reason_code(), 0x82);
    // user properties may repeat
    let bytes = [0x30, 0x10, 0x00, 0x01, b't', 0x0C, 0x26, 0, 1, b'k', 0, 0, 0x26, 0, 1, b'k', 0, 0];
    assert!(decode_one(Protocol::V5, &bytes).is_ok());
}

#[test]
fn subscription_identifier_0_is_rejected() {
    let bytes = [0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, b'a', 0x00];
    let err = decode_one(Protocol::V5, &bytes).unwrap_err();
    assert_eq!(err, Error::SubscriptionIdZero);
    assert_eq!(err.reason_code(), 0x82);
    let publish = [0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x0B, 0x00];
    assert_eq!(decode_one(Protocol::V5, &publish), Err(Error::SubscriptionIdZero));
}

#[test]
fn reserved_subscription_option_bits_are_rejected() {
    let v5 = [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0xC1];
    assert_eq!(decode_one(Protocol::V5, &v5), Err(Error::ReservedSubscriptionOptions(0xC1)));
    let v4 = [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04];
    assert_eq!(decode_one(Protocol::V4, &v4), Err(Error::ReservedSubscriptionOptions(0x04)));
}

// --- framing: max_size on the whole packet, checked before the body ----------------------------

#[test]
fn max_size_counts_the_whole_packet() {
    // 2-byte fixed header + 8-byte body = 10 bytes
    let bytes = [0x30, 0x08, 0x00, 0x01, b't', 1, 2, 3, 4, 5];
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(read(&mut buf, Protocol::V4, 9), Err(Error::PacketTooLarge { size: 10, max: 9 }));
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(read(&mut buf, Protocol::V4, 10), Ok(Some(_))));
    assert_eq!(Error::PacketTooLarge { size: 10, max: 9 }.reason_code(), 0x95);
}

#[test]
fn oversize_is_reported_from_the_fixed_header_alone() {
    // announces 16,384 bytes of body; only the fixed header has arrived
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x01][..]);
    assert_eq!(read(&mut buf, Protocol::V4, MAX), Err(Error::PacketTooLarge { size: 16_388, max: MAX }));
}

#[test]
fn an_incomplete_frame_is_none_and_consumes_nothing() {
    for bytes in [&[][..], &[0x30], &[0x30, 0x80], &[0x30, 0x05, 0x00, 0x03, b'a']] {
        let (result, rest) = decode(Protocol::V4, bytes);
        assert_eq!(result, Ok(None));
        assert_eq!(&rest[..], bytes);
    }
}

#[test]
fn a_body_that_ends_early_is_malformed_not_need_more_bytes() {
    // v5 PUBACK whose property length is an unfinished variable byte integer
    let (result, rest) = decode(Protocol::V5, &[0x40, 0x04, 0x00, 0x01, 0x00, 0x80, 0xC0, 0x00]);
    let err = result.unwrap_err();
    assert_eq!(err, Error::MalformedPacket);
    assert_eq!(err.reason_code(), 0x81);
    assert_eq!(&rest[..], &[0xC0, 0x00], "the bad frame is consumed, the next one is intact");
    // a topic length that points past the frame
    assert_eq!(decode(Protocol::V4, &[0x30, 0x02, 0x00, 0x05]).0, Err(Error::BoundaryCrossed(5)));
    // a property that runs past the property length
    let bytes = [0x30, 0x09, 0x00, 0x01, b't', 0x02, 0x02, 0, 0, 0, 1];
    assert_eq!(decode_one(Protocol::V5, &bytes), Err(Error::MalformedPacket));
}

#[test]
fn a_five_byte_remaining_length_is_malformed() {
    let (result, _) = decode(Protocol::V4, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
    assert_eq!(result, Err(Error::MalformedRemainingLength));
}

// --- round trips of every packet type ---------------------------------------------------------

fn samples() -> Vec<Packet> {
    use v4::Packet as P4;
    use v5::Packet as P5;
    let mut connect4 = v4::Connect::new("dev-1");
    connect4.last_will = Some(v4::LastWill::new("will/t", "bye", QoS::AtLeastOnce, true));
    connect4.username = Some("user".into());
    connect4.password = Some(Bytes::from_static(b"\x00pw"));
    let mut publish4 = v4::Publish::new("a/b", QoS::ExactlyOnce, "hello");
    publish4.pkid = 7;
    publish4.retain = true;
    let mut subscribe4 = v4::Subscribe::new("a/+", QoS::AtLeastOnce);
    subscribe4.pkid = 3;
    subscribe4.add("b/#".into(), QoS::ExactlyOnce);
    let suback4 = v4::SubAck::new(
        3,
        vec![v4::SubscribeReasonCode::Success(QoS::AtLeastOnce), v4::SubscribeReasonCode::Failure],
    );
    let mut unsubscribe4 = v4::Unsubscribe::new("a/+");
    unsubscribe4.pkid = 4;

    let mut connect5 = v5::Connect::new("dev-2");
    connect5.set_login("user", Bytes::from_static(b"pw"));
    let mut will5 = v5::LastWill::new("will/t", "bye", QoS::ExactlyOnce, false);
    will5.properties = Some(v5::WillProperties {
        delay_interval: Some(5),
        payload_format_indicator: Some(1),
        message_expiry_interval: None,
        content_type: Some("text/plain".into()),
        response_topic: None,
        correlation_data: Some(Bytes::from_static(b"c")),
        user_properties: vec![("k".into(), "v".into())],
    });
    connect5.last_will = Some(will5);
    let mut publish5 = v5::Publish::new("a/b", QoS::AtLeastOnce, "hello");
    publish5.pkid = 9;
    publish5.properties = Some(v5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: None,
        response_topic: Some("r/t".into()),
        correlation_data: None,
        user_properties: vec![("k".into(), "v".into())],
        subscription_identifiers: vec![1, 300],
        content_type: None,
    });
    let mut subscribe5 = v5::Subscribe::new("a/+", QoS::AtLeastOnce);
    subscribe5.pkid = 5;
    subscribe5.properties = Some(v5::SubscribeProperties { id: Some(42), user_properties: vec![] });
    let mut filter = v5::SubscribeFilter::new("$share/g/x".into(), QoS::ExactlyOnce);
    filter.set_nolocal(true).set_preserve_retain(true).set_retain_forward_rule(v5::RetainForwardRule::Never);
    subscribe5.filters.push(filter);
    let mut unsubscribe5 = v5::Unsubscribe::new("a/+");
    unsubscribe5.pkid = 6;
    let mut puback5 = v5::PubAck::new(9);
    puback5.reason = v5::PubAckReason::NoMatchingSubscribers;
    let mut disconnect5 = v5::Disconnect::new();
    disconnect5.reason_code = v5::DisconnectReasonCode::ServerShuttingDown;
    disconnect5.properties = Some(v5::DisconnectProperties {
        session_expiry_interval: Some(0),
        reason_string: Some("bye".into()),
        user_properties: vec![],
        server_reference: None,
    });

    vec![
        Packet::V4(P4::Connect(connect4)),
        Packet::V4(P4::ConnAck(v4::ConnAck::new(v4::ConnectReturnCode::Success, true))),
        Packet::V4(P4::Publish(publish4)),
        Packet::V4(P4::Publish(v4::Publish::new("a", QoS::AtMostOnce, vec![]))),
        Packet::V4(P4::PubAck(v4::PubAck::new(7))),
        Packet::V4(P4::PubRec(v4::PubRec::new(7))),
        Packet::V4(P4::PubRel(v4::PubRel::new(7))),
        Packet::V4(P4::PubComp(v4::PubComp::new(7))),
        Packet::V4(P4::Subscribe(subscribe4)),
        Packet::V4(P4::SubAck(suback4)),
        Packet::V4(P4::Unsubscribe(unsubscribe4)),
        Packet::V4(P4::UnsubAck(v4::UnsubAck::new(4))),
        Packet::V4(P4::PingReq),
        Packet::V4(P4::PingResp),
        Packet::V4(P4::Disconnect),
        Packet::V5(P5::Connect(connect5)),
        Packet::V5(P5::ConnAck(v5::ConnAck::new(v5::ConnectReturnCode::Success, false))),
        Packet::V5(P5::Publish(publish5)),
        Packet::V5(P5::PubAck(puback5)),
        Packet::V5(P5::PubRec(v5::PubRec::new(9))),
        Packet::V5(P5::PubRel(v5::PubRel::new(9))),
        Packet::V5(P5::PubComp(v5::PubComp::new(9))),
        Packet::V5(P5::Subscribe(subscribe5)),
        Packet::V5(P5::SubAck(v5::SubAck::new(5, vec![v5::SubscribeReasonCode::QoS1]))),
        Packet::V5(P5::Unsubscribe(unsubscribe5)),
        Packet::V5(P5::UnsubAck(v5::UnsubAck {
            pkid: 6,
            reasons: vec![v5::UnsubAckReason::Success, v5::UnsubAckReason::NoSubscriptionExisted],
            properties: None,
        })),
        Packet::V5(P5::PingReq),
        Packet::V5(P5::PingResp),
        Packet::V5(P5::Disconnect(disconnect5)),
        Packet::V5(P5::Auth(v5::Auth::new(v5::AuthReasonCode::ReAuthenticate))),
    ]
}

fn protocol_of(packet: &Packet) -> Protocol {
    match packet {
        Packet::V4(_) => Protocol::V4,
        Packet::V5(_) => Protocol::V5,
    }
}

#[test]
fn every_packet_type_of_both_versions_round_trips() {
    for packet in samples() {
        let bytes = encode(&packet);
        assert_eq!(decode_one(protocol_of(&packet), &bytes), Ok(packet.clone()), "{bytes:02x?}");
    }
}

// --- no panic, no desync -------------------------------------------------------------------------

/// Decodes `bytes` to the end; every decoded packet must re-encode to a packet that decodes
/// to itself, `Ok(None)` must consume nothing.
fn check_stream(protocol: Protocol, bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    loop {
        let before = buf.clone();
        match read(&mut buf, protocol, MAX) {
            Ok(None) => {
                prop_assert_eq!(&buf, &before);
                return Ok(());
            }
            Ok(Some(packet)) => {
                prop_assert!(buf.len() < before.len());
                let mut out = BytesMut::new();
                let written = write(&packet, &mut out);
                prop_assert!(written.is_ok(), "{:?} does not encode: {:?}", packet, written);
                let again = read(&mut out, protocol_of(&packet), usize::MAX);
                prop_assert_eq!(again, Ok(Some(packet)));
                prop_assert!(out.is_empty());
            }
            Err(_) => return Ok(()),
        }
    }
}

fn mutated_sample() -> impl Strategy<Value = (Protocol, Vec<u8>)> {
    let encoded: Vec<(Protocol, Vec<u8>)> = samples().iter().map(|p| (protocol_of(p), encode(p))).collect();
    (
        proptest::sample::select(encoded),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        any::<usize>(),
    )
        .prop_map(|((protocol, mut bytes), flips, cut)| {
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            (protocol, bytes)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_or_desync(
        protocol in prop_oneof![Just(Protocol::V4), Just(Protocol::V5)],
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        check_stream(protocol, &bytes)?;
    }

    #[test]
    fn mutated_packets_never_panic_or_desync((protocol, bytes) in mutated_sample()) {
        check_stream(protocol, &bytes)?;
        let mut twice = bytes.clone();
        twice.extend_from_slice(&bytes);
        check_stream(protocol, &twice)?;
    }
}
