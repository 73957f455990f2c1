"""livekit-client in headless Chromium when things go wrong: the signalling WebSocket drops,
the server restarts, a camera is republished over and over with E2EE, a publish is abandoned
half-way, a page sends garbage or vanishes mid-negotiation. These are the failure kinds other
SFUs shipped bugs in; each test says which. Harness: tests/e2e/browser.py.
"""
from __future__ import annotations

import time

import pytest

import harness
from browser import (
    MIN_FRAMES_RISE, SAMPLE_GAP_S, Page, assert_media_flows, connect_all, inbound, remote_tracks,
)
from harness import metric

SMALL = {"width": 320, "height": 180}
AV = {"camera", "microphone"}
RESUMED_WITHIN_S = 20.0  # livekit-client retries at once, then after 0.3, 1.2, 2.7, 4.8 s
MEDIA_BACK_S, MEDIA_BACK_FRAMES = 2.0, 5  # after `reconnected`: 5 new frames within 2 s (15 fps)
REJOINED_WITHIN_S = 40.0  # a full reconnect: resume refused, new join, republish, media
GONE_WITHIN_S = 10 + 5.0  # the server's resume window (10 s) plus slack
REPUBLISH_ROUNDS = 10
DECODE_WITHIN_S = 15.0  # a republished camera decodes again (needs its first key frame)


def local_sids(page) -> dict[str, str]:
    return {t["source"]: t["sid"] for t in page.stats()["local"]}


def remote_sids(page, identity: str) -> dict[str, str]:
    return {t["source"]: t["sid"] for t in remote_tracks(page.stats(), identity)}


def counts(server: harness.Server) -> dict[str, float]:
    m = server.metrics()
    return {k: metric(m, f"switchboard_{k}") for k in
            ("participants", "published_tracks", "subscriptions", "sessions", "signal_detached", "tasks")}


def two_in_a_call(browser, room: str, alice_version: str, bob_version: str) -> tuple[Page, Page]:
    """alice and bob join `room`, each publishes camera (320x180) and microphone, and each
    receives the other's media."""
    alice, bob = browser.open("alice", alice_version), browser.open("bob", bob_version)
    connect_all([alice, bob], room)
    for p in (alice, bob):
        p.call("publishCamera", SMALL)
        p.call("publishMic")
    assert_media_flows({alice: {"bob": AV}, bob: {"alice": AV}})
    return alice, bob


@pytest.mark.parametrize("path", ["rtc-v1", "rtc"])
def test_signal_resume_after_the_server_drops_the_websocket(start_server, browser, path):
    """Item 5: the server's side of every signalling WebSocket is aborted (`ss -K`, as when a
    proxy restarts). Each client resumes (`reconnect=1` → ReconnectResponse) on its path
    (one peer connection on /rtc/v1, two on /rtc), keeps its published tracks (same sids, no
    republish), nobody sees anybody leave, and media keeps flowing both ways. The server
    never trickles candidates, so no candidate of a new ICE generation can precede the offer
    that carries its ufrag."""
    server = start_server(*(["--disable-rtc-v1"] if path == "rtc" else []))
    room = f"!resume-{path}:example.org"
    alice, bob = two_in_a_call(browser, room, "2.22", "2.23")
    before = {p.name: (local_sids(p), remote_sids(p, "bob" if p is alice else "alice")) for p in (alice, bob)}
    m0 = server.metrics()

    killed = server.ns.kill_signalling()
    # (on /rtc also the keep-alive connection of the page's /rtc/v1/validate fetch)
    assert killed >= 2, f"killed {killed} connections on the signalling port, expected both WebSockets"
    for p in (alice, bob):
        p.wait_event("reconnected", RESUMED_WITHIN_S)
        # media back (it never stopped for a signalling-only drop; the ICE restart the client
        # does on resume must not break it either)
        other = "bob" if p is alice else "alice"
        frames = inbound(remote_tracks(p.stats(), other, source="camera")[0], "framesDecoded")
        p.wait_until(lambda s, o=other, f=frames: inbound(remote_tracks(s, o, source="camera")[0], "framesDecoded")
                     >= f + MEDIA_BACK_FRAMES, MEDIA_BACK_S, f"{MEDIA_BACK_FRAMES} frames of {other} after the resume")
    m = server.wait_metrics({"switchboard_signal_detached": 0, "switchboard_participants": 2}, timeout=5)
    resumes = metric(m, "switchboard_signal_resumes_total") - metric(m0, "switchboard_signal_resumes_total")
    refused = (metric(m, "switchboard_signal_resumes_refused_total")
               - metric(m0, "switchboard_signal_resumes_refused_total"))
    assert (resumes, refused) == (2, 0), f"{resumes} resumes, {refused} refused: both clients should resume"

    assert_media_flows({alice: {"bob": AV}, bob: {"alice": AV}})
    for p in (alice, bob):
        other = "bob" if p is alice else "alice"
        assert (local_sids(p), remote_sids(p, other)) == before[p.name], (
            f"{p.name}: tracks changed across the resume (republished?): {before[p.name]} ->"
            f" {(local_sids(p), remote_sids(p, other))}")
        left = p.events("participantDisconnected")
        assert not left, f"{p.name} saw {left} leave"
        ws = [w for w in p.websockets() if f":{harness.HTTP_PORT}/" in w["url"] and w["received"]]
        assert len(ws) == 2, f"{p.name}: expected the first and the resumed WebSocket, got {ws}"
        if path == "rtc":  # on /rtc/v1 the flag is inside the (binary) join_request
            assert "reconnect=1" in ws[1]["url"], f"{p.name}: second WebSocket is no resume: {ws[1]['url']}"
    assert counts(server)["published_tracks"] == 4


