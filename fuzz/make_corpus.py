#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target under fuzz/corpus/ (see docs/fuzzing.md).

MQTT seeds are what real clients send: mosquitto_pub and mosquitto_sub (MQTT 3.1.1 and 5)
talk to a minimal fake broker here, which answers CONNECT, SUBSCRIBE, PUBLISH and PUBREL and
records every byte the client sent. Payload seeds are ingest/tests/golden/, topic seeds the
topics of the default rules and the tests, routing seeds subscriptions, publishes and retained
messages around wildcards, empty levels, `$` topics and shared filters, rule seeds the rule
files in config/.

Run from anywhere: python3 fuzz/make_corpus.py   (needs mosquitto-clients)
"""

import hashlib
import os
import re
import socket
import subprocess
import threading

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
CORPUS = os.path.join(FUZZ, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- MQTT: a fake broker that records what a client sends --------------------------------

def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(buf, i):
    n, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        n += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def split_packets(buf):
    """Whole packets at the front of buf, and the rest."""
    packets, i = [], 0
    while i + 2 <= len(buf):
        try:
            length, body = read_varint(buf, i + 1)
        except IndexError:
            break
        if body + length > len(buf):
            break
        packets.append(buf[i:body + length])
        i = body + length
    return packets, buf[i:]


def body_of(packet):
    _, body = read_varint(packet, 1)
    return packet[body:]


def answer(packet, v5, publish_to_subscriber):
    kind = packet[0] >> 4
    body = body_of(packet)
    if kind == 1:  # CONNECT
        return b"\x20\x03\x00\x00\x00" if v5 else b"\x20\x02\x00\x00"
    if kind == 8:  # SUBSCRIBE: grant each filter QoS 0, then give the subscriber a message
        pkid, i = body[:2], 2
        if v5:
            plen, i = read_varint(body, i)
            i += plen
        n = 0
        while i < len(body):
            flen = int.from_bytes(body[i:i + 2], "big")
            i += 2 + flen + 1
            n += 1
        suback = pkid + (b"\x00" if v5 else b"") + b"\x00" * n
        out = b"\x90" + varint(len(suback)) + suback
        if publish_to_subscriber:
            topic = b"citizens/citizen-001/observations/heart_rate"
            pub = len(topic).to_bytes(2, "big") + topic + (b"\x00" if v5 else b"") + b"61.5"
            out += b"\x30" + varint(len(pub)) + pub
        return out
    if kind == 10:  # UNSUBSCRIBE
        return b"\xb0" + (b"\x03" + body[:2] + b"\x00" if v5 else b"\x02" + body[:2])
    if kind == 3:  # PUBLISH
        qos = (packet[0] >> 1) & 3
        if qos:
            tlen = int.from_bytes(body[:2], "big")
            pkid = body[2 + tlen:4 + tlen]
            return (b"\x40\x02" if qos == 1 else b"\x50\x02") + pkid
    if kind == 6:  # PUBREL
        return b"\x70\x02" + body[:2]
    if kind == 12:  # PINGREQ
        return b"\xd0\x00"
    return b""


def capture(args, v5, subscriber=False):
    """Everything the client run with `args` sends, as one byte string."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(10)
    port = server.getsockname()[1]
    sent = bytearray()

    def serve():
        try:
            conn, _ = server.accept()
        except socket.timeout:
            return
        conn.settimeout(5)
        pending = b""
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                sent.extend(chunk)
                packets, pending = split_packets(pending + chunk)
                for p in packets:
                    conn.sendall(answer(p, v5, subscriber))
                    if p[0] >> 4 == 14:
                        return
        except (socket.timeout, ConnectionError):
            pass
        finally:
            conn.close()

    t = threading.Thread(target=serve)
    t.start()
    subprocess.run(args + ["-h", "127.0.0.1", "-p", str(port)], check=False, timeout=20,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t.join()
    server.close()
    return bytes(sent)


def golden(profile, name):
    with open(os.path.join(ROOT, "ingest/tests/golden", profile, name), "rb") as f:
        data = f.read()
    if name.endswith(".pbhex"):
        return bytes.fromhex(data.decode().strip())
    return data.rstrip(b"\n")


def mqtt_seeds():
    bed = golden("bed-json-v1", "full.json").decode()
    pb = os.path.join(FUZZ, "target", "seed.pb")
    os.makedirs(os.path.dirname(pb), exist_ok=True)
    with open(pb, "wb") as f:
        f.write(golden("kenko-pb-v1", "bed_two_samples.pbhex"))
    pub, sub = ["mosquitto_pub"], ["mosquitto_sub"]
    v311, v5 = ["-V", "mqttv311"], ["-V", "5"]
    runs = {
        # MQTT 3.1.1
        "v311_telemetry_qos1": (pub + v311 + ["-i", "bed-001", "-u", "bed-001", "-P", "s3cret",
                                "-t", "devices/bed-001/telemetry", "-q", "1", "-m", bed], False),
        "v311_retained_qos2_will": (pub + v311 + ["-i", "writer-1", "-u", "writer", "-P", "pw",
                                    "-t", "public/r", "-q", "2", "-r", "-m", "hello",
                                    "--will-topic", "public/will", "--will-payload", "gone",
                                    "--will-qos", "1", "--will-retain", "-k", "30"], False),
        "v311_qos0_repeat": (pub + v311 + ["-t", "public/live", "-m", "x", "--repeat", "3",
                             "--repeat-delay", "0"], False),
        "v311_subscribe_persistent": (sub + v311 + ["-i", "app-001", "-c", "-q", "1", "-C", "1",
                                      "-t", "citizens/+/observations/#", "-t", "$SYS/#",
                                      "-t", "devices/+/errors"], True),
        "v311_unsubscribe": (sub + v311 + ["-i", "app-002", "-c", "-t", "a/b", "-U", "a/b",
                             "-C", "1"], True),
        "v31_mqisdp": (pub + ["-V", "mqttv31", "-t", "public/r", "-m", "old"], False),
        # MQTT 5
        "v5_telemetry_pb_props": (pub + v5 + ["-i", "bed-001", "-u", "bed-001", "-P", "s3cret",
                                  "-t", "devices/bed-001/telemetry/pb", "-q", "1", "-f", pb,
                                  "-D", "publish", "content-type", "application/x-protobuf",
                                  "-D", "publish", "user-property", "fw", "1.2",
                                  "-D", "publish", "message-expiry-interval", "60",
                                  "-D", "connect", "session-expiry-interval", "300",
                                  "-D", "connect", "receive-maximum", "10",
                                  "-D", "connect", "maximum-packet-size", "65536"], False),
        "v5_topic_alias": (pub + v5 + ["-t", "public/live", "-m", "x", "--repeat", "2",
                           "--repeat-delay", "0", "-D", "publish", "topic-alias", "1"], False),
        "v5_will_props_qos2": (pub + v5 + ["-t", "public/r", "-q", "2", "-m", "hello", "-r",
                               "--will-topic", "public/will", "--will-payload", "gone",
                               "-D", "will", "content-type", "text/plain",
                               "-D", "will", "user-property", "k", "v",
                               "-D", "will", "will-delay-interval", "5",
                               "-D", "publish", "response-topic", "public/reply",
                               "-D", "publish", "correlation-data", "c0ffee",
                               "-D", "publish", "payload-format-indicator", "1"], False),
        "v5_subscribe_options": (sub + v5 + ["-i", "clinic-1", "-q", "2", "-C", "1",
                                 "-t", "citizens/+/observations/+", "-t", "$share/g/a/#",
                                 "-D", "subscribe", "subscription-identifier", "7",
                                 "-D", "subscribe", "user-property", "k", "v"], True),
        "v5_unsubscribe": (sub + v5 + ["-i", "app-003", "-t", "a/b", "-U", "a/b", "-C", "1",
                           "-D", "unsubscribe", "user-property", "k", "v"], True),
    }
    streams = {}
    for name, (args, subscriber) in runs.items():
        data = capture(args, name.startswith("v5"), subscriber)
        if not data:
            raise SystemExit(f"{name}: the client sent nothing; is mosquitto-clients installed?")
        streams[name] = data
        write("mqtt_stream", name, data)
    # MQTT 5 subscription options mosquitto_sub cannot set: QoS 2, no local, retain as
    # published, retain handling 2; and 1 (send retained only for a new subscription).
    subscribe = (b"\x00\x0b" + b"\x03\x0b\x07"  # pkid 11, subscription identifier 7
                 + b"\x00\x03a/b" + bytes([0b0010_1110]) + b"\x00\x03c/#" + bytes([0b0001_0001]))
    connect = split_packets(streams["v5_unsubscribe"])[0][0]
    streams["v5_subscribe_all_options"] = connect + b"\x82" + varint(len(subscribe)) + subscribe
    write("mqtt_stream", "v5_subscribe_all_options", streams["v5_subscribe_all_options"])
    # mqtt_packets: a level byte (odd: MQTT 5), then what follows the CONNECT, and each packet
    # on its own.
    for name, data in streams.items():
        v5 = name.startswith("v5")
        level = b"\x05" if v5 else b"\x04"
        packets, _ = split_packets(data)
        write("mqtt_packets", name + "_after_connect", level + b"".join(packets[1:]))
        for p in packets:
            kind = p[0] >> 4
            write("mqtt_packets", f"{'v5' if v5 else 'v311'}_type{kind}_"
                  + hashlib.sha1(p).hexdigest()[:8], level + p)


# --- Payloads, topics, rules -----------------------------------------------------------

def profile_names():
    with open(os.path.join(ROOT, "config/profiles.toml")) as f:
        return sorted(re.findall(r'^name = "([^"]+)"', f.read(), re.M))


def payload_seeds():
    names = profile_names()
    for profile in sorted(os.listdir(os.path.join(ROOT, "ingest/tests/golden"))):
        index = names.index(profile)
        for name in sorted(os.listdir(os.path.join(ROOT, "ingest/tests/golden", profile))):
            if not (name.endswith(".json") or name.endswith(".pbhex")):
                continue
            data = golden(profile, name)
            stem = name.rsplit(".", 1)[0]
            # Flag, Asia/Tokyo; and reject with America/New_York.
            write("payload_decode", f"{profile}_{stem}", bytes([index]) + data)
            write("payload_decode", f"{profile}_{stem}_reject_ny", bytes([index | 0xC0]) + data)


TOPIC_SEEDS = [
    # pattern, filter, topic
    ("devices/%c/telemetry", "devices/+/telemetry", "devices/bed-001/telemetry"),
    ("devices/%c/telemetry/pb", "devices/bed-001/telemetry/pb", "devices/bed-001/telemetry/pb"),
    ("devices/%c/errors", "devices/%c/errors", "devices/bed-001/errors"),
    ("citizens/{citizen}/observations/+", "citizens/citizen-001/observations/+",
     "citizens/citizen-001/observations/heart_rate"),
    ("citizens/+/observations/+", "citizens/#", "citizens/c-9/observations/steps"),
    ("shared/+/observations/+", "shared/+/observations/#", "shared/p-1/observations/spo2"),
    ("$SYS/#", "$SYS/#", "$SYS/broker/uptime"),
    ("devices/+/errors", "+/+/errors", "devices/x/errors"),
    ("#", "#", "public/live"),
    ("public/#", "public/#", "public"),
    ("test/nosubscribe", "test/nosubscribe", "test/nosubscribe"),
    ("%u/inbox", "%u/inbox", "ops/inbox"),
    ("{device}/+", "+/+", "bed-001/"),
    ("a/#/b", "sport/tennis#", "sport/tennis/player1"),
    ("+", "$share/g/a/#", "a//b"),
    ("/+", "/#", "/finance"),
]


def topic_seeds():
    for i, (pattern, filt, topic) in enumerate(TOPIC_SEEDS):
        write("topics", f"seed{i:02}", f"{pattern}\n{filt}\n{topic}")


# The fragments of fuzz_targets/route_trie.rs, in its order.
ROUTE_FRAGMENTS = ["a", "b", "/", "/", "+", "#", "$", "$SYS", "c", "é", "\0", "x", "ab",
                   "$share/g/", "/", "+/"]
ROUTE_OPS = {"subscribe": 0, "unsubscribe": 1, "publish": 2, "retain": 3, "clear": 4,
             "take": 5}


def route_op(op, arg, *fragments):
    """One operation of route_trie: its kind, its argument, a string of fragments."""
    return bytes([ROUTE_OPS[op], arg, len(fragments)] +
                 [ROUTE_FRAGMENTS.index(f) for f in fragments])


ROUTE_SEEDS = {
    "wildcards": [
        ("subscribe", 1, "a", "/", "#"), ("subscribe", 2, "#"), ("subscribe", 3, "+", "/", "x"),
        ("subscribe", 0, "$SYS", "/", "#"), ("subscribe", 1, "+/", "+"),
        ("publish", 0, "a"), ("publish", 0, "$SYS", "/", "x"), ("publish", 0, "a", "/", "x"),
        ("publish", 0, "b", "/", "/", "c"), ("unsubscribe", 2, "#"), ("publish", 0, "a"),
    ],
    "empty_levels": [
        ("subscribe", 0, "a", "/", "/", "b"), ("subscribe", 1, "/", "a"),
        ("subscribe", 2, "a", "/"), ("subscribe", 3, "/", "+"),
        ("publish", 0, "a", "/", "/", "b"), ("publish", 0, "/", "a"), ("publish", 0, "a", "/"),
        ("publish", 0, "/"),
    ],
    "shared_and_invalid": [
        ("subscribe", 0, "$share/g/", "a", "/", "+"), ("subscribe", 1, "a", "#"),
        ("subscribe", 2, "#", "/", "a"), ("subscribe", 3, "a", "\0"),
        ("publish", 0, "a", "/", "b"), ("unsubscribe", 1, "a", "#"),
        ("unsubscribe", 0, "$share/g/", "a", "/", "+"), ("publish", 0, "é", "/", "x"),
    ],
    "retained": [
        ("retain", 7, "a"), ("retain", 8, "a", "/", "b"), ("retain", 9, "$SYS", "/", "x"),
        ("retain", 1, "a", "/", "/", "b"), ("take", 0, "#"), ("take", 0, "a", "/", "#"),
        ("take", 0, "+", "/", "+"), ("take", 0, "$SYS", "/", "+"), ("clear", 0, "a"),
        ("take", 0, "a", "/", "#"), ("retain", 2, "a", "+"), ("clear", 0, "a", "/", "b"),
    ],
}


def route_seeds():
    for name, ops in ROUTE_SEEDS.items():
        write("route_trie", name, b"".join(route_op(*op) for op in ops))


# The operations of fuzz_targets/router_ops.rs: a line's first byte picks the session (modulo
# 4) and the operation ((byte / 4) modulo 7); its high bits are the flags (clean start, keep,
# retain, QoS, subscription options).
ROUTER_OPS = ["attach", "detach", "end", "subscribe", "unsubscribe", "publish", "drain"]


def router_line(op, session, text="", high=0):
    """One line of router_ops: the first byte with `op` and `session` and as many of the
    `high` bits (0x80, 0x40, 0x20) as keep them, then the text."""
    want = ROUTER_OPS.index(op)
    for head in sorted(range(256), key=lambda b: -bin(b & high).count("1")):
        if head % 4 == session and (head // 4) % 7 == want:
            return bytes([head]) + text.encode()
    raise ValueError(op)


ROUTER_SEEDS = {
    "subscribe_publish_drain": [
        ("attach", 0), ("attach", 1), ("subscribe", 0, "a/+"), ("subscribe", 1, "a/#"),
        ("publish", 2, "a/b", 0x80), ("publish", 1, "a/c"), ("drain", 0), ("drain", 1, "", 0x80),
        ("unsubscribe", 0, "a/+"), ("detach", 0), ("detach", 1, "", 0x80),
    ],
    "shared_groups": [
        ("attach", 0), ("attach", 1), ("attach", 2), ("subscribe", 0, "$share/g/x/+"),
        ("subscribe", 1, "$share/g/x/+"), ("subscribe", 2, "$share/h/x/#"),
        ("publish", 3, "x/1", 0x40), ("publish", 3, "x/2", 0x40), ("detach", 0, "", 0x80),
        ("publish", 3, "x/3", 0x40), ("drain", 1), ("end", 0), ("publish", 3, "x/4"),
    ],
    "retained_and_dollar": [
        ("publish", 0, "$SYS/x", 0x80), ("publish", 0, "a", 0x80), ("publish", 0, "a//b", 0x80),
        ("attach", 1, "", 0x80), ("subscribe", 1, "#", 0x60), ("subscribe", 1, "$SYS/#"),
        ("subscribe", 1, "+/+/+", 0x20), ("drain", 1, "", 0x80), ("publish", 2, "é/x", 0x80),
        ("subscribe", 1, "é/#"), ("detach", 1, "", 0x80), ("attach", 1), ("end", 1),
    ],
    "invalid_filters": [
        ("attach", 0), ("subscribe", 0, "a/#/b"), ("subscribe", 0, "a+"),
        ("subscribe", 0, "$share/g"), ("subscribe", 0, "$share//x"), ("subscribe", 0, ""),
        ("unsubscribe", 0, "nothing/here"), ("publish", 1, "a/b"), ("detach", 0),
    ],
}


def router_seeds():
    for name, ops in ROUTER_SEEDS.items():
        write("router_ops", name, b"\n".join(router_line(*op) for op in ops))


def rule_seeds():
    for name in ["acl.default.toml", "interop-acl.toml"]:
        with open(os.path.join(ROOT, "config", name), "rb") as f:
            write("acl_rules", name, f.read())
    write("acl_rules", "tests_acl", """[[rule]]
effect = "allow"
role = "writer"
action = "publish"
topic = "public/#"

[[rule]]
effect = "deny"
principal = ["watcher", "ops"]
action = "subscribe"
topic = "public/r"
max_qos = 1

[[rule]]
effect = "allow"
role = ["peeker", "operator"]
action = "all"
topic = "#"
retain = false
""")
    write("acl_rules", "consent_and_placeholders", """# every key, every placeholder
[[rule]]
effect = "allow"
role = "care"
action = "subscribe"
topic = "citizens/+/observations/+"
consent = "care"

[[rule]]
effect = "allow"
principal = "lab"
action = "subscribe"
topic = "citizens/{citizen}/observations/%u"
consent = "research"
max_qos = 2

[[rule]]
effect = "deny"
action = "all"
topic = "devices/{device}/%c"
""")
    write("acl_rules", "broken_pattern", '[[rule]]\neffect = "allow"\naction = "publish"\n'
          'topic = "a/#/b"\n')
    write("acl_rules", "cases", '[[case]]\nprincipal = "bed-001"\n'
          'publish = "devices/bed-001/telemetry"\nqos = 1\nexpect = "allow"\n\n'
          '[[case]]\nprincipal = "p"\nsubscribe = "a/#"\nexpect = "deny"\n')


if __name__ == "__main__":
    mqtt_seeds()
    payload_seeds()
    topic_seeds()
    route_seeds()
    router_seeds()
    rule_seeds()
    for target in sorted(os.listdir(CORPUS)):
        print(target, len(os.listdir(os.path.join(CORPUS, target))))
