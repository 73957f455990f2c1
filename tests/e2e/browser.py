"""livekit-client in headless Chromium, for the end-to-end tests (Python side).

`Browser` starts tests/browser/driver.mjs (Node + playwright-core + the system Chromium) inside
the test's network namespace and talks to it over a JSON-lines pipe: one command per line on
its stdin, one answer per line on its stdout (see the comment at the top of driver.mjs). Every
participant is a page of that one Chromium; `Browser.open(name, version)` gives a `Page` whose
`call(fn, *args)` runs `await window.sb.<fn>(...args)` in it (tests/browser/client.js lists
the functions) and returns the JSON result or raises `PageError` with the page's error text.

The driver's stderr (page console, page errors, WebSockets the pages opened, the driver's
notes) goes to `<workdir>/browser.log`, which the `browser` fixture attaches to the report of
a failing test; at teardown each page's recorded room events go to
`<workdir>/page-<name>.events.json`.

    page = browser.open("alice", version="2.23")
    page.connect("room-1")                              # token from harness.make_token
    page.call("publishCamera", {"width": 320, "height": 180})
    page.wait_until(lambda s: ..., timeout=20, what="bob's video")   # polls page.stats()
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import harness

BROWSER_DIR = harness.REPO / "tests" / "browser"
DRIVER = BROWSER_DIR / "driver.mjs"
CHROMIUM = os.environ.get("SB_E2E_CHROMIUM", "/usr/bin/chromium")
VERSIONS = ("2.22", "2.23")  # livekit-client 2.22.4 (what Element Call bundles), 2.23.0 (newest)

START_TIMEOUT_S = 60  # driver up: HTTP server listening, Chromium launched
CALL_TIMEOUT_S = 30  # default bound on one page call (the driver enforces it; we wait a bit longer)
PIPE_SLACK_S = 10  # extra wait on our side for an answer the driver should have sent by its deadline
QUIT_TIMEOUT_S = 15


class PageError(Exception):
    """A page call failed: the function threw, timed out, or the page is gone."""


class Browser:
    """One driver process (and its Chromium) inside a network namespace."""

    def __init__(self, ns: harness.Netns, workdir: Path) -> None:
        self.ns = ns
        self.workdir = workdir
        self.log = workdir / "browser.log"
        self.profile = workdir / "chromium-profile"
        self.proc: subprocess.Popen | None = None
        self.pages: dict[str, Page] = {}
        self.info: dict = {}  # the driver's hello: {"port", "browser"}
        self._ids = itertools.count(1)
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._gone: str | None = None  # why the driver can no longer answer

    # --- process -----------------------------------------------------------------------
    def start(self) -> "Browser":
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node not found (Node 20 is needed for the browser tests)")
        if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
            raise RuntimeError(f"{BROWSER_DIR}/node_modules missing: run scripts/install-test-deps.sh")
        if not os.access(CHROMIUM, os.X_OK):
            raise RuntimeError(f"{CHROMIUM} missing: run scripts/install-test-deps.sh (installs Debian chromium)")
        hello = self._pending[0] = Future()
        with open(self.log, "ab") as log:
            # `ip netns exec` execs node, so proc.pid is the driver's own pid; the new session
            # lets teardown signal the driver's whole process group.
            self.proc = subprocess.Popen(
                self.ns.prefix() + [node, str(DRIVER), "--profile", str(self.profile), "--chromium", CHROMIUM],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=BROWSER_DIR,
                start_new_session=True, bufsize=0,
            )
        self.ns.wait_entered(self.proc)  # so that Netns.destroy finds it whatever happens next
        self._reader = threading.Thread(target=self._read_answers, name="browser-driver-reader", daemon=True)
        self._reader.start()
        try:
            self.info = self._result(hello, START_TIMEOUT_S, "driver start")
        except BaseException:
            self.stop()
            raise
        return self

    def _read_answers(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue  # not ours; the driver writes nothing else to stdout
            with self._lock:
                fut = self._pending.pop(msg.get("id"), None)
            if fut is not None:
                fut.set_result(msg)
        # EOF: the driver exited; nothing pending will ever be answered
        self._gone = f"browser driver exited ({self.proc.poll()})"
        with self._lock:
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            fut.set_result({"ok": False, "error": self._gone})

    def _result(self, fut: Future, timeout: float, what: str) -> Any:
        t0 = time.monotonic()
        try:
            msg = fut.result(timeout)
        except TimeoutError:
            if time.monotonic() - t0 < timeout - 1:
                raise  # not ours: the test's deadline (conftest SIGALRM) fired while we waited
            raise PageError(f"{what}: no answer from the browser driver within {timeout:.0f}s;"
                            f" log {self.log}:\n{harness.tail(self.log, 30)}") from None
        if not msg.get("ok"):
            err = msg.get("error", "?")
            if self._gone:
                err += f"; log {self.log}:\n{harness.tail(self.log, 30)}"
            raise PageError(f"{what}: {err}")
        return msg.get("result")

    def command(self, op: str, timeout: float = CALL_TIMEOUT_S, **fields) -> Future:
        """Send a command; the Future gets the driver's raw answer (see `_result`)."""
        fut: Future = Future()
        if self._gone or self.proc is None:
            fut.set_result({"ok": False, "error": self._gone or "browser driver not started"})
            return fut
        cid = next(self._ids)
        with self._lock:
            self._pending[cid] = fut
        line = json.dumps({"id": cid, "op": op, "timeout_ms": int(timeout * 1000), **fields}) + "\n"
        try:
            with self._write_lock:
                assert self.proc.stdin is not None
                self.proc.stdin.write(line.encode())
        except (BrokenPipeError, OSError) as e:
            with self._lock:
                self._pending.pop(cid, None)
            fut.set_result({"ok": False, "error": f"browser driver pipe: {e}"})
        return fut

    def request(self, op: str, timeout: float = CALL_TIMEOUT_S, **fields) -> Any:
        what = f"{op} {fields.get('fn', '')} ({fields.get('name', '-')})"
        return self._result(self.command(op, timeout, **fields), timeout + PIPE_SLACK_S, what)

    def stop(self) -> None:
        """Ask the driver to quit (it closes Chromium), then make sure: SIGKILL its process
        group. Pages left are closed with it. Idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None and not self._gone:
            self._save_events()
            try:
                self.request("quit", timeout=5)
                self.proc.wait(QUIT_TIMEOUT_S)
            except (PageError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        # Chromium detaches into its own process group; Netns.destroy kills whatever of it is left.
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)  # tens of MB, of no use afterwards

    def _save_events(self) -> None:
        """Write each open page's recorded room events to <workdir>/page-<name>.events.json
        (for looking into a failed test; best effort)."""
        for name, page in self.pages.items():
            try:
                evs = page.call("events", timeout=5)
            except PageError as e:
                evs = [{"type": "<could not read events>", "error": str(e)[:500]}]
            (self.workdir / f"page-{name}.events.json").write_text(json.dumps(evs, indent=1))

    # --- pages -------------------------------------------------------------------------
    def open(self, name: str, version: str = "2.23") -> "Page":
        """A new page (participant) `name` with livekit-client `version` ('2.22' or '2.23')."""
        if version not in VERSIONS:
            raise ValueError(f"livekit-client version {version!r}: have {VERSIONS}")
        info = self.request("open", timeout=CALL_TIMEOUT_S, name=name, version=version)
        page = Page(self, name, version, info)
        self.pages[name] = page
        return page


class Page:
    """One participant: a Chromium page running tests/browser/client.js."""

    def __init__(self, browser: Browser, name: str, version: str, info: dict) -> None:
        self.browser = browser
        self.name = name
        self.version = version
        self.info = info  # {"url", "livekitVersion", "e2eeSupported"}

    def __repr__(self) -> str:
        return f"<Page {self.name} livekit-client {self.info.get('livekitVersion')}>"

    def call(self, fn: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        """`await window.sb.<fn>(...args)` in this page; its JSON result, or PageError."""
        return self.browser.request("call", timeout=timeout, name=self.name, fn=fn, args=list(args))

    def call_async(self, fn: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> "PendingCall":
        """Like call(), without waiting: several pages can work at the same time."""
        fut = self.browser.command("call", timeout, name=self.name, fn=fn, args=list(args))
        return PendingCall(self, fn, fut, timeout)

    def connect(self, room: str, *, token: str | None = None, timeout: float = CALL_TIMEOUT_S,
                **opts: Any) -> dict:
        """Join `room` as this page's name (client.js connect(); `opts` are its options)."""
        return self.connect_async(room, token=token, timeout=timeout, **opts).result()

    def connect_async(self, room: str, *, token: str | None = None, timeout: float = CALL_TIMEOUT_S,
                      **opts: Any) -> "PendingCall":
        token = token or harness.make_token(self.name, room)
        return self.call_async("connect", {"url": harness.WS_URL, "token": token, **opts}, timeout=timeout)

    def stats(self) -> dict:
        return self.call("stats")

    def events(self, etype: str | None = None, **match: Any) -> list[dict]:
        """Recorded room events (client.js `record`), optionally only those of `etype` whose
        fields equal `match`."""
        evs = self.call("events")
        return [e for e in evs
                if (etype is None or e["type"] == etype) and all(e.get(k) == v for k, v in match.items())]

    def websockets(self) -> list[dict]:
        """The WebSockets this page opened: [{url, opened, closed, error, sent, received}]."""
        return self.browser.request("websockets", name=self.name)

    def requests(self) -> list[dict]:
        """HTTP requests this page made to anything but the test's file server (e.g. the SFU's
        /rtc/v1/validate): [{method, url, status}]."""
        return self.browser.request("requests", name=self.name)

    def wait_until(self, pred: Callable[[dict], Any], timeout: float, what: str,
                   interval: float = 0.5) -> dict:
        """Poll stats() until pred(stats) is truthy; return those stats. AssertionError naming
        `what` and showing the last stats otherwise."""
        t_end = time.monotonic() + timeout
        while True:
            s = self.stats()
            if pred(s):
                return s
            if time.monotonic() > t_end:
                raise AssertionError(f"{self.name}: {what} not within {timeout:.0f}s; last stats:\n"
                                     f"{json.dumps(s, indent=1)}")
            time.sleep(interval)

    def wait_event(self, etype: str, timeout: float, count: int = 1, **match: Any) -> list[dict]:
        """Wait until `count` events of `etype` with fields `match` were recorded; return them."""
        t_end = time.monotonic() + timeout
        while True:
            got = self.events(etype, **match)
            if len(got) >= count:
                return got
            if time.monotonic() > t_end:
                raise AssertionError(f"{self.name}: {len(got)} of {count} {etype} {match} within {timeout:.0f}s;"
                                     f" events: {[e['type'] for e in self.events()]}")
            time.sleep(0.25)

    def close(self) -> None:
        """Close the page, as a user closes a tab (livekit-client's page-leave handler may
        still get a leave out)."""
        self.browser.request("close", name=self.name)
        self.browser.pages.pop(self.name, None)


