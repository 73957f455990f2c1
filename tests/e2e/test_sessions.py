"""Session lifecycle with the SDK: a duplicate identity replaces the old session, a client that
goes silent is removed with its tracks, mute/unmute reaches the others."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import harness
from harness import assert_joined, metric

SILENT_GONE_WITHIN_S = 30.0  # ping timeout is 15 s; ICE consent may end it sooner
MUTE_SEEN_WITHIN_S = 5.0


def _wait_exit(p: harness.Peer, timeout: float, why: str) -> None:
    try:
        p.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{p.tag or p.identity}: {why} (still running after {timeout}s);"
                             f" log {p.log}:\n{harness.tail(p.log, 30)}") from None


def test_duplicate_identity_replaces_the_first_session(server, peers):
    room = "!dup:example.org"
    carol = peers("carol", room, duration=60)
    first = peers("alice", room, duration=60, tone=440.0, tag="alice-1", extra=["--exit-on-disconnect"])
    server.wait_metrics({"switchboard_participants": 2, "switchboard_published_tracks": 1}, timeout=25)
    carol.wait_event("track_subscribed", 20, identity="alice")
    second = peers("alice", room, duration=60, tone=550.0, tag="alice-2")
    # the first session is told it was replaced, and its peer stops
    _wait_exit(first, 20, "the first alice was not disconnected")
    r1 = first.wait()
    assert r1["connected"] and r1["error"] is None, r1
    dis = harness.events(r1, "disconnected")
    assert [e["reason_name"] for e in dis] == ["DUPLICATE_IDENTITY"], dis
    # one alice (the second) with one track, and carol subscribed to it
    server.wait_metrics({"switchboard_participants": 2, "switchboard_published_tracks": 1}, timeout=15)
    carol.wait_event("track_subscribed", 20, count=2, identity="alice")
    carol.proc.terminate()
    c = carol.wait()
    second.proc.terminate()
    r2 = second.wait()
    assert_joined(c, "carol")
    assert_joined(r2, "alice-2")
    assert r2["initial_participants"] == ["carol"], r2["initial_participants"]
    assert not harness.events(r2, "disconnected", reason_name="DUPLICATE_IDENTITY"), r2["events"]
    # carol saw the first alice go, once, and never the second (which stayed until after carol left)
    gone = harness.events(c, "participant_disconnected", identity="alice")
    assert [e["sid"] for e in gone] == [r1["local_sid"]], (
        f"carol's alice events: {[(e['type'], e.get('sid')) for e in c['events'] if e.get('identity') == 'alice']}")
    # the second alice knows itself by its own sid, not the first one's
    assert r2["local_sid"] != r1["local_sid"], (
        f"the second alice's SDK took the first alice's sid {r1['local_sid']} as its own")
    # carol ends up with exactly one alice, the second one, whose track she got
    assert c["final_participants"] == {"alice": r2["local_sid"]}, (c["final_participants"], r2["local_sid"])
    subs = harness.events(c, "track_subscribed", identity="alice")
    assert subs and subs[-1]["sid"] == r2["published"]["audio"]["sid"], (subs, r2["published"])


def test_a_silent_client_is_removed_with_its_tracks(server, peers):
    room = "!silent:example.org"
    alice = peers("alice", room, duration=90, tone=440.0, video=True)
    bob = peers("bob", room, duration=90, tone=660.0, video=True)
    server.wait_metrics({"switchboard_participants": 2, "switchboard_published_tracks": 4}, timeout=25)
    server.wait_metrics({"switchboard_subscriptions": 4}, timeout=15, op=">=")
    subs_before = metric(server.metrics(), "switchboard_subscriptions")
    # bob's process stops dead: no signalling, no media, no goodbye
    t_stop = time.time()
    os.kill(bob.proc.pid, signal.SIGSTOP)
    try:
        m = server.wait_metrics({"switchboard_participants": 1, "switchboard_published_tracks": 2},
                                timeout=SILENT_GONE_WITHIN_S + 5)
        assert metric(m, "switchboard_subscriptions") < subs_before, m
        server.wait_metrics({"switchboard_subscriptions": 0, "switchboard_rooms": 1}, timeout=5)
        alice.proc.terminate()
        a = alice.wait()
    finally:
        bob.proc.kill()  # SIGKILL ends a stopped process too
    assert_joined(a, "alice")
    gone = harness.events(a, "participant_disconnected", identity="bob")
    assert gone, f"alice never saw bob leave: {a['events']}"
    assert gone[0]["t"] - t_stop <= SILENT_GONE_WITHIN_S, f"bob seen gone {gone[0]['t'] - t_stop:.1f}s after he froze"
    bob_tracks = {e["sid"] for e in harness.events(a, "track_subscribed", identity="bob")}
    assert len(bob_tracks) == 2, a["events"]
    unpub = {e["sid"] for e in harness.events(a, "track_unpublished", identity="bob")}
    unsub = {e["sid"] for e in harness.events(a, "track_unsubscribed", identity="bob")}
    assert bob_tracks <= (unpub | unsub), f"bob's tracks {bob_tracks} not ended at alice: unpublished {unpub}, unsubscribed {unsub}"
    early = [e for e in a["events"] if e["type"] in ("disconnected", "reconnecting") and e["t"] < a["leaving"]]
    assert not early, f"alice: {early}"
    server.wait_metrics({"switchboard_participants": 0, "switchboard_rooms": 0, "switchboard_sessions": 0,
                         "switchboard_published_tracks": 0}, timeout=10)


def test_mute_and_unmute_reach_the_other_participant(server, peers):
    room = "!mute:example.org"
    bob = peers("bob", room, duration=30, wait_for=["alice"], settle=0)
    alice = peers("alice", room, duration=10, tone=440.0, wait_for=["bob"], settle=2.0,
                  extra=["--at", "1:mute-audio", "--at", "5:unmute-audio"])
    a = alice.wait()
    bob.proc.terminate()
    b = bob.wait()
    assert_joined(a, "alice")
    assert_joined(b, "bob")
    acts = {e["action"]: e["t"] for e in a["events"] if e["type"] == "action"}
    assert set(acts) == {"mute-audio", "unmute-audio"}, a["events"]
    sid = a["published"]["audio"]["sid"]
    muted = harness.events(b, "track_muted", identity="alice", sid=sid)
    unmuted = harness.events(b, "track_unmuted", identity="alice", sid=sid)
    assert len(muted) == 1 and len(unmuted) == 1, (muted, unmuted, b["events"])
    assert acts["mute-audio"] <= muted[0]["t"] <= acts["mute-audio"] + MUTE_SEEN_WITHIN_S, (acts, muted)
    assert acts["unmute-audio"] <= unmuted[0]["t"] <= acts["unmute-audio"] + MUTE_SEEN_WITHIN_S, (acts, unmuted)
    # and the track was there before and after: bob heard the tone
    assert harness.tone_presence(b, "alice", 440.0)["tone_seconds"] >= 3.0, b["remote"].get("alice")
