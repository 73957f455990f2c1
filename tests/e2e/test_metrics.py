"""Prometheus gauges follow the call and return to zero when everyone has left."""
from __future__ import annotations

import harness
from harness import assert_joined, metric

GAUGES = ["switchboard_rooms", "switchboard_participants", "switchboard_sessions",
          "switchboard_published_tracks", "switchboard_subscriptions", "switchboard_tasks"]
BACK_TO_ZERO = ["switchboard_participants", "switchboard_rooms", "switchboard_sessions",
                "switchboard_published_tracks"]


def test_metrics_endpoint_lists_all_metrics(server):
    m = server.metrics()
    for name in GAUGES + ["switchboard_dropped_datagrams_total"]:
        assert metric(m, name) is not None, f"{name} missing from /metrics: {sorted(m)[:40]}"
    for name in BACK_TO_ZERO:
        assert metric(m, name) == 0, f"{name} = {metric(m, name)} on an idle server"


def test_gauges_return_to_zero_after_everyone_leaves(server, peers):
    room = "a/b+c="
    ps = [peers(who, room, duration=14, tone=tone, video=True) for who, tone in (("alice", 440.0), ("bob", 660.0))]
    # during the call: one room, two participants, four tracks
    during = server.wait_metrics({"switchboard_rooms": 1, "switchboard_participants": 2,
                                  "switchboard_published_tracks": 4}, timeout=25)
    assert metric(during, "switchboard_sessions") >= 1, during
    # each subscribes to the other's two tracks (counted however the server likes, but some)
    server.wait_metrics({"switchboard_subscriptions": 1}, timeout=15, op=">=")
    res = harness.wait_all(ps)
    for who in res:
        assert_joined(res[who], who)
    server.wait_metrics({name: 0 for name in BACK_TO_ZERO + ["switchboard_subscriptions"]}, timeout=5)
