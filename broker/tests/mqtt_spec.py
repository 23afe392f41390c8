#!/usr/bin/env python3
"""Spec-style MQTT tests against a running ironhub, with paho-mqtt (3.1.1 and 5) and raw sockets.

Usage: mqtt_spec.py PORT [TEST...]   (run by broker/tests/mqtt.rs; exits 1 if a test fails)
The server must run with `mqtt.deny_filters = ["secret/#"]` and `mqtt.max_packet_size = 16384`.
"""
import queue
import socket
import struct
import sys
import time
import traceback
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST, PORT = "127.0.0.1", int(sys.argv[1])
V5, V311 = mqtt.MQTTv5, mqtt.MQTTv311


def uid(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Client:
    def __init__(self, cid=None, proto=V5, clean=True, expiry=None, will=None, will_props=None,
                 keepalive=60, connect_props=None):
        self.msgs, self.discs, self.acks = queue.Queue(), queue.Queue(), queue.Queue()
        kw = {} if proto == V5 else {"clean_session": clean}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid or "", protocol=proto, **kw)
        self.c.on_message = lambda c, u, m: self.msgs.put(m)
        self.c.on_disconnect = lambda c, u, f, rc, p: self.discs.put(rc)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.acks.put(rcs)
        self.c.on_unsubscribe = lambda c, u, mid, rcs, p: self.acks.put(rcs)
        connacks = queue.Queue()
        self.c.on_connect = lambda c, u, f, rc, p: connacks.put((f, rc, p))
        if will:
            self.c.will_set(*will, properties=will_props)
        props = connect_props
        if proto == V5 and expiry is not None:
            props = props or Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = expiry
        if proto == V5:
            self.c.connect(HOST, PORT, keepalive, clean_start=clean, properties=props)
        else:
            self.c.connect(HOST, PORT, keepalive)
        self.c.loop_start()
        self.flags, self.rc, self.props = connacks.get(timeout=5)

    def sub(self, topic, qos=1, no_local=False, rap=False, rh=0, props=None):
        opts = SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=rap, retainHandling=rh)
        if self.c._protocol == V5:
            self.c.subscribe(topic, options=opts, properties=props)
        else:
            self.c.subscribe(topic, qos)
        return self.acks.get(timeout=5)

    def pub(self, topic, payload, qos=1, retain=False, props=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(5)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def get(self, timeout=5):
        return self.msgs.get(timeout=timeout)

    def nothing(self, wait=0.7):
        try:
            m = self.msgs.get(timeout=wait)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {m.topic}: {m.payload!r}")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def codes(rcs):
    return [rc.value if hasattr(rc, "value") else rc for rc in rcs]


# ---- raw MQTT for what clients will not send -------------------------------------------------

def varlen(n):
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def raw_connect(cid, keepalive=60, level=4, name="MQTT", will=None, v5props=b"", will_props=b"", clean=True):
    flags = 0x02 if clean else 0x00
    payload = mstr(cid)
    if will:
        flags |= 0x04 | (will[2] << 3)
        payload += (varlen(len(will_props)) + will_props if level == 5 else b"") + mstr(will[0]) + mstr(will[1])
    vh = mstr(name) + bytes([level, flags]) + struct.pack(">H", keepalive)
    if level == 5:
        vh += varlen(len(v5props)) + v5props
    body = vh + payload
    s = socket.create_connection((HOST, PORT), timeout=5)
    s.sendall(b"\x10" + varlen(len(body)) + body)
    ack = s.recv(64)
    assert ack[0] == 0x20, f"expected CONNACK, got {ack!r}"
    return s, ack


def closed(s, within):
    """True if the server closes `s` within `within` seconds (returns what it sent last)."""
    s.settimeout(within)
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return True, data
            data += chunk
    except socket.timeout:
        return False, data
    except ConnectionResetError:
        return True, data


# ---- tests -----------------------------------------------------------------------------------

def test_qos_round_trips():
    for proto in (V311, V5):
        for qos in (0, 1, 2):
            t = uid("rt")
            s = Client(proto=proto)
            assert codes(s.sub(t, qos)) == [qos]
            p = Client(proto=proto)
            p.pub(t, b"hello", qos=qos)
            m = s.get()
            assert (m.payload, m.qos) == (b"hello", qos), (m.payload, m.qos)
            s.close(), p.close()


def test_qos_is_downgraded_to_the_subscription():
    t = uid("down")
    s = Client()
    s.sub(t, 0)
    p = Client()
    p.pub(t, b"x", qos=2)
    assert s.get().qos == 0
    s.close(), p.close()


def test_retained_message_set_replaced_cleared():
    t = uid("ret")
    p = Client()
    p.pub(t, b"one", retain=True)
    p.pub(t, b"two", retain=True)
    s = Client()
    s.sub(t)
    m = s.get()
    assert (m.payload, m.retain) == (b"two", True)
    p.pub(t, b"", retain=True)
    s2 = Client()
    s2.sub(t)
    s2.nothing()
    for c in (p, s, s2):
        c.close()


def test_retained_with_wildcard_subscription():
    base = uid("retw")
    p = Client()
    p.pub(f"{base}/a", b"A", retain=True)
    p.pub(f"{base}/b/c", b"C", retain=True)
    s = Client()
    s.sub(f"{base}/#")
    got = sorted([s.get().payload, s.get().payload])
    assert got == [b"A", b"C"], got
    p.close(), s.close()


def test_retain_handling_and_retain_as_published():
    t = uid("rh")
    p = Client()
    p.pub(t, b"kept", retain=True)
    s = Client()
    s.sub(t, rh=2)
    s.nothing()
    s2 = Client()
    s2.sub(t, rh=1)
    assert s2.get().payload == b"kept"
    s2.sub(t, rh=1)  # existing subscription: not sent again
    s2.nothing()
    live = Client()
    live.sub(t, rap=True, rh=2)
    plain = Client()
    plain.sub(t, rh=2)
    p.pub(t, b"live", retain=True)
    assert live.get().retain is True
    assert plain.get().retain is False
    for c in (p, s, s2, live, plain):
        c.close()


def test_no_local():
    t = uid("nl")
    c = Client()
    c.sub(t, no_local=True)
    c.pub(t, b"mine")
    c.nothing()
    c.close()


def test_dollar_topics_are_not_matched_by_top_level_wildcards():
    t = "$" + uid("sys")
    hash_all = Client()
    hash_all.sub("#")
    plus = Client()
    plus.sub("+/x")
    direct = Client()
    direct.sub(f"{t}/#")
    p = Client()
    p.pub(f"{t}/x", b"d")
    assert direct.get().payload == b"d"
    for c in (hash_all, plus):
        while True:  # other tests' traffic may arrive on '#': none of it may be the $ topic
            try:
                m = c.msgs.get(timeout=0.5)
            except queue.Empty:
                break
            assert not m.topic.startswith("$"), m.topic
    for c in (hash_all, plus, direct, p):
        c.close()


def test_shared_subscription_delivers_each_message_to_one_member():
    t = uid("sh")
    members = [Client(), Client()]
    for m in members:
        m.sub(f"$share/g/{t}")
    q = Client()
    q.sub(f"$queue/{t}")
    p = Client()
    for i in range(10):
        p.pub(t, str(i).encode())
    got = []
    for m in members:
        while True:
            try:
                got.append(m.get(timeout=1).payload)
            except queue.Empty:
                break
    assert sorted(got) == sorted(str(i).encode() for i in range(10)), got
    assert all(not m.msgs.empty() or True for m in members)
    queued = []
    while True:
        try:
            queued.append(q.get(timeout=1).payload)
        except queue.Empty:
            break
    assert len(queued) == 10, queued
    for c in members + [q, p]:
        c.close()


def test_v5_message_properties_travel_in_order():
    t = uid("props")
    s = Client()
    s.sub(t, props=_sub_id(7))
    p = Client()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("b", "2"), ("a", "1"), ("b", "3")]
    props.ContentType = "text/plain"
    props.ResponseTopic = "reply/here"
    props.CorrelationData = b"\x01\x02"
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 3600
    p.pub(t, b"body", props=props)
    m = s.get()
    got = m.properties
    assert got.UserProperty == [("b", "2"), ("a", "1"), ("b", "3")], got.UserProperty
    assert got.ContentType == "text/plain" and got.ResponseTopic == "reply/here"
    assert got.CorrelationData == b"\x01\x02" and got.PayloadFormatIndicator == 1
    assert 3590 <= got.MessageExpiryInterval <= 3600
    assert got.SubscriptionIdentifier == [7], got.SubscriptionIdentifier
    s.close(), p.close()


