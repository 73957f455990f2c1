"""Dynacast against a real livekit-client publisher in headless Chromium: the server tells the
publisher (SubscribedQualityUpdate) which simulcast layers its subscribers need, and
livekit-client (room option `dynacast`, which Element Call turns on) stops encoding the others.

Judged by the publisher's own RTCRtpSender stats (outbound-rtp per rid): a layer nobody needs
stops sending (bytesSent stays put), one that is needed again sends again. The server's log
line "subscribed quality update" shows what it told. Bounds are behaviour bounds, generous:
the server waits 5 s before telling a downgrade and 10 s after a track went live before its
first update; Chrome then needs a moment to apply setParameters.

Publisher options are Element Call's: VP8, simulcast, a 1280x720 camera (livekit-client then
sends q 320x180, h 640x360, f 1280x720). livekit-client 2.22 (Element Call's) and 2.23. Harness: tests/e2e/browser.py, tests/browser/client.js.
"""
from __future__ import annotations

import re
import time

import pytest

from browser import MEDIA_START_S, assert_media_flows, assert_undisturbed, inbound, remote_tracks, sent_rids

VERSIONS = ["2.22", "2.23"]  # Element Call's and the newest
CAMERA = {"width": 1280, "height": 720, "simulcast": True}
LAYERS_SENT_S = 20  # Chrome turns all three layers on once its bandwidth estimate allows
DOWNGRADE_S = 25  # cap -> upper layers stop: 5 s server debounce + Chrome + slack
INITIAL_PUSH_S = 30  # unwatched track -> every layer stops: 10 s after going live + slack
UPGRADE_S = 15  # uncap -> the full layer sends again: told at once, Chrome restarts the encoder
HIGH_RECEIVED_S = 30  # ... and the subscriber decodes 1280x720 (after a key frame; BWE ramps)
WINDOW_S = 3.0  # a layer is "stopped" when its bytesSent did not grow over this long
MIN_LIVE_BYTES = 3000  # a sending layer sends more than this per window (q: ~50 kB/s)


def outbound_bytes(stats: dict) -> dict[str, int]:
    """bytesSent per rid of the page's own camera."""
    cam = [t for t in stats["local"] if t["source"] == "camera"][0]
    return {o.get("rid", ""): int(o.get("bytesSent", 0)) for o in cam["outbound"]}


def rates(page, window: float = WINDOW_S) -> dict[str, float]:
    """Bytes per second each rid of the page's camera sent over `window` seconds."""
    a = outbound_bytes(page.stats())
    time.sleep(window)
    b = outbound_bytes(page.stats())
    return {rid: (b.get(rid, 0) - a.get(rid, 0)) / window for rid in sorted(b)}


