"""livekit-client in headless Chromium against the server: the browser client Element Call uses.

The Python SDK tests exercise libwebrtc through LiveKit's Rust core; this file drives the other
client family, livekit-client (JavaScript) inside Chromium, which differs on the wire: token
in the query string, cross-origin /rtc/v1/validate fallback, Chrome's simulcast encoder, the
e2ee worker's frame format, its own data-channel handling. Each test runs both livekit-client
versions we care about, 2.22.4 (Element Call's) and 2.23.0 (newest), either once per version
or mixed within one room (which is what a call between two Element Call builds looks like).

Media is judged by the receivers' own RTCRtpReceiver stats (inbound-rtp): video
framesDecoded and audio totalAudioEnergy must keep rising between two samples a few seconds
apart. The fake camera/microphone of Chromium (--use-fake-device-for-media-stream) are the
sources: a moving test pattern and a beep twice a second.

Harness: tests/e2e/browser.py (fixture `browser`), tests/browser/{driver.mjs,client.js}.
At most two browsers encode video in one test (two cores).
"""
from __future__ import annotations

import time
from urllib.parse import urlparse

import pytest

import harness
from browser import (
    MEDIA_START_S, MIN_AUDIO_PACKETS_RISE, MIN_FRAMES_RISE, SAMPLE_GAP_S, assert_media_flows,
    assert_undisturbed, connect_all, inbound, joined_paths, remote_tracks, sent_rids, signalling_paths,
)
from harness import assert_joined, metric, tone_presence

VERSIONS = ["2.22", "2.23"]
SMALL = {"width": 320, "height": 180}  # cheap camera where the resolution does not matter
# Chrome sends three simulcast layers from 960x540 up; livekit-client announces them as
# LOW/MEDIUM/HIGH = 320x180 / 640x360 / 960x540 (its default presets for a 16:9 540p track)
SIMULCAST = {"width": 960, "height": 540, "simulcast": True}
LAYERS_SENT_S = 10  # further wait for Chrome to send all three layers (normally there at once)
WANT_LAYERS = [("LOW", 320, 180), ("MEDIUM", 640, 360), ("HIGH", 960, 540)]
PAUSE_SETTLE_S = 2.0  # after hiding a video: debounce + in-flight packets
MAX_PACKETS_PAUSED = 5  # video packets a paused subscription may still get per sample gap
RESUME_S = 10.0  # shown again -> decoding again (needs a key frame from the publisher)
LEAVE_SEEN_S = 3.0  # from room.disconnect() to participantDisconnected at the others
FAKE_MIC_HZ = 400.0  # Chromium's fake microphone: a 400 Hz beep every 0.5 s
MIN_BEEP_S = 2.0  # of the beep, over the Python peer's 14 s stay (~5 s expected)
MIN_PY_FRAMES = 100  # video frames the Python peer decodes from the browser in 14 s (~200 expected)