def _sub_id(n):
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = n
    return props


def test_inbound_topic_alias():
    t = uid("alias")
    s = Client()
    s.sub(t)
    p = Client()
    first = Properties(PacketTypes.PUBLISH)
    first.TopicAlias = 3
    p.pub(t, b"1", props=first)
    again = Properties(PacketTypes.PUBLISH)
    again.TopicAlias = 3
    p.pub("", b"2", props=again)
    assert [s.get().topic, s.get().topic] == [t, t]
    s.close(), p.close()


def test_outbound_topic_alias_when_the_client_allows_it():
    t = uid("oalias")
    cp = Properties(PacketTypes.CONNECT)
    cp.TopicAliasMaximum = 5
    s = Client(connect_props=cp)
    s.sub(t)
    p = Client()
    p.pub(t, b"1")
    p.pub(t, b"2")
    a, b = s.get(), s.get()
    # the second PUBLISH carries only the alias the first one set (paho does not resolve it)
    assert a.topic == t and b.topic == "", (a.topic, b.topic)
    assert a.properties.TopicAlias == b.properties.TopicAlias >= 1
    s.close(), p.close()


def test_messages_larger_than_the_clients_maximum_packet_size_are_dropped():
    t = uid("maxout")
    cp = Properties(PacketTypes.CONNECT)
    cp.MaximumPacketSize = 200
    s = Client(connect_props=cp)
    s.sub(t)
    p = Client()
    p.pub(t, b"x" * 500)
    p.pub(t, b"small")
    assert s.get().payload == b"small"
    s.nothing()
    s.close(), p.close()


