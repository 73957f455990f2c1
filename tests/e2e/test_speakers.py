"""Active speakers (`SpeakersChanged`) from the audio levels real publishers send.

Python SDK peers publish tones of different loudness (libwebrtc measures each 20 ms frame
and puts the RFC 6464 level in the `ssrc-audio-level` header extension); a raw signalling
client (lkproto.py, no SDK) reads the `speakers_changed` deltas themselves, an SDK listener
its `active_speakers_changed` events. LiveKit's Rust SDK (inside the Python one) passes only
the active speakers of each delta, sorted quietest first, so the ranking is checked on the
raw messages."""
from __future__ import annotations

import time

import pytest

import harness
import lkproto
from browser import connect_all
from harness import assert_joined
from lkproto import lkrtc

ROOM = "speakers"


def _join_raw(raw_ws, identity: str) -> tuple[lkproto.SignalClient, lkrtc.JoinResponse]:
    sc, reply = raw_ws(lkproto.rtc_path(harness.make_token(identity, ROOM), protocol=16))
    assert sc is not None, f"upgrade refused: {reply.status_line} {reply.body[:300]!r}"
    first = sc.recv(5)
    assert first.WhichOneof("message") == "join", first
    return sc, first.join


def _listen(sc: lkproto.SignalClient, seconds: float) -> list[lkrtc.SignalResponse]:
    """Everything for `seconds`, pinging every 3 s so the server keeps the session."""
    out: list[lkrtc.SignalResponse] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        sc.send(lkrtc.SignalRequest(ping_req=lkrtc.Ping(timestamp=int(time.time() * 1000))))
        out += sc.drain(min(3.0, left))
    return out


def test_louder_speaker_ranks_first_a_silent_one_is_never_listed_and_a_leaver_goes_inactive(
        server, peers, raw_ws):
    eve, _ = _join_raw(raw_ws, "eve")
    # alice: loud (sine peak 0.5 of full scale, about −9 dBov), leaves after 10 s; bob: quiet
    # but speaking (peak 0.08, about −25 dBov; the active level is −35); carol publishes
    # digital silence; dave only listens.
    alice = peers("alice", ROOM, duration=10, tone=440.0, amplitude=0.5)
    bob = peers("bob", ROOM, duration=18, tone=550.0, amplitude=0.08)
    carol = peers("carol", ROOM, duration=18, tone=660.0, amplitude=0.0)
    dave = peers("dave", ROOM, duration=18)
    msgs = _listen(eve, 24)
    res = harness.wait_all([alice, bob, carol, dave])
    for who in res:
        assert_joined(res[who], who)

    sids = {who: r["local_sid"] for who, r in res.items()}
    names = {sid: who for who, sid in sids.items()}
    changes = [m.speakers_changed for m in msgs if m.WhichOneof("message") == "speakers_changed"]
    for ch in changes:
        print("speakers_changed", [(names.get(s.sid, s.sid), s.level, s.active) for s in ch.speakers])
    assert changes, f"eve got no speakers_changed; got {[m.WhichOneof('message') for m in msgs]}"
    # Replay the deltas: who is speaking, at what level, after each message.
    state: dict[str, float] = {}
    both_at: list[dict[str, float]] = []
    went_inactive: list[str] = []
    for ch in changes:
        active = [s for s in ch.speakers if s.active]
        levels = [s.level for s in active]
        assert levels == sorted(levels, reverse=True), f"not loudest first: {ch}"
        for s in ch.speakers:
            who = names.get(s.sid, s.sid)
            assert s.sid != sids["carol"], f"silent carol listed: {ch}"
            assert s.sid != sids["dave"], f"dave publishes nothing but is listed: {ch}"
            assert 0.0 <= s.level <= 1.0 and (s.level * 8).is_integer(), f"level not in 1/8 steps: {s}"
            if s.active:
                assert s.level > 0, s
                state[who] = s.level
            else:
                assert s.level == 0.0, f"inactive entry with a level: {s}"
                state.pop(who, None)
                went_inactive.append(who)
        if "alice" in state and "bob" in state:
            both_at.append(dict(state))
    assert both_at, f"alice and bob never listed together: {changes}"
    for st in both_at:
        assert st["alice"] > st["bob"], f"louder alice not ranked above bob: {st}"
    assert "alice" in went_inactive, f"alice left but was never sent inactive: {changes}"
    assert "bob" in state or "bob" in went_inactive, changes

    # The SDK listener sees both speakers and never carol.
    d = res["dave"]
    seen = [e["identities"] for e in harness.events(d, "active_speakers_changed")]
    named = {i for ids in seen for i in ids}
    assert {"alice", "bob"} <= named, f"dave's active speakers: {seen}"
    assert "carol" not in named, f"dave saw silent carol speaking: {seen}"
    first_alice = next(i for i, ids in enumerate(seen) if "alice" in ids)
    first_bob = next(i for i, ids in enumerate(seen) if "bob" in ids)
    assert first_alice <= first_bob + 2, f"alice (louder) was late: {seen}"


SPEAKING_WITHIN_S = 5.0  # tone on -> isSpeaking at the other page (a few 400 ms ticks)
SILENT_WITHIN_S = 5.0  # tone silenced -> not speaking (a window of silence, then the tick)


@pytest.mark.parametrize("version", ["2.22", "2.23"])
def test_livekit_client_is_speaking_follows_a_tone_on_and_off(server, browser, version):
    """livekit-client (what Element Call's speaking indicator reads): a page publishing a
    WebAudio tone is `isSpeaking` at the other page and in its `activeSpeakers`, and stops
    being so once the tone is silenced; the listener, publishing nothing, never is."""
    room = f"!speakers-{version}:example.org"
    talker, listener = browser.open("talker", version), browser.open("listener", version)
    connect_all([talker, listener], room)
    talker.call("publishTone", {"hz": 440, "gain": 0.5})
    toned = time.monotonic()

    def wait_speaking(want: bool, within: float) -> dict:
        start = time.monotonic()
        end = start + within
        while True:
            s = listener.call("speaking")
            if s["participants"].get("talker", {}).get("isSpeaking") is want:
                print(f"isSpeaking {want} after {time.monotonic() - start:.2f}s: {s}")
                return s
            if time.monotonic() > end:
                raise AssertionError(f"talker isSpeaking never became {want} at the listener: {s}")
            time.sleep(0.2)

    on = wait_speaking(True, SPEAKING_WITHIN_S)
    print(f"tone published -> speaking at the listener: {time.monotonic() - toned:.2f}s")
    assert on["activeSpeakers"] == ["talker"], on
    assert on["participants"]["talker"]["audioLevel"] > 0, on
    assert on["participants"]["listener"]["isSpeaking"] is False, on
    # the talker's own page hears about itself too (its local participant)
    own = talker.call("speaking")
    assert own["participants"]["talker"]["isSpeaking"] is True, own

    talker.call("setToneGain", 0)
    off = wait_speaking(False, SILENT_WITHIN_S)
    assert off["activeSpeakers"] == [], off
    assert off["participants"]["talker"]["audioLevel"] == 0, off
    seen = [e["identities"] for e in listener.events("activeSpeakersChanged")]
    assert ["talker"] in seen and seen[-1] == [], seen
    assert all("listener" not in ids for ids in seen), seen
