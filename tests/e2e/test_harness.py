"""Self-tests of the harness itself; none of these needs the server."""
from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time

import numpy as np
import pytest
from livekit import rtc

import harness
import peer


def _frame(img: np.ndarray) -> rtc.VideoFrame:
    h, w, _ = img.shape
    return rtc.VideoFrame(w, h, rtc.VideoBufferType.RGBA, np.ascontiguousarray(img).tobytes())


def _base() -> np.ndarray:
    b = np.full((peer.H, peer.W, 4), 128, dtype=np.uint8)
    b[:, :, 3] = 255
    return b


@pytest.mark.parametrize("n", [0, 1, 0x5A5A, 0xFFFF, 12345])
def test_counter_roundtrip_survives_noise_blur_and_scaling(n):
    rng = np.random.default_rng(n)
    img = np.frombuffer(peer.draw_counter(_base(), n), dtype=np.uint8).reshape(peer.H, peer.W, 4)
    assert peer.decode_counter(_frame(img)) == n
    # lossy-coding stand-ins: noise, a 5x5 box blur, and a 2x downscale
    noisy = np.clip(img.astype(np.int16) + rng.integers(-40, 40, img.shape), 0, 255).astype(np.uint8)
    noisy[:, :, 3] = 255
    assert peer.decode_counter(_frame(noisy)) == n
    f = img.astype(np.float32)
    k = 5
    pad = np.pad(f, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="edge")
    blur = sum(pad[dy:dy + peer.H, dx:dx + peer.W] for dy in range(k) for dx in range(k)) / (k * k)
    assert peer.decode_counter(_frame(blur.astype(np.uint8))) == n
    small = img[::2, ::2]
    assert peer.decode_counter(_frame(small)) == n


def test_counter_rejects_frames_without_a_clean_code():
    assert peer.decode_counter(_frame(_base())) is None  # plain grey
    black = np.zeros((peer.H, peer.W, 4), dtype=np.uint8)
    assert peer.decode_counter(_frame(black)) is None
    img = np.frombuffer(peer.draw_counter(_base(), 777), dtype=np.uint8).reshape(peer.H, peer.W, 4).copy()
    img[peer.ROW_B[0]:peer.ROW_B[1], :, :3] = img[peer.ROW_A[0]:peer.ROW_A[1], :, :3]  # B no longer complement
    assert peer.decode_counter(_frame(img)) is None


def test_audio_analysis_finds_the_tone():
    sr = peer.SAMPLE_RATE
    t = np.arange(sr * 3) / sr
    pcm = (0.3 * 32767 * np.sin(2 * np.pi * 660 * t)).astype(np.int16)
    pcm = np.concatenate([np.zeros(sr, np.int16), pcm])  # 1 s of silence first
    a = peer.analyse_audio(pcm)
    assert abs(a["dominant_hz"] - 660) < 2
    assert a["silent_windows"] == 5
    fake = {"remote": {"x": {"audio": a}}}
    pres = harness.tone_presence(fake, "x", 660)
    assert pres["tone_seconds"] == pytest.approx(3.0)
    assert harness.tone_presence(fake, "x", 440)["tone_seconds"] == 0


def test_prometheus_parsing():
    text = textwrap.dedent("""\
        # HELP switchboard_rooms Rooms
        # TYPE switchboard_rooms gauge
        switchboard_rooms 2
        switchboard_dropped_datagrams_total{reason="x"} 3
        switchboard_dropped_datagrams_total{reason="y"} 4.0
        # EOF
        """)
    m = harness.parse_prometheus(text)
    assert harness.metric(m, "switchboard_rooms") == 2
    assert harness.metric(m, "switchboard_dropped_datagrams_total") == 7
    assert harness.metric(m, "switchboard_participants") is None