def test_server_assigned_client_id_and_response_information():
    cp = Properties(PacketTypes.CONNECT)
    cp.RequestResponseInformation = 1
    c = Client(cid="", connect_props=cp)
    assert c.props.AssignedClientIdentifier.startswith("ironhub-")
    assert c.props.ResponseInformation
    assert c.props.ReceiveMaximum == 128 and c.props.MaximumPacketSize == 16384
    c.close()


def test_session_takeover_disconnects_the_old_connection_with_0x8e():
    cid = uid("take")
    a = Client(cid)
    b = Client(cid)
    rc = a.discs.get(timeout=5)
    assert getattr(rc, "value", rc) == 0x8E, rc
    b.close()
    a.c.loop_stop()


def test_persistent_session_queues_while_offline_v311_and_v5():
    for proto in (V311, V5):
        cid, t = uid("ps"), uid("pst")
        s = Client(cid, proto=proto, clean=False, expiry=3600)
        s.sub(t, 1)
        s.close()
        p = Client()
        for i in range(20):
            p.pub(t, f"m{i}".encode())
        s = Client(cid, proto=proto, clean=False, expiry=3600)
        assert s.flags.session_present
        got = [s.get().payload for _ in range(20)]
        assert got == [f"m{i}".encode() for i in range(20)], got
        s.close(), p.close()
        clean = Client(cid, proto=proto, clean=True, expiry=0)
        assert not clean.flags.session_present
        clean.close()


def test_message_expiry_drops_stale_queued_messages():
    cid, t = uid("exp"), uid("expt")
    s = Client(cid, clean=False, expiry=3600)
    s.sub(t)
    s.close()
    p = Client()
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 1
    p.pub(t, b"short", props=props)
    p.pub(t, b"long")
    time.sleep(2.2)
    s = Client(cid, clean=False, expiry=3600)
    assert s.get().payload == b"long"
    s.nothing()
    s.close(), p.close()


def test_will_fires_when_the_connection_breaks_not_on_disconnect():
    t = uid("will")
    w = Client()
    w.sub(t)
    sock, _ = raw_connect(uid("w1"), will=(t, b"broken", 1))
    sock.close()
    assert w.get().payload == b"broken"
    polite = Client(uid("w2"), will=(t, b"never", 1))
    polite.close()
    w.nothing(1.0)
    # v5 DISCONNECT 0x04 asks for the will
    asked = Client(uid("w3"), will=(t, b"asked", 1))
    asked.c.disconnect(reasoncode=mqtt.ReasonCode(PacketTypes.DISCONNECT, identifier=4))
    assert w.get().payload == b"asked"
    w.close()