def wait_rates(page, pred, timeout: float, what: str) -> dict[str, float]:
    """Samples rates() until pred(rates) holds; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        r = rates(page)
        seen.append({k: round(v) for k, v in r.items()})
        if pred(r):
            return r
        if time.monotonic() > deadline:
            raise AssertionError(f"{page.name}: not {what} within {timeout}s; bytes/s per rid seen: {seen}")


def quality_updates(server) -> list[str]:
    """The layer lists of every SubscribedQualityUpdate the server sent, in order."""
    return re.findall(r"subscribed quality update.*?layers=PerLayer\((\[[^\]]*\])\)", server.log.read_text())


def stopped(rid: str):
    return lambda r: r.get(rid, 0) * WINDOW_S < 1


def sending(rid: str):
    return lambda r: r.get(rid, 0) * WINDOW_S >= MIN_LIVE_BYTES


@pytest.mark.parametrize("version", VERSIONS)
def test_capped_subscriber_turns_the_upper_layers_off_and_uncapping_brings_them_back(server, browser, version):
    """One publisher (dynacast), one subscriber (adaptiveStream off) capped to LOW: after the
    debounce the publisher stops sending h and f and keeps q; the subscriber keeps decoding.
    Uncapped, the publisher sends f again and the subscriber then receives 1280x720."""
    room = f"!dynacast-cap-{version}:example.org"
    alice, bob = browser.open("alice", version), browser.open("bob", version)
    alice.connect(room, dynacast=True)
    bob.connect(room, dynacast=True)
    cam = alice.call("publishCamera", CAMERA)
    assert cam["captured"]["width"] == 1280 and cam["captured"]["height"] == 720, cam
    assert_media_flows({bob: {"alice": {"camera"}}})
    alice.wait_until(lambda s: sent_rids(s) == ["f", "h", "q"], LAYERS_SENT_S, "camera sending rids f, h, q")
    full = wait_rates(alice, lambda r: all(sending(x)(r) for x in "qhf"), LAYERS_SENT_S, "sending q, h and f")
    print(f"uncapped: bytes/s per rid {full}")

    assert bob.call("setVideoQuality", "alice", "LOW") == 1
    t_cap = time.monotonic()
    low = wait_rates(alice, lambda r: stopped("h")(r) and stopped("f")(r), DOWNGRADE_S, "h and f stopped")
    print(f"capped to LOW: h and f stopped within {time.monotonic() - t_cap:.1f}s; bytes/s per rid {low}")
    assert sending("q")(low), f"the low layer stopped too: {low}"
    assert "[true, false, false]" in quality_updates(server), quality_updates(server)
    # the subscriber still decodes, from the low layer
    before = bob.stats()
    time.sleep(WINDOW_S)
    after = bob.stats()
    c1, c2 = (remote_tracks(s, "alice", source="camera")[0] for s in (before, after))
    assert inbound(c2, "framesDecoded") > inbound(c1, "framesDecoded") + 10, f"{c1} -> {c2}"
    assert inbound(c2, "frameWidth") == 320, f"capped subscriber receives {inbound(c2, 'frameWidth')} wide"

    assert bob.call("setVideoQuality", "alice", "HIGH") == 1
    t_up = time.monotonic()
    back = wait_rates(alice, sending("f"), UPGRADE_S, "f sending again")
    print(f"uncapped again: f back within {time.monotonic() - t_up:.1f}s; bytes/s per rid {back}")
    assert quality_updates(server)[-1] == "[true, true, true]", quality_updates(server)
    bob.wait_until(lambda s: inbound(remote_tracks(s, "alice", source="camera")[0], "frameWidth") == 1280,
                   HIGH_RECEIVED_S, "subscriber receiving 1280x720 again")
    print(f"subscriber decodes 1280x720 {time.monotonic() - t_up:.1f}s after uncapping")
    assert_undisturbed(alice, bob)


def test_unwatched_camera_stops_and_a_subscriber_brings_it_back(server, browser):
    """A publisher alone in the room: 10 s after its camera went live the server tells it no
    layer is needed and it stops sending video; a subscriber joining turns it back on at once
    and decodes it."""
    room = "!dynacast-alone:example.org"
    alice = browser.open("alice", "2.22")
    alice.connect(room, dynacast=True)
    alice.call("publishCamera", CAMERA)
    t_pub = time.monotonic()
    off = wait_rates(alice, lambda r: r and all(stopped(x)(r) for x in r), INITIAL_PUSH_S, "every rid stopped")
    print(f"unwatched: every layer stopped {time.monotonic() - t_pub:.1f}s after publishing; bytes/s {off}")
    assert quality_updates(server) == ["[false, false, false]"], quality_updates(server)

    bob = browser.open("bob", "2.22")
    t_join = time.monotonic()
    bob.connect(room, dynacast=True)
    assert_media_flows({bob: {"alice": {"camera"}}}, timeout=MEDIA_START_S)
    print(f"subscriber decodes the camera {time.monotonic() - t_join:.1f}s after joining")
    on = wait_rates(alice, sending("f"), UPGRADE_S, "f sending again")
    print(f"watched again: bytes/s per rid {on}")
    assert quality_updates(server)[-1] == "[true, true, true]", quality_updates(server)
    assert_undisturbed(alice, bob)


def test_adaptive_stream_hiding_the_only_view_stops_the_camera_and_showing_resumes_it(server, browser):
    """Element Call's options on both sides (adaptiveStream + dynacast): the only subscriber
    hides its <video>, its subscription pauses, and after the debounce the publisher sends no
    video at all; shown again, the publisher's layers come back and the subscriber decodes."""
    room = "!dynacast-adaptive:example.org"
    alice, bob = browser.open("alice", "2.23"), browser.open("bob", "2.23")
    alice.connect(room, dynacast=True)
    bob.connect(room, adaptiveStream=True, dynacast=True)
    alice.call("publishCamera", CAMERA)
    assert_media_flows({bob: {"alice": {"camera"}}})
    assert bob.call("setVideoVisible", "alice", False) == 1
    t_hide = time.monotonic()
    off = wait_rates(alice, lambda r: r and all(stopped(x)(r) for x in r), INITIAL_PUSH_S, "every rid stopped")
    print(f"hidden: every layer stopped within {time.monotonic() - t_hide:.1f}s; bytes/s {off}")
    assert quality_updates(server)[-1] == "[false, false, false]", quality_updates(server)

    def cam(s: dict) -> dict:
        return remote_tracks(s, "alice", source="camera")[0]

    before = inbound(cam(bob.stats()), "framesDecoded")
    assert bob.call("setVideoVisible", "alice", True) == 1
    t_show = time.monotonic()
    bob.wait_until(lambda s: inbound(cam(s), "framesDecoded") >= before + 20, UPGRADE_S,
                   "20 more decoded frames after showing the video again")
    print(f"shown again: decoding within {time.monotonic() - t_show:.1f}s")
    assert quality_updates(server)[-1] != "[false, false, false]", quality_updates(server)
    assert_undisturbed(alice, bob)