def test_netns_has_veth_and_is_removed():
    ns = harness.Netns().create()
    try:
        r = ns.run(["ip", "-j", "addr"])
        addrs = {a["ifname"]: [i["local"] for i in a["addr_info"]] for a in json.loads(r.stdout)}
        assert "127.0.0.1" in addrs["lo"]
        assert harness.NODE_IP in addrs["hx0"] and harness.PEER_IP in addrs["hx1"]
        # UDP over the veth addresses works inside the namespace
        code = textwrap.dedent(f"""
            import socket
            a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(("{harness.NODE_IP}", 0)); a.settimeout(3)
            b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(("{harness.PEER_IP}", 0))
            b.sendto(b"ping", a.getsockname()); print(a.recvfrom(10)[0].decode())
            """)
        r = ns.run([harness.PYTHON, "-c", code], timeout=20)
        assert r.stdout.strip() == "ping", r.stderr
        # the root namespace's loopback is not this one's: nothing listens on 7880 here
        assert ns.http_get("/", timeout=2)["status"] is None
        name = ns.name
    finally:
        ns.destroy()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert name not in listed.split()


def _left_in(ns_stat: os.stat_result) -> list[int]:
    """Pids of live processes in the network namespace `ns_stat` (the stat of its file), which
    may be deleted by now."""
    pids = []
    for d in os.listdir("/proc"):
        try:
            st = os.stat(f"/proc/{d}/ns/net") if d.isdigit() else None
        except OSError:
            continue  # gone meanwhile, or a zombie
        if st is not None and (st.st_dev, st.st_ino) == (ns_stat.st_dev, ns_stat.st_ino):
            pids.append(int(d))
    return pids


def test_netns_destroy_kills_leftover_processes(workdir):
    ns = harness.Netns().create()
    try:
        p = subprocess.Popen(ns.prefix() + ["sleep", "300"])
        ns.wait_entered(p)
        q = ns.popen(["sleep", "300"], workdir / "sleep.log")  # waits by itself
        assert {p.pid, q.pid} <= set(ns.pids())
    finally:
        ns.destroy()
    assert p.wait(10) is not None and q.wait(10) is not None


def test_netns_destroy_kills_what_its_processes_start_meanwhile(workdir):
    """A process that ignores SIGTERM and keeps starting more (each ignoring SIGTERM too):
    destroy() goes on killing until nothing is left in the namespace, not just what was there
    when it looked first."""
    ns = harness.Netns().create()
    ns_stat = os.stat(ns.path)
    try:
        spawner = ns.popen(["sh", "-c", "trap '' TERM; while :; do sleep 300 & sleep 0.01; done"],
                           workdir / "spawner.log")
        t_end = time.monotonic() + 10
        while len(ns.pids()) < 5 and time.monotonic() < t_end:
            time.sleep(0.05)
        assert len(ns.pids()) >= 5
    finally:
        ns.destroy(grace=0.5)
    assert spawner.wait(10) is not None
    assert _left_in(ns_stat) == []
    assert ns.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()


def test_peer_reports_a_clear_error_without_server(netns, workdir):
    p = harness.Peer(netns, workdir, "alice", "room", duration=1, connect_timeout=5).start()
    res = p.wait()
    assert res["_exit"] == 2
    assert res["connected"] is None
    assert "Connection refused" in res["connect_error"], res["connect_error"]


STUB = textwrap.dedent("""
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            body = b"invalid token: signature" if "bad" in self.path else b"OK"
            code = 401 if "bad" in self.path else 200
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", 7880), H).serve_forever()
    """)


def test_nshttp_against_a_stub_server(netns, workdir):
    """The raw upgrade request and readiness poll of the harness read status and body right
    (a stand-in HTTP server answers 401 to paths containing 'bad', else 200 OK)."""
    stub = netns.popen([harness.PYTHON, "-c", STUB], workdir / "stub.log")
    try:
        r = netns.nshttp("wait-ready", harness.HTTP_URL + "/", "--timeout", "10", "--expect-body", "OK")
        assert r["ready"], r
        u = netns.ws_upgrade("/rtc?access_token=bad")
        assert u["status"] == 401 and u["body"] == "invalid token: signature", u
        assert netns.ws_upgrade("/rtc?access_token=good")["status"] == 200
        assert netns.http_get("/rtc/validate?access_token=bad")["status"] == 401
    finally:
        stub.kill()
        stub.wait(5)