# ----------------------------------------------------------------------------- tests --
@pytest.mark.parametrize("version,path", [("2.22", "rtc-v1"), ("2.23", "rtc-v1"), ("2.23", "rtc")])
def test_simulcast_publishers_and_a_subscriber(start_server, browser, version, path):
    """(a) Two publishers (960x540 simulcast camera + microphone) and a subscribe-only third:
    everyone receives every other publisher's video and audio; the TrackInfo the others get
    lists the three simulcast layers the publisher announced, on /rtc/v1 (where the data
    m-line follows audio and video in the offer) and on /rtc (server --disable-rtc-v1)."""
    server = start_server(*(["--disable-rtc-v1"] if path == "rtc" else []))
    room = f"!simulcast-{version}-{path}:example.org"
    alice, bob, carol = (browser.open(n, version) for n in ("alice", "bob", "carol"))
    joined = connect_all([alice, bob, carol], room)
    assert sorted(joined["carol"]["others"]) == ["alice", "bob"], joined
    for p in (alice, bob):
        cam = p.call("publishCamera", SIMULCAST)
        assert cam["captured"]["width"] == 960 and cam["captured"]["height"] == 540, f"{p.name} camera: {cam}"
        p.call("publishMic")

    av = {"camera", "microphone"}
    last = assert_media_flows({alice: {"bob": av}, bob: {"alice": av}, carol: {"alice": av, "bob": av}})

    for viewer, publisher in (("alice", "bob"), ("bob", "alice"), ("carol", "alice"), ("carol", "bob")):
        cam = remote_tracks(last[viewer], publisher, source="camera")[0]
        print(f"{viewer} receives {publisher}'s camera at {inbound(cam, 'frameWidth')}x{inbound(cam, 'frameHeight')}")
        got = [(l["quality"], l["width"], l["height"]) for l in cam["layers"]]
        assert got == WANT_LAYERS, f"{viewer} sees {publisher}'s camera with layers {cam['layers']}: {cam}"
        assert cam["simulcasted"], f"{viewer}: {publisher}'s camera not marked simulcast: {cam}"
    # the publishers really send three layers (else the layer check above proves little);
    # Chrome turns a layer on once its bandwidth estimate and the CPU allow it
    for p in (alice, bob):
        p.wait_until(lambda s: sent_rids(s) == ["f", "h", "q"], LAYERS_SENT_S, "camera sending rids f, h, q")
    assert_undisturbed(alice, bob, carol)
    want_path = "/rtc" if path == "rtc" else "/rtc/v1"
    assert set(joined_paths(server).values()) == {want_path}, joined_paths(server)


@pytest.mark.parametrize("version", VERSIONS)
def test_browser_and_python_sdk_see_and_hear_each_other(server, browser, peers, version):
    """(b) A browser participant and a LiveKit Python SDK participant in one room: each decodes
    the other's video and hears the other's audio."""
    room = f"!mixed-{version}:example.org"
    duration = 14.0  # the Python peer's stay after the browser arrived: covers the checks below
    py = peers("py", room, duration=duration, tone=440.0, video=True, wait_for=["web"], settle=0)
    web = browser.open("web", version)
    web.connect(room)
    web.call("publishCamera", SMALL)
    web.call("publishMic")

    assert_media_flows({web: {"py": {"camera", "microphone"}}})
    assert_undisturbed(web)
    res = py.wait()
    assert_joined(res, "py")
    got = res["remote"].get("web", {})
    subs = harness.events(res, "track_subscribed", identity="web")
    assert sorted(e["kind"] for e in subs) == ["audio", "video"], f"py subscribed to {subs}"
    video = got.get("video", {})
    # the fake camera carries no frame counter: count frames and their size
    assert video.get("frames", 0) >= MIN_PY_FRAMES, f"py <- web video: {video}"
    assert "320x180" in video.get("sizes", {}), f"py <- web video sizes: {video.get('sizes')}"
    # Chromium's fake microphone beeps at 400 Hz twice a second: about 40 % of the 0.2 s
    # windows have it as their dominant frequency
    beep = tone_presence(res, "web", FAKE_MIC_HZ)
    assert beep["tone_seconds"] >= MIN_BEEP_S, f"py <- web audio: {beep}"


