"""Bad input on the signalling WebSocket and on the media port ends only the offender: the call
of two SDK peers in the same room goes on, the server stays up."""
from __future__ import annotations

import os
import random
import socket
import struct
import time

import pytest

import harness
import lkproto
from harness import assert_joined, metric, tone_presence, video_delivery
from lkproto import lkrtc

ROOM = "!bad-input:example.org"
TONES = {"alice": 440.0, "bob": 660.0}
PEER_DURATION = 28.0
WINDOW_S = 16.0  # media is checked over this long from the first decoded frame; the abuse falls inside
MIN_RATIO = 0.90
MIN_TONE_S = 12.0
N_EACH = 1000  # datagrams of each kind
FLOOD_BATCH = 50  # datagrams per 50 ms: 1000/s, well under what the media thread reads
DROP_MARGIN = 30  # datagrams the kernel may lose on the way, out of 3 * N_EACH


def _raw_join(raw_ws, identity: str, room: str = ROOM) -> lkproto.SignalClient:
    sc, reply = raw_ws(lkproto.rtc_path(harness.make_token(identity, room)))
    assert sc is not None, f"{identity}: {reply.status_line} {reply.body[:300]!r}"
    assert sc.recv(5).WhichOneof("message") == "join"
    return sc


def _closed(sc: lkproto.SignalClient, what: str, timeout: float = 5.0) -> lkproto.WsClosed:
    try:
        return sc.ws.wait_closed(timeout)
    except TimeoutError:
        pytest.fail(f"{what}: the server did not close the connection within {timeout}s; got {sc.cases()}")


def _garbage_datagrams(rng: random.Random) -> list[bytes]:
    out = []
    for _ in range(N_EACH):  # random bytes, any first byte (STUN-, DTLS-, RTP-looking or none)
        out.append(rng.randbytes(rng.randint(1, 1200)))
    for i in range(N_EACH):  # STUN binding requests for a ufrag the server never handed out
        user = f"nosuch{i:04d}:peer{i:04d}".encode()
        attr = struct.pack("!HH", 0x0006, len(user)) + user + b"\0" * (-len(user) % 4)
        attr += struct.pack("!HH", 0x0008, 20) + rng.randbytes(20)  # MESSAGE-INTEGRITY (wrong)
        out.append(struct.pack("!HHI", 0x0001, len(attr), 0x2112A442) + rng.randbytes(12) + attr)
    for i in range(N_EACH):  # RTP (and RTCP-typed) headers with made-up SSRCs and a payload
        pt = rng.choice([96, 100, 111, 200 - 128, 201 - 128])
        out.append(struct.pack("!BBHII", 0x80, pt | (0x80 if i % 7 == 0 else 0), i, i * 960, rng.getrandbits(32))
                   + rng.randbytes(rng.randint(0, 1000)))
    rng.shuffle(out)
    return out


def _flood(netns: harness.Netns, datagrams: list[bytes]) -> tuple[float, float]:
    s = netns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((harness.PEER_IP, 0))
        t0 = time.time()
        for i in range(0, len(datagrams), FLOOD_BATCH):
            for d in datagrams[i:i + FLOOD_BATCH]:
                s.sendto(d, (harness.NODE_IP, 7882))
            time.sleep(0.05)
        return t0, time.time()
    finally:
        s.close()


