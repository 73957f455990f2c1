"""End-to-end encrypted media passes through the SFU untouched (acceptance item 4)."""
from __future__ import annotations

import harness
from harness import assert_joined, tone_presence, video_delivery

KEY = "switchboard-e2e-shared-key-0123456789"
BAD_STATES = {"ENCRYPTION_FAILED", "DECRYPTION_FAILED", "MISSING_KEY", "INTERNAL_ERROR"}
TONES = {"alice": 440.0, "bob": 660.0}


def test_e2ee_frames_decrypt_at_the_receiver(server, peers):
    room = "!e2ee:example.org"
    pair = [peers(who, room, duration=18, tone=TONES[who], video=True, e2ee_key=KEY) for who in ("alice", "bob")]
    # control: a participant with the wrong key must not be able to decode anything
    eve = peers("eve", room, duration=12, e2ee_key="not-the-key", wait_for=["alice", "bob"], settle=0)
    res = harness.wait_all([*pair, eve])
    for who in res:
        assert_joined(res[who], who)

    for me, other in (("alice", "bob"), ("bob", "alice")):
        r = res[me]
        v = video_delivery(r, res[other], other, 10.0)
        assert v["ratio"] >= 0.9, f"{me} <- {other} encrypted video: {v}"
        a = tone_presence(r, other, TONES[other])
        assert a["tone_seconds"] >= 7.0, f"{me} <- {other} encrypted audio: {a}"
        bad = [e for e in harness.events(r, "e2ee_state_changed") if e["state"] in BAD_STATES]
        assert not bad, f"{me}: {bad}"
        # the tracks were really published encrypted, and the server kept that flag
        subs = harness.events(r, "track_subscribed", identity=other)
        assert len(subs) == 2 and all(e["encryption"] != 0 for e in subs), subs
        assert all(e["mime"] for e in subs), f"E2EE needs mime_type in TrackInfo: {subs}"
        cryptors = [c for c in r.get("frame_cryptors", []) if c["identity"] == other]
        assert cryptors and all(c["enabled"] for c in cryptors), r.get("frame_cryptors")

    # eve got the (encrypted) tracks but could decode none of it: proves the media really is
    # encrypted end to end, so the decoding above went through the receivers' decryptors
    e = res["eve"]
    for other in ("alice", "bob"):
        assert harness.events(e, "track_subscribed", identity=other), e["events"]
        vid = e["remote"].get(other, {}).get("video", {})
        assert not vid.get("counters"), f"eve decoded {len(vid['counters'])} frames of {other} with a wrong key"
        assert tone_presence(e, other, TONES[other])["tone_seconds"] < 1.0