@pytest.mark.parametrize("sender,receiver", [("2.22", "2.23"), ("2.23", "2.22")], ids=["2.22-to-2.23", "2.23-to-2.22"])
def test_screen_share_is_a_second_video_track(server, browser, sender, receiver):
    """(c) A screen share published next to the camera reaches the other participant as a
    separate video track with source screen_share."""
    room = "!screen:example.org"
    alice, bob = browser.open("alice", sender), browser.open("bob", receiver)
    connect_all([alice, bob], room)
    cam = alice.call("publishCamera", SMALL)
    screen = alice.call("publishScreen", {"width": 640, "height": 360})
    print(f"screen share published via {screen['method']}: {screen}")
    assert screen["source"] == "screen_share" and screen["sid"] != cam["sid"], (cam, screen)

    last = assert_media_flows({bob: {"alice": {"camera", "screen_share"}}})
    tracks = {t["source"]: t for t in remote_tracks(last["bob"], "alice")}
    assert tracks["screen_share"]["sid"] == screen["sid"] and tracks["camera"]["sid"] == cam["sid"], tracks
    assert all(t["kind"] == "video" for t in tracks.values()), tracks
    subs = bob.events("trackSubscribed", identity="alice")
    assert sorted(e["source"] for e in subs) == ["camera", "screen_share"], subs

    # stopping the share removes just that track
    alice.call("unpublish", "screen_share")
    bob.wait_event("trackUnpublished", 10, identity="alice", source="screen_share")
    s = bob.wait_until(lambda s: not remote_tracks(s, "alice", source="screen_share"), 10, "screen share gone")
    assert [t["source"] for t in remote_tracks(s, "alice")] == ["camera"], s["remote"]
    assert_undisturbed(alice, bob)


def test_data_packets_reach_everyone_else(server, browser):
    """(d) Reliable and lossy data packets with a topic, from each of three participants (two
    livekit-client versions mixed), reach both others and never come back to the sender."""
    room = "!data:example.org"
    pages = [browser.open("alice", "2.22"), browser.open("bob", "2.23"), browser.open("carol", "2.22")]
    connect_all(pages, room)
    for p in pages:  # everyone knows everyone before anything is sent
        p.wait_until(lambda s: len(s["remote"]) == 2, 10, "both others in the room")
    n_reliable, n_lossy = 5, 5
    for p in pages:
        for i in range(n_reliable):
            p.call("publishData", f"{p.name} reliable {i}", {"reliable": True, "topic": "chat"})
        for i in range(n_lossy):
            p.call("publishData", f"{p.name} lossy {i}", {"reliable": False, "topic": "cursor"})

    names = [p.name for p in pages]
    for p in pages:
        others = [n for n in names if n != p.name]
        want = len(others) * n_reliable
        p.wait_event("dataReceived", 10, count=want, kind="reliable")
        time.sleep(0.5)  # stragglers (lossy ones, or a duplicate) would arrive by now
        got = p.events("dataReceived")
        assert not [e for e in got if e["from"] == p.name or p.name + " " in e["text"]], f"{p.name} got its own: {got}"
        for sender in others:
            rel = [e for e in got if e["from"] == sender and e["kind"] == "reliable"]
            assert [e["text"] for e in rel] == [f"{sender} reliable {i}" for i in range(n_reliable)], (
                f"{p.name} <- {sender} reliable (in order, once each): {rel}")
            assert all(e["topic"] == "chat" for e in rel), rel
            lossy = [e for e in got if e["from"] == sender and e["kind"] == "lossy"]
            # lossy may drop, but nothing here loses packets; some must arrive, none twice
            texts = [e["text"] for e in lossy]
            assert len(texts) >= n_lossy - 2 and len(set(texts)) == len(texts), f"{p.name} <- {sender} lossy: {lossy}"
            assert set(texts) <= {f"{sender} lossy {i}" for i in range(n_lossy)}, lossy
            assert all(e["topic"] == "cursor" for e in lossy), lossy
    assert_undisturbed(*pages)

    # a browser leaving (room.disconnect(): a leave request) is seen by the others at once
    carol = pages[2]
    carol.call("disconnect")
    for p in pages[:2]:
        p.wait_event("participantDisconnected", LEAVE_SEEN_S, identity="carol")


