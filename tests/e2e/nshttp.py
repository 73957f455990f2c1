#!/usr/bin/env python3
"""Tiny HTTP client run inside the test's network namespace (`ip netns exec NS python nshttp.py ...`).

Standard library only. Prints one JSON object on stdout.

  nshttp.py get URL [--timeout S]
      -> {"status": int|null, "headers": {...}, "body": str, "error": str|null}
  nshttp.py wait-ready URL --timeout S [--expect-body OK] [--pid PID]
      polls URL until it answers 200 (and the body, stripped, equals --expect-body if given);
      gives up early once process PID (the server) has exited
      -> {"ready": bool, "elapsed": s, "last_error": str|null}
  nshttp.py upgrade HOST PORT PATH [--header 'Name: value']... [--timeout S]
      sends a raw GET with WebSocket upgrade headers on a plain TCP socket and reports exactly
      what came back (status line, headers, up to 64 KiB of body) without completing anything
      -> {"status": int|null, "status_line": str, "headers": {...}, "body": str, "error": ...}
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request


def http_get(url: str, timeout: float) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return {"status": r.status, "headers": dict(r.headers), "body": r.read().decode("utf-8", "replace"), "error": None}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "headers": dict(e.headers or {}), "body": e.read().decode("utf-8", "replace"), "error": None}
    except Exception as e:  # noqa: BLE001
        return {"status": None, "headers": {}, "body": "", "error": f"{type(e).__name__}: {e}"}


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_ready(url: str, timeout: float, expect_body: str | None, pid: int | None = None) -> dict:
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        if not _alive(pid):
            return {"ready": False, "elapsed": time.monotonic() - t0, "last_error": f"process {pid} exited"}
        r = http_get(url, timeout=2)
        if r["status"] == 200 and (expect_body is None or r["body"].strip() == expect_body):
            return {"ready": True, "elapsed": time.monotonic() - t0, "last_error": None}
        last = r["error"] or f"status {r['status']} body {r['body'][:200]!r}"
        time.sleep(0.1)
    return {"ready": False, "elapsed": time.monotonic() - t0, "last_error": last}


def raw_upgrade(host: str, port: int, path: str, headers: list[str], timeout: float) -> dict:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "User-Agent: switchboard-e2e",
        *headers,
    ]
    req = ("\r\n".join(lines) + "\r\n\r\n").encode()
    out: dict = {"status": None, "status_line": "", "headers": {}, "body": "", "error": None}
    try:
        s = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        out["error"] = f"connect: {type(e).__name__}: {e}"
        return out
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        s.sendall(req)
        while b"\r\n\r\n" not in buf and time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        hlines = head.decode("latin-1").split("\r\n")
        out["status_line"] = hlines[0] if hlines else ""
        parts = out["status_line"].split(" ", 2)
        if len(parts) >= 2 and parts[1].isdigit():
            out["status"] = int(parts[1])
        for h in hlines[1:]:
            if ":" in h:
                k, v = h.split(":", 1)
                out["headers"][k.strip().lower()] = v.strip()
        if out["status"] is not None and out["status"] != 101:
            # read the (short) body: Content-Length, chunked or until close, bounded
            want = out["headers"].get("content-length")
            while time.monotonic() < deadline and len(body) < 65536:
                if want is not None and len(body) >= int(want):
                    break
                if "chunked" in out["headers"].get("transfer-encoding", "") and body.endswith(b"0\r\n\r\n"):
                    break
                s.settimeout(max(0.05, deadline - time.monotonic()))
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                body += chunk
            if "chunked" in out["headers"].get("transfer-encoding", ""):
                body = dechunk(body)
        out["body"] = body[:65536].decode("utf-8", "replace") if out["status"] != 101 else ""
    except OSError as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        s.close()
    return out


def dechunk(b: bytes) -> bytes:
    out = b""
    while b:
        size_line, _, rest = b.partition(b"\r\n")
        try:
            n = int(size_line.split(b";")[0], 16)
        except ValueError:
            return out + b
        if n == 0:
            break
        out += rest[:n]
        b = rest[n + 2 :]
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("get")
    g.add_argument("url")
    g.add_argument("--timeout", type=float, default=5)
    w = sub.add_parser("wait-ready")
    w.add_argument("url")
    w.add_argument("--timeout", type=float, default=20)
    w.add_argument("--expect-body", default=None)
    w.add_argument("--pid", type=int, default=None, help="give up as soon as this process is gone")
    u = sub.add_parser("upgrade")
    u.add_argument("host")
    u.add_argument("port", type=int)
    u.add_argument("path")
    u.add_argument("--header", action="append", default=[])
    u.add_argument("--timeout", type=float, default=5)
    a = p.parse_args(argv)
    if a.cmd == "get":
        r = http_get(a.url, a.timeout)
    elif a.cmd == "wait-ready":
        r = wait_ready(a.url, a.timeout, a.expect_body, a.pid)
    else:
        r = raw_upgrade(a.host, a.port, a.path, a.header, a.timeout)
    json.dump(r, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
