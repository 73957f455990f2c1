"""A raw LiveKit signalling client for the end-to-end tests: no SDK, no WebRTC.

A minimal RFC 6455 WebSocket client (HTTP upgrade, masked client frames, fragmentation,
ping/pong, close) on a plain socket, speaking protobuf with the message classes of the
`livekit-protocol` package (`livekit.protocol.rtc`: SignalRequest, SignalResponse, ...).

The socket comes from the caller, so pytest can hand in one made inside the test's network
namespace (harness.Netns.socket()); nothing here knows about namespaces.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
import socket
import struct
import time
import urllib.parse
from dataclasses import dataclass, field

from livekit.protocol import models as lkm
from livekit.protocol import rtc as lkrtc

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WsClosed(Exception):
    """The server closed the WebSocket (close frame: code/reason) or the TCP connection
    (code None)."""

    def __init__(self, code: int | None, reason: str, how: str) -> None:
        super().__init__(f"websocket closed ({how}): code {code} reason {reason!r}")
        self.code = code
        self.reason = reason
        self.how = how


@dataclass
class HttpReply:
    status: int | None
    status_line: str
    headers: dict[str, str]
    body: bytes


class WebSocket:
    """Client side of one WebSocket connection on an already connected TCP socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.closed: WsClosed | None = None
        self.pings_answered = 0

    # ----------------------------------------------------------------- handshake --
    def handshake(self, host: str, path: str, headers: list[str] = (), timeout: float = 5.0) -> HttpReply:
        """Send the upgrade request; return the HTTP reply (status 101 = upgraded; any other
        status comes with its body, read up to Content-Length or close)."""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", "User-Agent: switchboard-e2e-raw",
                 *headers]
        self.sock.settimeout(timeout)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            chunk = self._recv_some(deadline)
            if not chunk:
                break
            self.buf += chunk
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        self.buf = rest
        hl = head.decode("latin-1").split("\r\n")
        status_line = hl[0] if hl else ""
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
        hdrs = {}
        for h in hl[1:]:
            if ":" in h:
                k, v = h.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        if status == 101:
            want = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            if hdrs.get("sec-websocket-accept") != want:
                raise AssertionError(f"bad Sec-WebSocket-Accept {hdrs.get('sec-websocket-accept')!r}, want {want!r}")
            return HttpReply(status, status_line, hdrs, b"")
        n = int(hdrs.get("content-length", "-1"))
        while (n < 0 or len(self.buf) < n) and time.monotonic() < deadline:
            try:
                chunk = self._recv_some(deadline)
            except TimeoutError:
                break
            if not chunk:
                break
            self.buf += chunk
        body = self.buf if n < 0 else self.buf[:n]
        return HttpReply(status, status_line, hdrs, body)

    # -------------------------------------------------------------------- frames --
    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        head = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        self.sock.sendall(head + mask + _xor(payload, mask))

    def send_binary(self, payload: bytes) -> None:
        self.send_frame(OP_BINARY, payload)

    def send_text(self, text: str) -> None:
        self.send_frame(OP_TEXT, text.encode())

    def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            self.send_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode())
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass

    def _recv_some(self, deadline: float) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("websocket read timed out")
        self.sock.settimeout(left)
        try:
            return self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("websocket read timed out") from None
        except ConnectionResetError:
            return b""

    def _need(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            chunk = self._recv_some(deadline)
            if not chunk:
                self.closed = WsClosed(None, "", "tcp closed without a close frame")
                raise self.closed
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _read_frame(self, deadline: float) -> tuple[bool, int, bytes]:
        b0, b1 = self._need(2, deadline)
        fin, opcode = bool(b0 & 0x80), b0 & 0x0F
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._need(2, deadline))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._need(8, deadline))
        mask = self._need(4, deadline) if b1 & 0x80 else None
        payload = self._need(n, deadline)
        if mask:
            payload = _xor(payload, mask)
        return fin, opcode, payload

    def recv_message(self, timeout: float) -> tuple[int, bytes]:
        """Next data message (opcode, payload). Answers pings; raises WsClosed on a close
        frame or EOF, TimeoutError if nothing complete arrives within `timeout`."""
        if self.closed:
            raise self.closed
        deadline = time.monotonic() + timeout
        parts: list[bytes] = []
        first_op = None
        while True:
            fin, op, payload = self._read_frame(deadline)
            if op == OP_PING:
                self.send_frame(OP_PONG, payload)
                self.pings_answered += 1
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.closed = WsClosed(code, payload[2:].decode("utf-8", "replace"), "close frame")
                try:
                    self.send_frame(OP_CLOSE, payload[:2])
                except OSError:
                    pass
                raise self.closed
            if op != OP_CONT:
                first_op = op
            parts.append(payload)
            if fin:
                return first_op, b"".join(parts)

    def wait_closed(self, timeout: float) -> WsClosed:
        """Read (and drop) messages until the server closes; the WsClosed that ended it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.recv_message(max(0.01, deadline - time.monotonic()))
            except WsClosed as e:
                return e
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not close within {timeout}s")


def _xor(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    m = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big") if n else b""


# ----------------------------------------------------------------------- signalling --
def rtc_path(token: str, *, protocol: int = 15, auto_subscribe: bool = True, extra: dict | None = None) -> str:
    q = {"access_token": token, "protocol": str(protocol), "sdk": "python", "version": "0.0.0-raw",
         "auto_subscribe": "1" if auto_subscribe else "0", **(extra or {})}
    return "/rtc?" + urllib.parse.urlencode(q)


def join_request_param(jr: lkrtc.JoinRequest, *, gzip_it: bool = True, padding: bool = True) -> str:
    """`join_request` query value: URL-safe base64 of a WrappedJoinRequest."""
    inner = jr.SerializeToString()
    w = lkrtc.WrappedJoinRequest(
        compression=lkrtc.WrappedJoinRequest.GZIP if gzip_it else lkrtc.WrappedJoinRequest.NONE,
        join_request=gzip.compress(inner) if gzip_it else inner)
    s = base64.urlsafe_b64encode(w.SerializeToString()).decode()
    return s if padding else s.rstrip("=")


def minimal_join_request(protocol: int = 16) -> lkrtc.JoinRequest:
    return lkrtc.JoinRequest(
        client_info=lkm.ClientInfo(sdk=lkm.ClientInfo.PYTHON, version="0.0.0-raw", protocol=protocol),
        connection_settings=lkrtc.ConnectionSettings(auto_subscribe=True))


def v1_path(token: str | None, join_request: str | None) -> str:
    """None leaves the parameter out (token in an Authorization header, or no join_request)."""
    q = {"access_token": token} if token is not None else {}
    if join_request is not None:
        q["join_request"] = join_request
    return "/rtc/v1?" + urllib.parse.urlencode(q)


@dataclass
class SignalClient:
    """Protobuf SignalRequest/SignalResponse over a WebSocket; keeps every message received."""

    ws: WebSocket
    received: list[lkrtc.SignalResponse] = field(default_factory=list)
    _pending: list[lkrtc.SignalResponse] = field(default_factory=list)

    def send(self, req: lkrtc.SignalRequest) -> None:
        self.ws.send_binary(req.SerializeToString())

    def recv(self, timeout: float) -> lkrtc.SignalResponse:
        if self._pending:
            return self._pending.pop(0)
        op, payload = self.ws.recv_message(timeout)
        if op != OP_BINARY:
            raise AssertionError(f"server sent a non-binary message (opcode {op}): {payload[:200]!r}")
        msg = lkrtc.SignalResponse()
        msg.ParseFromString(payload)
        self.received.append(msg)
        return msg

    def wait_for(self, which: str, timeout: float, pred=None) -> lkrtc.SignalResponse:
        """The next message whose oneof case is `which` (and satisfies pred(inner), if given);
        others are skipped (they stay in `received`). TimeoutError names what did arrive."""
        deadline = time.monotonic() + timeout
        skipped = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {which!r} within {timeout}s; got {skipped}")
            try:
                m = self.recv(left)
            except TimeoutError:
                raise TimeoutError(f"no {which!r} within {timeout}s; got {skipped}") from None
            case = m.WhichOneof("message")
            if case == which and (pred is None or pred(getattr(m, which))):
                return m
            skipped.append(case)

    def drain(self, seconds: float) -> list[lkrtc.SignalResponse]:
        """Everything that arrives in the next `seconds` (stops early if the server closes)."""
        out = []
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            try:
                out.append(self.recv(left))
            except TimeoutError:
                return out
            except WsClosed:
                return out

    def cases(self) -> list[str]:
        return [m.WhichOneof("message") for m in self.received]


def parse_semver(v: str) -> tuple[int, int, int] | None:
    m = re.fullmatch(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?", v)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None
