#!/usr/bin/env python3
"""Measure a call against target/release/switchboard (not a test: pytest does not collect it).

Run as root from the repo root, with the e2e venv's interpreter:

    V=$(ls -d ~/.cache/switchboard/venv-*); $V/bin/python tests/e2e/measure_call.py [--joins 10]

Starts the server in a fresh network namespace (the harness's), then prints one JSON object:
  join_to_first_frame_s  median and p90 over --joins joins of the time from room.connect()
                         starting to the first decoded frame of the video of a publisher already
                         in the room (each join a new peer.py process; its start-up not counted),
                         plus the connect part alone;
  rss_kb                 the server's VmRSS: idle at start, with 3 participants each publishing
                         audio + video after --call-seconds (15), and with 0 participants after
                         they left.
Logs and peer results stay in the printed workdir. ~1.5 minutes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

# the dev secret "secret" is short on purpose (it is the server's --dev key); as in pytest.ini
warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.4999)) - 1))
    return s[k]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--joins", type=int, default=10)
    ap.add_argument("--call-seconds", type=float, default=15.0)
    a = ap.parse_args()
    harness.cleanup_stale_namespaces()
    workdir = Path(tempfile.mkdtemp(prefix="sb-measure-"))
    ns = harness.Netns()
    server = None
    peers: list[harness.Peer] = []
    out: dict = {"server": str(harness.server_bin()), "workdir": str(workdir)}
    try:
        ns.create()
        server = harness.Server(ns, workdir, []).start()
        time.sleep(1)
        rss_idle = server.rss_kb()

        # (i) joins against a room where a publisher is already sending
        room = "!measure-join:example.org"
        pub = harness.Peer(ns, workdir, "publisher", room, duration=600, tone=440.0, video=True).start()
        peers.append(pub)
        server.wait_metrics({"switchboard_published_tracks": 2}, timeout=30)
        total, connect, failures = [], [], []
        for i in range(a.joins):
            p = harness.Peer(ns, workdir, f"joiner-{i}", room, duration=4.0).start()
            peers.append(p)
            r = p.wait()
            v = r["remote"].get("publisher", {}).get("video", {})
            if not r["connected"] or not v.get("first_frame_t"):
                failures.append({"joiner": i, "connect_error": r.get("connect_error"), "video": v})
                continue
            total.append(v["first_frame_t"] - r["connect_started"])
            connect.append(r["connected"] - r["connect_started"])
        pub.kill()
        server.wait_metrics({"switchboard_participants": 0}, timeout=30)
        out["join_to_first_frame_s"] = {
            "joins": len(total), "failed": failures,
            "median": round(statistics.median(total), 3) if total else None,
            "p90": round(pct(total, 90), 3) if total else None,
            "min": round(min(total), 3) if total else None, "max": round(max(total), 3) if total else None,
            "connect_median": round(statistics.median(connect), 3) if connect else None,
            "connect_p90": round(pct(connect, 90), 3) if connect else None,
        }

        # (ii) three participants, each publishing audio + video
        room = "!measure-rss:example.org"
        call = [harness.Peer(ns, workdir, who, room, duration=a.call_seconds + 20, tone=hz, video=True).start()
                for who, hz in (("alice", 440.0), ("bob", 550.0), ("carol", 660.0))]
        peers.extend(call)
        server.wait_metrics({"switchboard_participants": 3, "switchboard_published_tracks": 6}, timeout=30)
        server.wait_metrics({"switchboard_subscriptions": 12}, timeout=30)
        time.sleep(a.call_seconds)
        m = server.metrics()
        rss_call = server.rss_kb()
        forwarded = harness.metric(m, "switchboard_rtp_forwarded_packets_total")
        # (iii) after they left
        for p in call:
            p.proc.terminate()
        for p in call:
            p.wait()
        server.wait_metrics({"switchboard_participants": 0, "switchboard_sessions": 0, "switchboard_rooms": 0},
                            timeout=30)
        time.sleep(2)
        rss_after = server.rss_kb()
        out["rss_kb"] = {"idle_at_start": rss_idle, "three_publishing_after_s": a.call_seconds,
                         "three_publishing": rss_call, "after_all_left": rss_after}
        out["forwarded_packets_total_at_call_sample"] = forwarded
    finally:
        for p in peers:
            p.kill()
        if server is not None:
            server.stop()
        ns.destroy()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
