#!/usr/bin/env python3
"""Join and leave a room many times from one process (inside the test's network namespace):
connect -> publish a sine tone for --hold seconds (real time) -> disconnect, N times, each time as a new identity.
Prints one JSON object: {"ok": n, "failures": [...], "seconds": [...]}.

One process for all iterations saves the SDK's start-up time per join (tests/e2e/test_leak.py).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback

import numpy as np
from livekit import api, rtc

SAMPLE_RATE = 48000


async def one(url: str, token: str, hold: float) -> None:
    room = rtc.Room()
    source = rtc.AudioSource(SAMPLE_RATE, 1)
    try:
        await asyncio.wait_for(room.connect(url, token, rtc.RoomOptions(auto_subscribe=True, connect_timeout=15)), 20)
        track = rtc.LocalAudioTrack.create_audio_track("tone", source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await asyncio.wait_for(room.local_participant.publish_track(track, opts), 15)
        spf = SAMPLE_RATE // 100
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < hold:
            idx = np.arange(k * spf, (k + 1) * spf)
            pcm = (0.3 * 32767 * np.sin(2 * np.pi * 440 * idx / SAMPLE_RATE)).astype(np.int16)
            await asyncio.wait_for(source.capture_frame(rtc.AudioFrame(pcm.tobytes(), SAMPLE_RATE, 1, spf)), 5)
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * 0.01 - time.monotonic()))
    finally:
        await asyncio.wait_for(room.disconnect(), 10)
        await source.aclose()


async def main_async(a: argparse.Namespace) -> dict:
    out: dict = {"ok": 0, "failures": [], "seconds": []}
    for i in range(a.count):
        identity = f"{a.prefix}-{i}"
        token = (api.AccessToken(a.key, a.secret).with_identity(identity)
                 .with_grants(api.VideoGrants(room_join=True, room=a.room)).to_jwt())
        t0 = time.monotonic()
        try:
            await one(a.url, token, a.hold)
            out["ok"] += 1
        except BaseException as e:  # noqa: BLE001 - count and go on
            out["failures"].append(f"{identity}: {type(e).__name__}: {e}")
            traceback.print_exc()
        out["seconds"].append(round(time.monotonic() - t0, 3))
        print(f"[churn] {identity} done in {out['seconds'][-1]}s", file=sys.stderr, flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--prefix", default="churn")
    p.add_argument("--hold", type=float, default=1.0, help="seconds to stay, sending audio, each time")
    p.add_argument("--key", default="devkey")
    p.add_argument("--secret", default="secret")
    a = p.parse_args()
    res = asyncio.run(main_async(a))
    print(json.dumps(res), flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # like peer.py: skip interpreter finalisation (liblivekit_ffi teardown can abort at exit)
    import os
    os._exit(0)


if __name__ == "__main__":
    main()
