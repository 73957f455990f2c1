"""Smoke run of the load generator (`switchboard-loadtest`, docs/benchmarks.md) against the
server: a small B1 voice call (with each of the tool's WebRTC stacks, str0m and the webrtc
crate), a small grid (subscribers get the simulcast layer they ask for), /rtc/v1, and a small B5
join run, inside the test's network namespace.

At this low load nothing may be lost (loss <= 1 %) and every simulated participant must join;
the figures themselves (CPU per packet, latency, join times) are benchmark output, not
asserted. Also: bad input to the tool ends with one clear line and a non-zero exit.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import harness

URL = harness.WS_URL
LOCAL_IP = harness.PEER_IP  # the simulated clients' host address (the veth peer)
RUN_TIMEOUT_S = 120  # generous bound on one run of the tool


def loadtest_bin() -> Path:
    return Path(os.environ.get("SB_E2E_LOADTEST_BIN", harness.REPO / "target" / "release" / "switchboard-loadtest"))


def run_tool(netns, *args: str, timeout: float = RUN_TIMEOUT_S):
    binary = loadtest_bin()
    assert binary.exists(), f"{binary} missing: cargo build --release -p switchboard-loadtest"
    return netns.run([str(binary), *args], timeout=timeout)


def run_scenario(netns, server, workdir: Path, name: str, *args: str, floor: bool = False) -> dict:
    out = workdir / f"{name}.json"
    plot = workdir / f"{name}.svg"
    r = run_tool(
        netns, "run", "--url", URL, "--api-key", harness.API_KEY, "--api-secret", harness.API_SECRET,
        "--local-ip", LOCAL_IP, "--server-pid", str(server.pid), *([] if floor else ["--no-floor"]),
        "--json", str(out), "--plot", str(plot), *args,
    )
    assert r.returncode == 0, f"loadtest {name} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    assert plot.exists() and plot.read_text().lstrip().startswith("<svg"), "no SVG plot written"
    return json.loads(out.read_text())


@pytest.mark.parametrize("stack", ["str0m", "webrtc"])
def test_small_voice_call_loses_nothing(server, netns, workdir, stack):
    rep = run_scenario(netns, server, workdir, f"b1-{stack}", "--scenario", "B1", "--publishers", "3",
                       "--subscribers", "6", "--warmup", "1", "--duration", "4", "--stack", stack,
                       floor=True)
    assert rep["scenario"] == "B1"
    assert rep["failed"] == 0, rep["failures"]
    assert rep["participants"] == 9
    # 3 Opus streams to each of 6 subscribers: every packet the sequence numbers announce arrives
    assert rep["received_packets"] > 0 and rep["expected_packets"] > 0
    assert rep["loss_ratio"] <= 0.01, rep
    for key in ("forwarded_packets_per_second", "server_cpu_us_per_forwarded_packet",
                "floor_us_per_forwarded_packet", "r_floor", "server_rss_bytes_per_participant"):
        assert isinstance(rep[key], (int, float)) and rep[key] > 0, (key, rep[key])
    assert rep["latency_ms"]["p50"] is not None and rep["latency_ms"]["p99"] is not None
    assert rep["join_ms"]["p50"] is not None and rep["join_ms"]["p95"] is not None
    assert [p["label"] for p in rep["points"]] == [rep["label"]]


def test_single_peer_connection_path(server, netns, workdir):
    """/rtc/v1: one connection per participant; receive sections on the server's request."""
    rep = run_scenario(netns, server, workdir, "b3-v1", "--scenario", "B3", "--subscribers", "4",
                       "--warmup", "1", "--duration", "3", "--single-pc")
    assert rep["failed"] == 0, rep["failures"]
    assert rep["participants"] == 5
    assert rep["received_packets"] > 0 and rep["loss_ratio"] <= 0.01, rep


def test_grid_subscribers_get_the_layer_they_ask_for(server, netns, workdir):
    """B2 participants ask for the `h` layer (UpdateTrackSettings.quality MEDIUM): per
    subscription 55 video packets/s against 50 audio, where the full layer would be 180."""
    rep = run_scenario(netns, server, workdir, "b2", "--scenario", "B2", "--participants", "3",
                       "--warmup", "2", "--duration", "3")
    assert rep["failed"] == 0, rep["failures"]
    assert rep["loss_ratio"] <= 0.01, rep
    video = rep["received_video_packets"]
    audio = rep["received_packets"] - video
    assert audio > 0 and video > 0, rep
    # counts, not rates: h gives ~1.1 video packets per audio packet, f ~3.6, q ~0.4
    assert 0.7 < video / audio < 2.0, (video, audio)


def test_small_join_run_joins_everyone(server, netns, workdir):
    rep = run_scenario(netns, server, workdir, "b5", "--scenario", "B5", "--participants", "5",
                       "--storm", "5", "--warmup", "1", "--duration", "2")
    # 1 publisher, 5 sequential joiners, 5 in the storm, 5 idle
    assert rep["participants"] == 16
    assert rep["failed"] == 0, rep["failures"]
    assert rep["loss_ratio"] <= 0.01, rep
    assert rep["join_ms"]["p50"] is not None and rep["storm_join_ms"]["p95"] is not None
    assert rep["join_first_media_ms"]["p50"] is not None
    assert rep["server_rss_bytes_per_idle_participant"] is not None
    # everyone left: the server is back to an empty state
    server.wait_metrics({"switchboard_participants": 0}, timeout=15)


def test_bad_input_ends_with_one_clear_line(server, netns):
    r = run_tool(netns, "run", "--url", URL, "--api-key", harness.API_KEY, "--api-secret", "wrong",
                 "--scenario", "B1", "--duration", "1", timeout=30)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "api-secret" in lines[0], r.stderr

    r = run_tool(netns, "run", "--url", "ws://127.0.0.1:1", "--api-key", "k", "--api-secret", "s",
                 "--scenario", "B1", timeout=30)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot join" in lines[0], r.stderr

    r = run_tool(netns, "run", "--api-key", "k", "--api-secret", "s", "--scenario", "B9", timeout=30)
    assert r.returncode != 0 and "B9" in r.stderr
