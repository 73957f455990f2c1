"""pytest fixtures for the end-to-end suite (see harness.py and tests/README.md)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import harness

# Every test gets this long in all, whatever it waits on (each wait is bounded too).
TEST_TIMEOUT_S = int(os.environ.get("SB_E2E_TEST_TIMEOUT", "240"))

LOGS = pytest.StashKey[list]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_server: starts target/release/switchboard in a namespace")


def _sigterm_to_interrupt(signum, frame):
    # `timeout` (scripts/test-all.sh) stops pytest with SIGTERM: turn it into a
    # KeyboardInterrupt so fixture finalizers still stop servers/peers and delete namespaces.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session", autouse=True)
def _session_checks():
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    if os.geteuid() != 0:
        pytest.exit("the end-to-end suite creates network namespaces: run it as root", returncode=4)
    harness.ip_bin()
    harness.cleanup_stale_namespaces()
    yield


@pytest.fixture(autouse=True)
def _test_deadline(request):
    """A hard bound on each test: SIGALRM raises in the test, fixtures still clean up."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded {TEST_TIMEOUT_S}s (SB_E2E_TEST_TIMEOUT)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def register_log(request, title: str, path: Path) -> None:
    request.node.stash.setdefault(LOGS, []).append((title, path))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for title, path in item.stash.get(LOGS, []):
            rep.sections.append((f"{title}: {path}", harness.tail(path)))


@pytest.fixture
def netns(request):
    """A fresh network namespace (lo + veth hx0 10.254.0.1 / hx1 10.254.0.2), deleted after
    the test in every case, together with any process still running in it."""
    ns = harness.Netns()
    try:
        ns.create()
        yield ns
    finally:
        ns.destroy()


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path


@pytest.fixture
def start_server(netns, workdir, request):
    """start_server(*extra_args, env={...}) -> harness.Server, ready (GET / == OK); stopped at
    teardown. `env` adds variables (e.g. SWITCHBOARD_* settings) to this server's environment.
    Its log (stdout+stderr) is attached to the report of a failing test."""
    servers: list[harness.Server] = []

    def _start(*args: str, env: dict[str, str] | None = None) -> harness.Server:
        s = harness.Server(netns, workdir, list(args), env=env)
        servers.append(s)
        register_log(request, "server log", s.log)
        return s.start()

    yield _start
    died = []
    for s in servers:
        was_alive = s.alive() or s.stopped
        code = s.stop()
        if s.ready and not was_alive:
            died.append(f"server {s.args} exited by itself with {code}; log {s.log}")
    if died:
        pytest.fail("; ".join(died) + ":\n" + harness.tail(servers[0].log, 60))


@pytest.fixture
def server(start_server) -> harness.Server:
    return start_server()


@pytest.fixture
def peers(netns, workdir, request):
    """peers(identity, room, **Peer fields) -> started harness.Peer; all killed at teardown."""
    started: list[harness.Peer] = []

    def _peer(identity: str, room: str, **kw) -> harness.Peer:
        p = harness.Peer(netns, workdir, identity, room, **kw)
        register_log(request, f"peer {identity} log", p.log)
        started.append(p)
        return p.start()

    yield _peer
    for p in started:
        p.kill()


@pytest.fixture
def raw_ws(netns):
    """raw_ws(path, headers=[]) -> (lkproto.SignalClient | None, lkproto.HttpReply): a raw
    LiveKit signalling client (no SDK) on a WebSocket to the server in the test's namespace;
    the client is None when the upgrade was refused. All are closed at teardown."""
    import lkproto

    opened: list[lkproto.WebSocket] = []

    def _open(path: str, headers: list[str] = (), timeout: float = 5.0):
        ws = lkproto.WebSocket(netns.tcp_connect(timeout=timeout))
        opened.append(ws)
        reply = ws.handshake(f"127.0.0.1:{harness.HTTP_PORT}", path, list(headers), timeout=timeout)
        if reply.status != 101:
            ws.sock.close()
            return None, reply
        return lkproto.SignalClient(ws), reply

    yield _open
    for ws in opened:
        ws.close()


@pytest.fixture
def browser(netns, workdir, request):
    """browser.Browser: headless Chromium running livekit-client pages (tests/browser/) in the
    test's namespace; `browser.open(name, version)` adds a participant. Closed at teardown;
    its log (page consoles, WebSockets, errors) is attached to the report of a failing test."""
    import browser as browser_mod

    b = browser_mod.Browser(netns, workdir)
    register_log(request, "browser log", b.log)
    try:
        b.start()
        yield b
    finally:
        b.stop()