class PendingCall:
    """A page call under way (Page.call_async); result() waits for it like Page.call."""

    def __init__(self, page: Page, fn: str, fut: Future, timeout: float) -> None:
        self.page, self.fn, self.fut, self.timeout = page, fn, fut, timeout

    def result(self) -> Any:
        return self.page.browser._result(self.fut, self.timeout + PIPE_SLACK_S, f"{self.fn} ({self.page.name})")


# ----------------------------------------------------------------------------- stats --
# Helpers over Page.stats() results (client.js sb.stats()).
def remote_tracks(stats: dict, identity: str, *, source: str | None = None, kind: str | None = None) -> list[dict]:
    """The publications of remote participant `identity` as this page sees them."""
    tracks = stats["remote"].get(identity, {}).get("tracks", [])
    return [t for t in tracks if (source is None or t["source"] == source) and (kind is None or t["kind"] == kind)]


def inbound(track: dict, field: str) -> float:
    """A counter of a remote track's inbound-rtp stats (0 when not receiving yet)."""
    return (track.get("inbound") or {}).get(field) or 0


# ------------------------------------------------------------ checks used by the tests --
MEDIA_START_S = 25  # join + subscribe + first decoded frame / audible packet, generously
SAMPLE_GAP_S = 3.0  # between the two stats samples that must show progress
MIN_FRAMES_RISE = 10  # decoded frames per sample gap (the camera runs at 15 fps: ~45 expected)
MIN_AUDIO_PACKETS_RISE = 30  # Opus at 20 ms: ~150 packets per gap expected
MIN_ENERGY_RISE = 0.01  # totalAudioEnergy gained per gap (the fake mic gives ~0.25/s)
# events that mean the session was disturbed (client.js records them)
TROUBLE = {"reconnecting", "signalReconnecting", "disconnected", "encryptionError",
           "trackSubscriptionFailed", "mediaDevicesError"}