def test_will_delay_and_reconnect_cancels_it():
    t = uid("wd")
    w = Client()
    w.sub(t)
    expiry = b"\x11" + struct.pack(">I", 60)  # session expiry 60 s
    delay = b"\x18" + struct.pack(">I", 2)  # will delay 2 s
    cid = uid("wdc")
    a, _ = raw_connect(cid, level=5, will=(t, b"late", 1), v5props=expiry, will_props=delay, clean=False)
    a.close()
    time.sleep(0.5)
    b, ack = raw_connect(cid, level=5, v5props=expiry, clean=False)
    assert ack[2] & 1 == 1, "session present"
    w.nothing(3.0)  # reconnected within the delay: no will
    b.close()
    c, _ = raw_connect(uid("wde"), level=5, will=(t, b"late", 1), v5props=expiry, will_props=delay, clean=False)
    start = time.time()
    c.close()
    assert w.get(timeout=8).payload == b"late"
    assert time.time() - start >= 1.5, "the will waited for its delay"
    w.close()


def test_deny_list_refuses_subscriptions():
    s5 = Client()
    assert codes(s5.sub("secret/x")) == [0x87]
    assert codes(s5.sub("open/x")) == [1]
    s3 = Client(proto=V311)
    assert codes(s3.sub("secret/#")) == [0x80]
    s5.close(), s3.close()


def test_mqtt_3_1_mqisdp_connects():
    sock, ack = raw_connect(uid("v31"), level=3, name="MQIsdp")
    assert ack[:4] == b"\x20\x02\x00\x00", ack
    sock.close()


def test_malformed_packet_closes_only_that_connection():
    bystander = Client()
    t = uid("mal")
    bystander.sub(t)
    sock, _ = raw_connect(uid("bad"))
    sock.sendall(b"\x82\x04\x00\x01\x00\x00")  # SUBSCRIBE whose only filter is empty and has no options
    is_closed, _ = closed(sock, 3)
    assert is_closed
    p = Client()
    p.pub(t, b"still here")
    assert bystander.get().payload == b"still here"
    bystander.close(), p.close()


def test_v5_malformed_gets_a_disconnect_with_a_reason():
    sock, _ = raw_connect(uid("bad5"), level=5)
    # PUBLISH QoS 1 whose topic contains a wildcard: malformed/invalid topic name
    topic = mstr("a/+")
    body = topic + b"\x00\x01" + b"\x00" + b"x"
    sock.sendall(b"\x32" + varlen(len(body)) + body)
    is_closed, data = closed(sock, 3)
    assert is_closed
    assert data[:1] == b"\xe0" and data[2] >= 0x80, data


def test_packet_too_large_is_refused():
    sock, _ = raw_connect(uid("big"), level=5)
    body = mstr("big") + b"\x00" + b"x" * 20000
    sock.sendall(b"\x30" + varlen(len(body)) + body)
    is_closed, data = closed(sock, 3)
    assert is_closed and data[:1] == b"\xe0" and data[2] == 0x95, data


def test_receive_maximum_exceeded_is_0x93():
    sock, _ = raw_connect(uid("rm"), level=5)
    packets = b""
    for i in range(1, 401):
        body = mstr("rm/t") + struct.pack(">H", i) + b"\x00" + b"x"
        packets += b"\x32" + varlen(len(body)) + body
    sock.sendall(packets)
    is_closed, data = closed(sock, 5)
    assert is_closed and b"\xe0" in data, data[-16:]
    at = data.rindex(b"\xe0")
    assert data[at + 2] == 0x93, data[at:]


def test_keepalive_timeout_closes_after_one_and_a_half_times():
    sock, _ = raw_connect(uid("ka"), keepalive=1)
    start = time.time()
    is_closed, _ = closed(sock, 5)
    took = time.time() - start
    assert is_closed and 1.2 <= took <= 3.0, took


def test_unsubscribe_reports_what_existed():
    t = uid("uns")
    c = Client()
    c.sub(t)
    c.c.unsubscribe([t, "never/subscribed"])
    assert codes(c.acks.get(timeout=5)) == [0x00, 0x11]
    p = Client()
    p.pub(t, b"x")
    c.nothing()
    c.close(), p.close()


def main():
    selected = sys.argv[2:]
    tests = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_") and callable(f)]
    failed = 0
    for name, fn in tests:
        if selected and name not in selected:
            continue
        start = time.time()
        try:
            fn()
            print(f"PASS {name} ({time.time() - start:.1f}s)", flush=True)
        except Exception:
            failed += 1
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
    print(f"{failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
