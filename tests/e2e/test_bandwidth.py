"""Bandwidth adaptation on a real link: a Chromium livekit-client publisher sends simulcast
(Element Call's layers: 1280x720 with 640x360 and 320x180 below, VP8) and two LiveKit Python
SDK subscribers each watch it from their own network namespace, joined to the server's by a
veth pair. One subscriber's link is narrowed (tc tbf 300 kbit/s, 3 % random loss with
nftables): it must move to the low layer while the other stays on the high one, keep
decoding, and get the high layer back once the link is clear again."""
from __future__ import annotations

import time

import pytest

import harness

HIGH = (1280, 720)
LOW = (320, 180)
CAMERA = {"width": 1280, "height": 720, "simulcast": True}
START_S = 40.0  # both subscribers decoding the high layer (join, Chrome's ramp-up to 720p)
DOWN_S = 10.0  # narrowed link -> low layer (the bound)
UP_S = 15.0  # clear link -> high layer again (the bound)
SHAPE_RATE_KBIT = 300
SHAPE_LOSS_PCT = 3
MAX_GAP_S = 6.0  # longest time without a decoded frame on the narrowed link: the seconds the
# high layer overruns the narrowed link until the estimate shows it and the low layer's keyframe
# arrives (1-5 s measured here)
MAX_FREEZES = 5  # gaps of more than 1 s between decoded frames, narrowing to recovery


def last_size(peer: harness.Peer, identity: str) -> tuple[int, int] | None:
    sizes = [e for e in peer.events_so_far() if e["type"] == "video_size" and e.get("identity") == identity]
    return (sizes[-1]["width"], sizes[-1]["height"]) if sizes else None


def wait_size(peer: harness.Peer, identity: str, want: tuple[int, int], timeout: float) -> float:
    """Seconds until `peer` decodes `identity`'s video at `want` (AssertionError after timeout)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if last_size(peer, identity) == want:
            return time.monotonic() - t0
        if peer.proc is not None and peer.proc.poll() is not None:
            raise AssertionError(f"peer {peer.identity} exited: {harness.tail(peer.log, 30)}")
        time.sleep(0.2)
    raise AssertionError(f"{peer.identity}: {identity}'s video at {last_size(peer, identity)}, not {want},"
                         f" after {timeout}s")


@pytest.fixture
def linked(netns):
    """linked(i) -> harness.LinkedNetns, created; destroyed (with its link shaping) at teardown."""
    made: list[harness.LinkedNetns] = []

    def _make(i: int) -> harness.LinkedNetns:
        ns = harness.LinkedNetns(netns, i).create()
        made.append(ns)
        return ns

    yield _make
    for ns in made:
        ns.unshape()
        ns.destroy()


@pytest.mark.skipif(harness.nft_bin() is None, reason="nftables missing: run scripts/install-test-deps.sh")
def test_a_narrow_link_gets_the_low_layer_and_the_high_one_back(start_server, browser, linked, workdir):
    # --dev listens on loopback only; the subscribers come from their own namespaces
    server = start_server(env={"SWITCHBOARD_HTTP__BIND": "0.0.0.0"})
    room = "!bandwidth:example.org"
    pub = browser.open("pub", "2.23")
    pub.connect(room, dynacast=False)
    cam = pub.call("publishCamera", CAMERA)
    assert (cam["captured"]["width"], cam["captured"]["height"]) == HIGH, cam

    subs = {}
    for i, who in enumerate(("clear", "narrow"), start=1):
        ns = linked(i)
        p = harness.Peer(ns, workdir, who, room, duration=START_S + DOWN_S + UP_S + 40, url=ns.url)
        subs[who] = (ns, p.start())
    try:
        for who, (_, p) in subs.items():
            wait_size(p, "pub", HIGH, START_S)
        before = harness.metric(server.metrics(), "switchboard_bandwidth_downgrades_total") or 0

        narrow_ns, narrow = subs["narrow"]
        clear = subs["clear"][1]
        narrow_ns.shape(SHAPE_RATE_KBIT, SHAPE_LOSS_PCT)
        shaped_at = time.time()
        down = wait_size(narrow, "pub", LOW, DOWN_S)
        print(f"narrowed link on the low layer after {down:.1f} s")
        time.sleep(5)
        assert last_size(clear, "pub") == HIGH, "the clear link keeps the high layer"
        assert last_size(narrow, "pub") == LOW, "the narrowed link stays low while narrow"
        after = harness.metric(server.metrics(), "switchboard_bandwidth_downgrades_total") or 0
        assert after > before, "the server counted the downgrade"

        narrow_ns.unshape()
        cleared_at = time.time()
        up = wait_size(narrow, "pub", HIGH, UP_S)
        print(f"cleared link back on the high layer after {up:.1f} s")
        time.sleep(3)
    finally:
        for _, p in subs.values():
            if p.proc is not None and p.proc.poll() is None:
                p.proc.terminate()  # SIGTERM: the peer leaves and writes its result
    res = {who: p.wait() for who, (_, p) in subs.items()}
    # The narrowed subscriber kept decoding: no long gap between frames while narrow or after.
    frames = res["narrow"]["remote"]["pub"]["video"]["frame_t"]
    window = [t for t in frames if shaped_at <= t <= cleared_at + up + 3]
    gaps = [b - a for a, b in zip(window, window[1:])]
    worst = sorted(((b - a, a - shaped_at) for a, b in zip(window, window[1:])), reverse=True)[:3]
    print(f"longest gaps (s, at s after narrowing; cleared at {cleared_at - shaped_at:.1f}):",
          [(round(g, 2), round(t, 1)) for g, t in worst])
    assert window and max(gaps, default=0) <= MAX_GAP_S, \
        f"narrowed link froze for {max(gaps, default=0):.1f} s ({len(window)} frames)"
    freezes = [g for g in gaps if g > 1.0]
    assert len(freezes) <= MAX_FREEZES, f"narrowed link froze {len(freezes)} times: {freezes}"
    per_s = len(window) / max(1.0, window[-1] - window[0])
    print(f"narrowed link decoded {len(window)} frames ({per_s:.1f}/s) from narrowing to recovery")
