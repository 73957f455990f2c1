"""Data packets of many sizes through the SFU: reliable ones arrive whole and in order, also
in a burst; lossy ones mostly arrive."""
from __future__ import annotations

import hashlib

import harness
from harness import assert_joined, metric
from peer import sized_payload

# The Python SDK 1.2.1 refuses a DataPacket over 64000 bytes ("exceeds the negotiated maximum
# message size (64000 bytes)"); with topic "sized" its envelope is 45 bytes, so 63955 is the
# largest payload it sends. Small and large sizes are interleaved so order is tested too.
SDK_MAX_PAYLOAD = 63955
SIZES = [1, 15000, 10, 1000, 4096, 8000, 12000, 15000, 16384, 100, 30000, 60000, SDK_MAX_PAYLOAD, 2, 15000]
LOSSY = 100
MIN_LOSSY_SHARE = 0.8
# A burst: 1 MB as 70 back-to-back 15000-byte packets, the way LiveKit data streams chunk a file.
BURST = [15000] * 70


def test_reliable_packets_up_to_the_sdk_maximum_arrive_whole_and_in_order(server, peers):
    room = "!data-limits:example.org"
    receivers = [peers(who, room, duration=40, wait_for=["alice"], settle=0) for who in ("bob", "carol")]
    alice = peers("alice", room, duration=4, wait_for=["bob", "carol"], settle=2.0,
                  extra=["--send-sizes", ",".join(map(str, SIZES + [SDK_MAX_PAYLOAD + 1])),
                         "--send-lossy", str(LOSSY)])
    a = alice.wait()
    assert_joined(a, "alice")
    assert a.get("wait_for_done"), a.get("wait_for_error")
    refused = [e for e in a["sent_sized"] if e["error"]]
    # one byte more is the SDK's own limit (if this changes, so did the SDK: update SDK_MAX_PAYLOAD)
    assert [e["size"] for e in refused] == [SDK_MAX_PAYLOAD + 1], f"the SDK refused to send: {refused}"
    assert a.get("sent_lossy") == LOSSY, a.get("sent_lossy")
    for p in receivers:
        p.proc.terminate()
    res = harness.wait_all(receivers)
    want = [(len(sized_payload(i, n)), hashlib.sha256(sized_payload(i, n)).hexdigest()) for i, n in enumerate(SIZES)]
    for who in ("bob", "carol"):
        r = res[who]
        assert_joined(r, who)
        sized = [d for d in r["data"] if d["topic"] == "sized"]
        assert all(d["from"] == "alice" and d["kind"] == "KIND_RELIABLE" for d in sized), sized[:3]
        got = [(d["len"], d["sha256"]) for d in sized]
        assert [g[0] for g in got] == SIZES, f"{who}: sizes in arrival order {[g[0] for g in got]}, sent {SIZES}"
        assert got == want, f"{who}: payloads differ from what was sent (sizes match)"
        lossy = [d for d in r["data"] if d["topic"] == "lossy"]
        assert all(d["from"] == "alice" and d["kind"] == "KIND_LOSSY" for d in lossy), lossy[:3]
        idx = [int(d["payload"].split(":")[1]) for d in lossy]
        assert len(set(idx)) == len(idx), f"{who}: duplicated lossy packets"
        assert len(idx) >= MIN_LOSSY_SHARE * LOSSY, f"{who}: {len(idx)}/{LOSSY} lossy packets arrived"
    assert a["data"] == [], f"alice got packets back: {[d['topic'] for d in a['data']][:5]}"


def test_a_burst_of_one_megabyte_of_reliable_packets_arrives_complete_and_in_order(server, peers):
    room = "!data-burst:example.org"
    bob = peers("bob", room, duration=40, wait_for=["alice"], settle=0)
    alice = peers("alice", room, duration=4, wait_for=["bob"], settle=2.0,
                  extra=["--send-sizes", ",".join(map(str, BURST))])
    a = alice.wait()
    assert_joined(a, "alice")
    assert a.get("wait_for_done"), a.get("wait_for_error")
    assert not [e for e in a["sent_sized"] if e["error"]], a["sent_sized"]
    bob.proc.terminate()
    b = bob.wait()
    assert_joined(b, "bob")
    sized = [d for d in b["data"] if d["topic"] == "sized"]
    got = [(d["len"], d["sha256"]) for d in sized]
    want = [(len(sized_payload(i, n)), hashlib.sha256(sized_payload(i, n)).hexdigest()) for i, n in enumerate(BURST)]
    n_got = len(got)
    assert n_got == len(want), f"bob got {n_got} of {len(want)} reliable packets"
    assert got == want, "bob got all packets, but not the same bytes in the same order"
    assert metric(server.metrics(), "switchboard_data_dropped_messages_total") == 0
