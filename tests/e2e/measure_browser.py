#!/usr/bin/env python3
"""Measure livekit-client in headless Chromium against target/release/switchboard (not a
test: pytest does not collect it).

Run as root from the repo root, with the e2e venv's interpreter:

    V=$(scripts/install-test-deps.sh | tail -1); $V/bin/python tests/e2e/measure_browser.py [--joins 5]

Starts the server and one Chromium in a fresh network namespace (the harness's). A publisher
page (camera 320x180 + microphone) stays in the room; for each livekit-client version a
viewer page joins --joins times (leaving in between) and reports the time from the start of
room.connect() to the first decoded frame of the publisher's camera, measured inside the page
(getStats polled every 5 ms), plus the connect part alone. Prints one JSON object.
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
import browser as browser_mod  # noqa: E402
import harness  # noqa: E402

warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--joins", type=int, default=5)
    a = ap.parse_args()
    harness.cleanup_stale_namespaces()
    workdir = Path(tempfile.mkdtemp(prefix="sb-measure-browser-"))
    ns = harness.Netns().create()
    server = b = None
    out: dict = {"workdir": str(workdir), "joins": a.joins}
    try:
        server = harness.Server(ns, workdir, []).start()
        b = browser_mod.Browser(ns, workdir).start()
        room = "!measure:example.org"
        pub = b.open("publisher", "2.23")
        pub.connect(room)
        pub.call("publishCamera", {"width": 320, "height": 180})
        pub.call("publishMic")
        for version in browser_mod.VERSIONS:
            first, connect = [], []
            for k in range(a.joins):
                viewer = b.open(f"viewer-{version}-{k}", version)
                info = viewer.connect(room)
                ms = viewer.call("firstFrameMs", "publisher")
                if ms is None:
                    raise RuntimeError(f"viewer {k} ({version}) decoded no frame within 20 s")
                first.append(ms)
                connect.append(info["connectMs"])
                viewer.call("disconnect")
                viewer.close()
                time.sleep(0.5)
            out[f"livekit-client {version}"] = {
                "connect_to_first_frame_ms": {"median": statistics.median(first), "all": first},
                "connect_ms": {"median": statistics.median(connect), "all": connect},
            }
    finally:
        if b is not None:
            b.stop()
        if server is not None:
            server.stop()
        ns.destroy()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