def test_full_reconnect_after_the_server_forgot_the_participants(start_server, browser):
    """Item 5, second half: the server restarts (every session forgotten). The clients' resume
    is refused (leave RECONNECT), they rejoin from scratch, republish, and media flows again."""
    server = start_server()
    room = "!rejoin:example.org"
    alice, bob = two_in_a_call(browser, room, "2.23", "2.22")
    before = {p.name: local_sids(p) for p in (alice, bob)}

    server.stop()
    server = start_server()
    for p in (alice, bob):
        p.wait_event("reconnected", REJOINED_WITHIN_S)
    server.wait_metrics({"switchboard_participants": 2, "switchboard_published_tracks": 4}, timeout=REJOINED_WITHIN_S)
    assert_media_flows({alice: {"bob": AV}, bob: {"alice": AV}})
    for p in (alice, bob):
        after = local_sids(p)
        assert set(after) == AV and not set(after.values()) & set(before[p.name].values()), (
            f"{p.name}: a rejoin publishes anew (new sids): {before[p.name]} -> {after}")


def test_e2ee_camera_republished_ten_times_decodes_every_time(server, browser):
    """Failure kind: reusing a subscriber transceiver (mid) for a new track left it without a
    working decryptor. With E2EE on, alice unpublishes and republishes her camera 10 times;
    bob (one peer connection, so his receive sections are reused) decodes every new track and
    has no decryption errors."""
    room = "!republish:example.org"
    alice, bob = browser.open("alice", "2.23"), browser.open("bob", "2.22")
    key = "republish shared key"
    connect_all([alice, bob], room, e2eeKey=key)
    alice.call("publishMic")
    seen = set()
    for k in range(REPUBLISH_ROUNDS):
        cam = alice.call("publishCamera", SMALL)
        sid = cam["sid"]
        assert sid not in seen, f"round {k}: sid {sid} reused"
        seen.add(sid)

        def decoding(s: dict, sid=sid) -> bool:
            t = [t for t in remote_tracks(s, "alice", source="camera") if t["sid"] == sid]
            return bool(t) and inbound(t[0], "framesDecoded") >= MIN_FRAMES_RISE

        bob.wait_until(decoding, DECODE_WITHIN_S, f"round {k}: alice's camera {sid} decoding")
        alice.call("unpublish", "camera")
        bob.wait_until(lambda s: not remote_tracks(s, "alice", source="camera"), 10,
                       f"round {k}: alice's camera gone")
    errors = bob.events("encryptionError") + alice.events("encryptionError")
    assert not errors, errors
    # the microphone kept flowing through all of it
    assert_media_flows({bob: {"alice": {"microphone"}}})
    assert counts(server)["published_tracks"] == 1


def test_abandoned_publish_then_publish_again_gives_one_track(server, browser):
    """Failure kind: a publisher starts publishing, abandons it mid-negotiation and publishes
    again at once; the others must end up with exactly one camera track, and it decodes."""
    room = "!abandon:example.org"
    alice, bob = browser.open("alice", "2.23"), browser.open("bob", "2.22")
    connect_all([alice, bob], room)
    for after_ms in (0, 30):
        r = alice.call("abandonPublish", dict(SMALL, afterMs=after_ms))
        print(f"abandoned after {after_ms} ms: {r}")
        cam = alice.call("publishCamera", SMALL)
        bob.wait_until(lambda s, sid=cam["sid"]: any(
            t["sid"] == sid and inbound(t, "framesDecoded") >= MIN_FRAMES_RISE
            for t in remote_tracks(s, "alice", source="camera")), DECODE_WITHIN_S, "the second camera decoding")
        time.sleep(SAMPLE_GAP_S)  # a stray second track would have been announced by now
        cams = remote_tracks(bob.stats(), "alice", source="camera")
        assert [t["sid"] for t in cams] == [cam["sid"]], f"bob sees alice's cameras {cams}"
        assert counts(server)["published_tracks"] == 1
        alice.call("unpublish", "camera")
        server.wait_metrics({"switchboard_published_tracks": 0}, timeout=10)


def test_garbage_and_a_tab_closed_mid_negotiation_leave_the_room_consistent(server, browser):
    """Bad input: a page that sends garbage on its signalling WebSocket is closed by the server
    and seen leaving at once; a page closed while its camera is being negotiated is seen
    leaving too (at once if livekit-client's unload handler gets its leave out, else after the
    resume window). Participant, track and subscription counts return to what they were, and
    the two who stayed keep exchanging media."""
    room = "!garbage:example.org"
    alice, bob = two_in_a_call(browser, room, "2.23", "2.22")
    base = counts(server)

    mallory = browser.open("mallory", "2.23")
    r = mallory.call("garbageSignal", {"url": harness.WS_URL, "token": harness.make_token("mallory", room)})
    assert r["firstMessageBytes"], f"mallory never joined: {r}"
    assert r["closeCode"] == 1007, f"server did not close mallory's socket as bad input: {r}"
    for p in (alice, bob):
        p.wait_event("participantDisconnected", 5, identity="mallory")
    server.wait_metrics({f"switchboard_{k}": v for k, v in base.items()}, timeout=5)

    carol = browser.open("carol", "2.22")
    carol.connect(room)
    for p in (alice, bob):
        p.wait_event("participantConnected", 10, identity="carol")
    pending = carol.call_async("publishCamera", SMALL, timeout=20)
    time.sleep(0.05)
    carol.close()
    for p in (alice, bob):
        p.wait_event("participantDisconnected", GONE_WITHIN_S, identity="carol")
    del pending  # its answer is a page-gone error
    server.wait_metrics({f"switchboard_{k}": v for k, v in base.items()}, timeout=GONE_WITHIN_S)
    assert_media_flows({alice: {"bob": AV}, bob: {"alice": AV}})
    assert server.alive()
