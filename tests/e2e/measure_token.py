#!/usr/bin/env python3
"""Measure MatrixRTC request-to-JWT time (not a test: pytest does not collect it).

Run as root from the repo root, with the e2e venv's interpreter:

    V=$(scripts/install-test-deps.sh | tail -1); $V/bin/python tests/e2e/measure_token.py [--requests 20]

Starts a Synapse (hs1.test) and target/release/switchboard (--dev, MatrixRTC on with the
homeserver URL override) in a fresh network namespace, registers a user, then times --requests
`POST /sfu/get` and `POST /get_token` calls, each with a fresh OpenID token (as Element Call
does), from sending the request to having the JWT. Prints one JSON object (seconds).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from synapse_harness import ConfiguredServer, Synapse, matrixrtc_toml  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20)
    a = ap.parse_args()
    harness.cleanup_stale_namespaces()
    workdir = Path(tempfile.mkdtemp(prefix="sb-measure-token-"))
    ns = harness.Netns()
    hs = server = None
    out: dict = {"workdir": str(workdir)}
    try:
        ns.create()
        hs = Synapse(ns, workdir, "hs1.test").start()
        server = ConfiguredServer(ns, workdir, matrixrtc_toml(full_access=("hs1.test",),
                                  homeserver_urls={"hs1.test": hs.url}), dev=True, name="switchboard").start()
        alice = hs.register("alice")
        room = hs.create_room(alice)
        for path in ("/sfu/get", "/get_token"):
            times = []
            for i in range(a.requests):
                tok = hs.openid_token(alice)
                if path == "/sfu/get":
                    body = {"room": room, "openid_token": tok, "device_id": alice.device_id}
                else:
                    body = {"room_id": room, "slot_id": "m.call#ROOM", "openid_token": tok,
                            "member": {"id": f"m{i}", "claimed_user_id": alice.user_id,
                                       "claimed_device_id": alice.device_id}}
                t0 = time.perf_counter()
                r = server.post(path, body)
                dt = time.perf_counter() - t0
                if r.status != 200 or "jwt" not in (r.json_or_none() or {}):
                    raise RuntimeError(f"{path}: {r!r}")
                times.append(dt)
                time.sleep(0.25)  # stay under the per-address rate limit (5/s)
            out[path] = {"requests": len(times), "median": round(statistics.median(times), 4),
                         "min": round(min(times), 4), "max": round(max(times), 4)}
    finally:
        if server is not None:
            server.stop()
        if hs is not None:
            hs.stop()
        ns.destroy()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
