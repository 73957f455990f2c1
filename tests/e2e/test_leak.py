"""100 joins and leaves leave nothing behind: gauges and open file descriptors return to their
baseline (counts, not memory)."""
from __future__ import annotations

import json
import subprocess
import time

import harness
from harness import assert_joined, metric

LOOPS, PER_LOOP = 2, 50  # two processes in parallel, 50 join/publish/leave cycles each
GAUGES = ["switchboard_rooms", "switchboard_participants", "switchboard_media_participants",
          "switchboard_sessions", "switchboard_published_tracks", "switchboard_subscriptions",
          "switchboard_tasks"]
FD_SLACK = 3
CHURN_TIMEOUT_S = 150


def _churn_result(log) -> dict:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("{")]
    assert lines, f"no result line in {log}:\n{harness.tail(log, 30)}"
    return json.loads(lines[-1])


def test_hundred_joins_and_leaves_leave_no_gauges_or_fds_behind(server, peers, netns, workdir):
    room = "!churn:example.org"
    baseline = server.metrics()
    assert all(metric(baseline, g) == 0 for g in GAUGES), {g: metric(baseline, g) for g in GAUGES}
    fds0 = server.fd_count()

    # someone stays in the room throughout, so every churner is announced and subscribed to
    # (and publishes, so every churner subscribes to something too)
    observer = peers("observer", room, duration=CHURN_TIMEOUT_S + 30, tone=440.0, extra=["--no-receive"])
    server.wait_metrics({"switchboard_participants": 1}, timeout=20)
    loops = []
    for k in range(LOOPS):
        log = workdir / f"churn-{k}.log"
        cmd = [harness.PYTHON, str(harness.HERE / "churn.py"), "--url", harness.WS_URL, "--room", room,
               "--count", str(PER_LOOP), "--prefix", f"churn{k}"]
        loops.append((netns.popen(cmd, log), log))
    t_end = time.monotonic() + CHURN_TIMEOUT_S
    for proc, log in loops:
        try:
            proc.wait(max(1.0, t_end - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"churn not done in {CHURN_TIMEOUT_S}s:\n{harness.tail(log, 20)}") from None
    results = [_churn_result(log) for _, log in loops]
    failures = [f for r in results for f in r["failures"]]
    assert sum(r["ok"] for r in results) == LOOPS * PER_LOOP, f"failed cycles: {failures[:10]}"

    # only the observer is left: one room, one participant, nothing published or subscribed
    only_observer = {"switchboard_rooms": 1, "switchboard_participants": 1, "switchboard_media_participants": 1,
                     "switchboard_published_tracks": 1, "switchboard_subscriptions": 0, "switchboard_tasks": 1}
    server.wait_metrics(only_observer, timeout=15)
    observer.proc.terminate()
    o = observer.wait()
    assert_joined(o, "observer")
    seen = {e["identity"] for e in harness.events(o, "participant_connected")}
    gone = {e["identity"] for e in harness.events(o, "participant_disconnected")}
    assert len(seen) == LOOPS * PER_LOOP and seen == gone, (len(seen), len(gone), sorted(seen - gone)[:5])
    # the churners' tracks went live and were subscribed to (most of them: each stays only 1 s)
    subscribed = {e["identity"] for e in harness.events(o, "track_subscribed")}
    assert len(subscribed) >= LOOPS * PER_LOOP // 2, f"observer subscribed to {len(subscribed)} churners' tracks"

    end = server.wait_metrics({g: 0 for g in GAUGES}, timeout=15)
    # file descriptors: sockets, timers and the like all closed again (the count may lag a moment)
    deadline = time.monotonic() + 10
    while abs(server.fd_count() - fds0) > FD_SLACK and time.monotonic() < deadline:
        time.sleep(0.5)
    fds1 = server.fd_count()
    assert abs(fds1 - fds0) <= FD_SLACK, f"open fds {fds0} before, {fds1} after {LOOPS * PER_LOOP} joins"
    print(f"fds {fds0} -> {fds1}; {len(subscribed)} churners subscribed to; gauges {({g: metric(end, g) for g in GAUGES})}")