def connect_all(pages: list[Page], room: str, **opts) -> dict[str, dict]:
    """Join all pages to `room` one after the other (each waits for the previous one, so the
    join order, and with it who is told about whom how, is the same every run)."""
    return {p.name: p.connect(room, **opts) for p in pages}


def expected_tracks(stats: dict, want: dict[str, set[str]]) -> bool:
    """True once every (identity, source) in `want` is subscribed and has delivered something:
    a decoded video frame, or audio energy."""
    for identity, sources in want.items():
        for source in sources:
            ts = [t for t in remote_tracks(stats, identity, source=source) if t["subscribed"]]
            if len(ts) != 1:
                return False
            t = ts[0]
            if inbound(t, "framesDecoded" if t["kind"] == "video" else "totalAudioEnergy") <= 0:
                return False
    return True


def assert_media_flows(pages: dict[Page, dict[str, set[str]]], timeout: float = MEDIA_START_S) -> dict[str, dict]:
    """For every page: wait until each (publisher identity -> sources) it should receive is
    flowing, then sample all pages twice SAMPLE_GAP_S apart and require progress on each
    track: video framesDecoded, audio packetsReceived and totalAudioEnergy. Also no remote
    track beyond the expected ones. Returns the second sample per page."""
    for page, want in pages.items():
        page.wait_until(lambda s, want=want: expected_tracks(s, want), timeout,
                        f"media from {sorted((k, sorted(v)) for k, v in want.items())}")
    first = {page.name: page.stats() for page in pages}
    time.sleep(SAMPLE_GAP_S)
    second = {page.name: page.stats() for page in pages}
    for page, want in pages.items():
        s1, s2 = first[page.name], second[page.name]
        seen = {(i, t["source"]) for i in s2["remote"] for t in remote_tracks(s2, i)}
        wanted = {(i, src) for i, srcs in want.items() for src in srcs}
        assert seen == wanted, f"{page.name} sees tracks {sorted(seen)}, expected {sorted(wanted)}"
        assert page.name not in s2["remote"], f"{page.name} sees itself as a remote participant"
        for identity, sources in want.items():
            for source in sources:
                t1 = remote_tracks(s1, identity, source=source)[0]
                t2 = remote_tracks(s2, identity, source=source)[0]
                where = f"{page.name} <- {identity} {source} ({t2['sid']})"
                rise = lambda f: inbound(t2, f) - inbound(t1, f)  # noqa: E731
                if t2["kind"] == "video":
                    assert rise("framesDecoded") >= MIN_FRAMES_RISE, (
                        f"{where}: framesDecoded rose by {rise('framesDecoded')} in {SAMPLE_GAP_S}s"
                        f" (from {t1['inbound']} to {t2['inbound']})")
                    assert t2["attached"] >= 1, f"{where}: not attached to a <video>: {t2}"
                else:
                    assert rise("packetsReceived") >= MIN_AUDIO_PACKETS_RISE, (
                        f"{where}: {rise('packetsReceived')} audio packets in {SAMPLE_GAP_S}s"
                        f" (from {t1['inbound']} to {t2['inbound']})")
                    assert rise("totalAudioEnergy") >= MIN_ENERGY_RISE, (
                        f"{where}: totalAudioEnergy rose by {rise('totalAudioEnergy'):.4f} in {SAMPLE_GAP_S}s"
                        f" (from {t1['inbound']} to {t2['inbound']})")
    return second


