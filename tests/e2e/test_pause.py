"""UpdateTrackSettings{disabled} pauses forwarding of a subscription and re-enabling resumes it.

The subscriber disables/enables its remote publications the way the Rust SDK's
RemoteTrackPublication::set_enabled does (peer.py --at disable-remote / enable-remote), which
sends UpdateTrackSettings{track_sids, disabled}. With one publisher and one subscriber that
publishes nothing, every RTP packet the server forwards belongs to those two subscriptions, so
switchboard_rtp_forwarded_packets_total shows whether forwarding stopped.
"""
from __future__ import annotations

import time

from harness import assert_joined, metric

DISABLE_AT, ENABLE_AT = 4.0, 11.0  # seconds after the subscriber's setup
SETTLE_S = 1.5  # after each switch, before the counter is judged
MAX_RISE_PAUSED = 10  # packets in flight when the switch came, at most
MIN_RISE_FLOWING = 100  # audio alone is 50 packets/s


def _rise(samples: list[tuple[float, float]], t0: float, t1: float) -> tuple[float, float]:
    """Counter rise between the first sample at/after t0 and the last at/before t1, and the
    seconds between those samples."""
    inside = [(t, v) for t, v in samples if t0 <= t <= t1]
    assert len(inside) >= 2, f"fewer than 2 samples in {t0:.1f}..{t1:.1f}: {samples}"
    return inside[-1][1] - inside[0][1], inside[-1][0] - inside[0][0]


def test_disabling_a_subscription_pauses_forwarding_and_enabling_resumes_it(server, peers):
    room = "!pause:example.org"
    alice = peers("alice", room, duration=30, tone=440.0, video=True)
    bob = peers("bob", room, duration=ENABLE_AT + 7, wait_for=["alice"], settle=2.0,
                extra=["--at", f"{DISABLE_AT}:disable-remote", "--at", f"{ENABLE_AT}:enable-remote"])
    samples: list[tuple[float, float]] = []
    t_end = time.monotonic() + 60
    while bob.proc.poll() is None and time.monotonic() < t_end:
        samples.append((time.time(), metric(server.metrics(), "switchboard_rtp_forwarded_packets_total")))
        time.sleep(0.3)
    b = bob.wait()
    alice.proc.terminate()
    a = alice.wait()
    assert_joined(a, "alice")
    assert_joined(b, "bob")
    acts = {e["action"]: e for e in b["events"] if e["type"] == "action"}
    assert set(acts) == {"disable-remote", "enable-remote"}, b["events"]
    assert sorted(acts["disable-remote"]["sids"]) == sorted(
        [a["published"]["audio"]["sid"], a["published"]["video"]["sid"]]), (acts, a["published"])
    t_off, t_on = acts["disable-remote"]["t"], acts["enable-remote"]["t"]

    before, span_before = _rise(samples, t_off - 3.0, t_off)
    paused, span_paused = _rise(samples, t_off + SETTLE_S, t_on)
    after, span_after = _rise(samples, t_on + SETTLE_S, t_on + SETTLE_S + 4.0)
    report = (f"forwarded: {before:.0f} in {span_before:.1f}s before disabling, {paused:.0f} in {span_paused:.1f}s"
              f" while disabled, {after:.0f} in {span_after:.1f}s after enabling")
    print(report)
    assert before >= MIN_RISE_FLOWING * span_before / 3.0, report
    assert paused <= MAX_RISE_PAUSED, report
    assert after >= MIN_RISE_FLOWING * span_after / 4.0, report

    # bob's decoder agrees: no new frame counters while disabled, new ones soon after enabling
    counters = b["remote"]["alice"]["video"]["counters"]
    during = [c for c, t in counters if t_off + SETTLE_S <= t <= t_on]
    resumed = [c for c, t in counters if t_on < t <= t_on + 5.0]
    assert not during, f"bob decoded {len(during)} frames while the track was disabled"
    assert len(resumed) >= 15, f"bob decoded {len(resumed)} frames in the 5 s after enabling"