@pytest.mark.parametrize("path", ["rtc-v1", "rtc-server-disabled-v1", "rtc-client-dual-pc"])
def test_signalling_paths(start_server, browser, path):
    """(e) Both signalling paths carry a working call, with both livekit-client versions in the
    room: /rtc/v1 (single peer connection, the clients' default); /rtc reached by falling
    back when the server has --disable-rtc-v1 (/rtc/v1 404s, then the client checks
    /rtc/v1/validate cross-origin, then dials /rtc); /rtc chosen by the client
    (singlePeerConnection: false)."""
    server = start_server(*(["--disable-rtc-v1"] if path == "rtc-server-disabled-v1" else []))
    opts = {"singlePeerConnection": False} if path == "rtc-client-dual-pc" else {}
    want_path = "/rtc/v1" if path == "rtc-v1" else "/rtc"
    room = f"!{path}:example.org"
    alice, bob = browser.open("alice", "2.22"), browser.open("bob", "2.23")
    connect_all([alice, bob], room, **opts)
    for p in (alice, bob):
        p.call("publishCamera", SMALL)
        p.call("publishMic")
    av = {"camera", "microphone"}
    assert_media_flows({alice: {"bob": av}, bob: {"alice": av}})
    assert_undisturbed(alice, bob)

    served = joined_paths(server)
    assert served == {"alice": want_path, "bob": want_path}, f"server log says the joins came over {served}"
    for p in (alice, bob):
        dialled = signalling_paths(p)
        asked = [(r["method"], urlparse(r["url"]).path, r["status"]) for r in p.requests()]
        if path == "rtc-server-disabled-v1":
            # one refused /rtc/v1 attempt, the cross-origin check of why, then /rtc
            assert dialled == ["/rtc/v1", "/rtc"], f"{p.name} opened WebSockets to {dialled}"
            assert asked == [("GET", "/rtc/v1/validate", 404)], f"{p.name} made requests {asked}"
        else:
            assert dialled == [want_path], f"{p.name} opened WebSockets to {dialled}"
            assert asked == [], f"{p.name} made requests {asked}"


@pytest.mark.parametrize("option", ["e2ee", "encryption"])
def test_e2ee_shared_key(server, browser, option):
    """(f) End-to-end encryption with a shared key (ExternalE2EEKeyProvider + the e2ee worker),
    between livekit-client 2.22 and 2.23: media is published encrypted, the receivers decrypt
    and decode it, and nobody reports an encryption error. `option` is the RoomOptions field:
    `e2ee` (what Element Call sets) or `encryption` (newer; also encrypts data packets, so a
    data packet is sent as well)."""
    key = "switchboard-browser-e2ee-shared-key"
    room = f"!e2ee-{option}:example.org"
    alice, bob = browser.open("alice", "2.22"), browser.open("bob", "2.23")
    # control: a subscriber with the wrong key must decode nothing, which shows that the media
    # really is encrypted end to end and that alice and bob decode through their decryptors
    eve = browser.open("eve", "2.23")
    joined = connect_all([alice, bob], room, e2eeKey=key, e2eeOption=option)
    joined["eve"] = eve.connect(room, e2eeKey="not-the-key", e2eeOption=option)
    assert all(j["e2eeEnabled"] for j in joined.values()), joined
    for p in (alice, bob):
        p.call("publishCamera", SMALL)
        p.call("publishMic")
    av = {"camera", "microphone"}
    last = assert_media_flows({alice: {"bob": av}, bob: {"alice": av}})
    for me, other in (("alice", "bob"), ("bob", "alice")):
        for t in remote_tracks(last[me], other):
            assert t["encryption"] == "GCM", f"{me} sees {other}'s {t['source']} as not encrypted: {t}"

    # eve receives the same packets but no frame decrypts
    s = eve.wait_until(lambda s: all(inbound(t, "packetsReceived") >= MIN_AUDIO_PACKETS_RISE
                                     for i in ("alice", "bob") for t in remote_tracks(s, i))
                       and len(remote_tracks(s, "alice")) == len(remote_tracks(s, "bob")) == 2,
                       MEDIA_START_S, "eve receiving all four tracks")
    decoded = {f"{i}/{t['source']}": inbound(t, "framesDecoded")
               for i in ("alice", "bob") for t in remote_tracks(s, i, kind="video")}
    assert not any(decoded.values()), f"eve decoded video with the wrong key: {decoded}"
    failed = {e["identity"] for e in eve.wait_event("encryptionError", 10)}
    assert failed <= {"alice", "bob"}, failed

    if option == "encryption":
        alice.call("publishData", "secret hello", {"reliable": True, "topic": "e2ee"})
        got = bob.wait_event("dataReceived", 10, topic="e2ee")
        assert [(e["from"], e["text"]) for e in got] == [("alice", "secret hello")], got
    assert_undisturbed(alice, bob)