def sent_rids(stats: dict) -> list[str]:
    """The simulcast layers (rids) of the page's own camera that have sent frames."""
    cam = [t for t in stats["local"] if t["source"] == "camera"][0]
    return sorted(o.get("rid", "") for o in cam["outbound"] if o.get("framesSent"))


def assert_undisturbed(*pages: Page) -> None:
    """No page saw a reconnect, disconnect, failed subscription or E2EE error."""
    for p in pages:
        bad = [e for e in p.events() if e["type"] in TROUBLE]
        assert not bad, f"{p.name}: {bad}"


def signalling_paths(page: Page) -> list[str]:
    """Paths of the signalling WebSockets the page opened, in order (e.g. ['/rtc/v1'])."""
    return [urlparse(ws["url"]).path for ws in page.websockets() if urlparse(ws["url"]).port == harness.HTTP_PORT]


def joined_paths(server: harness.Server) -> dict[str, str]:
    """identity -> signalling path, from the server's "participant joined" log lines."""
    out = {}
    for line in server.log.read_text(errors="replace").splitlines():
        _, found, fields = line.partition("participant joined ")  # fields follow the message
        ident, path = re.search(r"\bidentity=(\S+)", fields), re.search(r'\bpath="([^"]+)"', fields)
        if found and ident and path:
            out[ident.group(1)] = path.group(1)
    return out
