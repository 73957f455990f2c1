"""Data packets through the SFU (acceptance item 5)."""
from __future__ import annotations

import harness
from harness import assert_joined

N = 50


def test_reliable_data_in_order_targeted_and_not_echoed(server, peers):
    room = "!abc:example.org"
    receivers = [peers(who, room, duration=30, wait_for=["alice"], settle=0) for who in ("bob", "carol")]
    # alice waits until she sees both, lets their connections settle, then sends 50 packets to
    # everyone and one to bob only, and stays 6 s more
    alice = peers("alice", room, duration=6, wait_for=["bob", "carol"], settle=2.0, send_data=N,
                  send_private="bob")
    a = alice.wait()
    assert_joined(a, "alice")
    assert a.get("wait_for_done"), a.get("wait_for_error")
    assert a.get("sent_data") == N and a.get("sent_private_to") == "bob", a
    # the receivers stay 30 s; everything is long there by now, so stop them early
    for p in receivers:
        p.proc.terminate()
    res = {"alice": a, **harness.wait_all(receivers)}
    for who in ("bob", "carol"):
        assert_joined(res[who], who)

    for who in ("bob", "carol"):
        seq = [d for d in res[who]["data"] if d["topic"] == "seq"]
        assert all(d["from"] == "alice" for d in seq), seq[:3]
        assert [d["payload"] for d in seq] == [f"seq:{i}" for i in range(N)], (
            f"{who} got {len(seq)} packets: {[d['payload'] for d in seq][:60]}")
    priv_bob = [d for d in res["bob"]["data"] if d["topic"] == "private"]
    assert [(d["from"], d["payload"]) for d in priv_bob] == [("alice", "private-for:bob")], priv_bob
    priv_carol = [d for d in res["carol"]["data"] if d["topic"] == "private"]
    assert priv_carol == [], f"carol got bob's packet: {priv_carol}"
    assert res["alice"]["data"] == [], f"alice got packets back: {res['alice']['data'][:5]}"
