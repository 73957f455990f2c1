"""A participant that leaves is seen leaving by the others (acceptance item 3)."""
from __future__ import annotations

import harness
from harness import assert_joined

LEAVE_SEEN_WITHIN_S = 2.0


def test_others_see_a_leaver_within_two_seconds(server, peers):
    room = "a/b+c="
    stay = [peers(who, room, duration=25, tone=tone) for who, tone in (("alice", 440.0), ("bob", 660.0))]
    # carol publishes too (so leaving also tears down a track), stays 5 s once all are there
    carol = peers("carol", room, duration=5, tone=550.0, wait_for=["alice", "bob"], settle=0)
    res = harness.wait_all([carol, *stay])
    for who in res:
        assert_joined(res[who], who)
    c = res["carol"]
    assert c.get("wait_for_done"), f"carol never saw both others: {c.get('wait_for_error')}"
    left_at = c["leaving"]
    for who in ("alice", "bob"):
        gone = harness.events(res[who], "participant_disconnected", identity="carol")
        assert gone, f"{who} never saw carol leave; events: {res[who]['events']}"
        dt = gone[0]["t"] - left_at
        assert dt <= LEAVE_SEEN_WITHIN_S, f"{who} saw carol leave {dt:.2f}s after she left"
        # ...and nobody else left while both stayed
        other = "bob" if who == "alice" else "alice"
        both_there_until = min(res[who]["leaving"], res[other]["leaving"])
        early_gone = [e for e in harness.events(res[who], "participant_disconnected", identity=other)
                      if e["t"] < both_there_until]
        assert not early_gone, f"{who} saw {other} leave while both stayed: {early_gone}"
        # carol really was in the call with them (her track reached them)
        assert harness.events(res[who], "track_subscribed", identity="carol"), res[who]["events"]
        # carol's leaving did not get the stayers dropped or reconnecting
        early = [e for e in res[who]["events"]
                 if e["type"] in ("disconnected", "reconnecting") and e["t"] < res[who]["leaving"]]
        assert not early, f"{who}: {early}"