def test_garbage_signalling_and_udp_flood_end_only_the_offender(server, peers, netns, raw_ws):
    ps = [peers(who, ROOM, duration=PEER_DURATION, tone=TONES[who], video=True) for who in ("alice", "bob")]
    server.wait_metrics({"switchboard_participants": 2, "switchboard_published_tracks": 4}, timeout=25)
    # the media check's window starts at each one's first decoded frame: abuse only after that
    for me, other in ((ps[0], "bob"), (ps[1], "alice")):
        me.wait_event("first_frame", 20, identity=other, kind="video")
    t_abuse = time.time()

    # (a) a binary frame that is not a SignalRequest: closed with 1007 and a reason
    m1 = _raw_join(raw_ws, "mallory-binary")
    m1.ws.send_binary(b"\xff\xfe\x00garbage" + os.urandom(64))
    c = _closed(m1, "garbage binary frame")
    assert c.code == 1007 and c.reason, c
    # (b) a text (JSON) frame: closed too
    m2 = _raw_join(raw_ws, "mallory-text")
    m2.ws.send_text('{"ping": "1"}')
    c = _closed(m2, "text frame")
    assert c.code == 1007 and c.reason, c
    server.wait_metrics({"switchboard_participants": 2}, timeout=5)

    # (d) garbage on the media port: every datagram dropped and counted
    before = metric(server.metrics(), "switchboard_dropped_datagrams_total")
    datagrams = _garbage_datagrams(random.Random(7882))
    f0, f1 = _flood(netns, datagrams)
    # the counter is read after the media thread has had time to go through its socket buffer
    deadline = time.monotonic() + 10
    while True:
        after = metric(server.metrics(), "switchboard_dropped_datagrams_total")
        if after - before >= len(datagrams) - DROP_MARGIN or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert after - before >= len(datagrams) - DROP_MARGIN, (
        f"dropped_datagrams_total rose by {after - before}, {len(datagrams)} garbage datagrams sent")
    assert server.alive(), "server died during the flood"
    m = server.metrics()
    assert metric(m, "switchboard_participants") == 2 and metric(m, "switchboard_published_tracks") == 4, m

    res = harness.wait_all(ps)
    for who in res:
        assert_joined(res[who], who)
    for me, other in (("alice", "bob"), ("bob", "alice")):
        v = video_delivery(res[me], res[other], other, WINDOW_S)
        assert v["ratio"] >= MIN_RATIO, f"{me} <- {other} video: {v}"
        # the abuse happened inside the window the media check covers
        t0 = res[me]["remote"][other]["video"]["counters"][0][1]
        assert t0 <= t_abuse and f1 <= t0 + WINDOW_S, (
            f"abuse {t_abuse - t0:.1f}..{f1 - t0:.1f}s after {me}'s first frame, outside the {WINDOW_S}s window")
        a = tone_presence(res[me], other, TONES[other])
        assert a["tone_seconds"] >= MIN_TONE_S, f"{me} <- {other} audio: {a}"
        early = [e for e in res[me]["events"] if e["type"] in ("disconnected", "reconnecting")
                 and e["t"] < res[me]["leaving"]]
        assert not early, f"{me}: {early}"
    server.wait_metrics({"switchboard_participants": 0, "switchboard_rooms": 0,
                         "switchboard_published_tracks": 0, "switchboard_sessions": 0}, timeout=10)


SMALL_CAP = 4096


def test_messages_over_the_size_cap_close_the_connection(start_server, raw_ws):
    server = start_server(env={"SWITCHBOARD_RTC__MAX_SIGNAL_MESSAGE_BYTES": str(SMALL_CAP)})
    bob = _raw_join(raw_ws, "bob")
    big = lkrtc.SignalRequest(update_metadata=lkrtc.UpdateParticipantMetadata(metadata="x" * 65536))
    small = lkrtc.SignalRequest(update_metadata=lkrtc.UpdateParticipantMetadata(metadata="x" * 1000))
    assert len(big.SerializeToString()) > 65536 and len(small.SerializeToString()) < SMALL_CAP

    # control: a message under the cap keeps the connection (pong after it)
    ok = _raw_join(raw_ws, "carol")
    ok.send(small)
    ok.send(lkrtc.SignalRequest(ping_req=lkrtc.Ping(timestamp=42)))
    assert ok.wait_for("pong_resp", 5).pong_resp.last_ping_timestamp == 42

    # one 64 KiB frame
    m1 = _raw_join(raw_ws, "mallory-frame")
    m1.send(big)
    c1 = _closed(m1, "64 KiB message in one frame")
    # the same 64 KiB in 2 KiB fragments (each frame under the cap, the message over it)
    m2 = _raw_join(raw_ws, "mallory-fragments")
    payload = big.SerializeToString()
    chunks = [payload[i:i + 2048] for i in range(0, len(payload), 2048)]
    try:
        for i, ch in enumerate(chunks):
            m2.ws.send_frame(lkproto.OP_BINARY if i == 0 else lkproto.OP_CONT, ch, fin=i == len(chunks) - 1)
    except OSError:
        pass  # the server may close (and reset) before the last fragment
    c2 = _closed(m2, "64 KiB message in 2 KiB fragments")
    for c in (c1, c2):  # a close frame with a reason, not just a dropped TCP connection
        assert c.code in (1007, 1009) and c.reason, c

    # the bystanders are still served, and see the offenders gone
    for sc in (bob, ok):
        sc.send(lkrtc.SignalRequest(ping_req=lkrtc.Ping(timestamp=7)))
        assert sc.wait_for("pong_resp", 5).pong_resp.last_ping_timestamp == 7
    server.wait_metrics({"switchboard_participants": 2}, timeout=5)
    assert server.alive()