@pytest.mark.parametrize("subscriber,publisher", [("2.22", "2.23"), ("2.23", "2.22")],
                         ids=["subscriber-2.22", "subscriber-2.23"])
def test_adaptive_stream_pauses_hidden_video(server, browser, subscriber, publisher):
    """(g) adaptiveStream + dynacast (Element Call's room options): when the subscriber's
    <video> element is hidden, livekit-client disables the subscription (UpdateTrackSettings)
    and the server stops forwarding that video; shown again, it resumes and decodes (the
    server has to get a key frame from the publisher). The audio of the same publisher flows
    throughout."""
    room = "!adaptive:example.org"
    alice, bob = browser.open("alice", publisher), browser.open("bob", subscriber)
    alice.connect(room, dynacast=True)
    bob.connect(room, adaptiveStream=True, dynacast=True)
    alice.call("publishCamera", SMALL)
    alice.call("publishMic")
    assert_media_flows({bob: {"alice": {"camera", "microphone"}}})

    def cam(s: dict) -> dict:
        return remote_tracks(s, "alice", source="camera")[0]

    def mic(s: dict) -> dict:
        return remote_tracks(s, "alice", source="microphone")[0]

    def forwarded_video() -> float:
        return metric(server.metrics(), "switchboard_rtp_forwarded_video_packets_total")

    assert bob.call("setVideoVisible", "alice", False) == 1
    time.sleep(PAUSE_SETTLE_S)  # the client's visibility debounce, the packets in flight
    s1, f1 = bob.stats(), forwarded_video()
    time.sleep(SAMPLE_GAP_S)
    s2, f2 = bob.stats(), forwarded_video()
    # Media bytes, not packets: the server's bandwidth estimator keeps a little padding
    # (payload-less RTP, which Chrome counts in packetsReceived) going to probe the link.
    video_rise = inbound(cam(s2), "bytesReceived") - inbound(cam(s1), "bytesReceived")
    audio_rise = inbound(mic(s2), "packetsReceived") - inbound(mic(s1), "packetsReceived")
    print(f"hidden for {SAMPLE_GAP_S}s: {video_rise} video bytes, {audio_rise} audio packets received;"
          f" server forwarded {f2 - f1} video packets")
    assert video_rise <= MAX_PACKETS_PAUSED * 1200, (
        f"hidden video still forwarded: {video_rise} bytes in {SAMPLE_GAP_S}s ({cam(s1)} -> {cam(s2)})")
    # bob is the only subscriber: the server's own counter shows it stopped forwarding
    assert f2 - f1 <= MAX_PACKETS_PAUSED, f"server forwarded {f2 - f1} video packets while hidden"
    assert audio_rise >= MIN_AUDIO_PACKETS_RISE, f"audio stopped with the video: {mic(s1)} -> {mic(s2)}"

    assert bob.call("setVideoVisible", "alice", True) == 1
    before = inbound(cam(s2), "framesDecoded")
    t_show = time.monotonic()
    bob.wait_until(lambda s: inbound(cam(s), "framesDecoded") >= before + MIN_FRAMES_RISE, RESUME_S,
                   f"{MIN_FRAMES_RISE} more decoded frames after showing the video again")
    print(f"shown again: {MIN_FRAMES_RISE} more frames decoded within {time.monotonic() - t_show:.1f}s")
    assert forwarded_video() - f2 >= MIN_FRAMES_RISE, "server counter did not rise after showing the video"
    assert_undisturbed(alice, bob)
