"""End-to-end harness: network namespaces, the switchboard server, peer processes, checks.

Everything that talks to the server runs inside a per-test network namespace
(`ip netns exec`), so the fixed ports (HTTP/WS 7880, media UDP 7882) never collide and
nothing leaves the machine. pytest itself stays in the root namespace.
"""
from __future__ import annotations

import ctypes
import datetime
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from livekit import api

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PEER_SCRIPT = HERE / "peer.py"
NSHTTP_SCRIPT = HERE / "nshttp.py"
PYTHON = sys.executable  # the venv's interpreter; used inside the namespace too

API_KEY = "devkey"
API_SECRET = "secret"
HTTP_PORT = 7880
NODE_IP = "10.254.0.1"
PEER_IP = "10.254.0.2"
WS_URL = f"ws://127.0.0.1:{HTTP_PORT}"
HTTP_URL = f"http://127.0.0.1:{HTTP_PORT}"

NS_PREFIX = "sbtest-"
NS_ENTER_TIMEOUT_S = 10  # `ip netns exec` forked -> in the namespace; milliseconds unless the machine is swamped
NS_TERM_GRACE_S = 3  # Netns.destroy: SIGTERM, then SIGKILL after this
NS_DESTROY_TIMEOUT_S = 15  # Netns.destroy gives up killing after this (and still deletes the namespace)
_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_ns_counter = itertools.count(1)


def server_bin() -> Path:
    return Path(os.environ.get("SB_E2E_SERVER_BIN", REPO / "target" / "release" / "switchboard"))


def ip_bin() -> str:
    for cand in (shutil.which("ip"), "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise RuntimeError("`ip` (iproute2) not found; run scripts/install-test-deps.sh")


def _run(cmd: list[str], timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> exit {r.returncode}: {r.stderr.strip()}")
    return r


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process(proc: subprocess.Popen | None, timeout: float) -> int | None:
    """SIGTERM `proc` (a process we started), SIGKILL it after `timeout` s; its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def tail(path: Path | str, lines: int = 150) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    ls = text.splitlines()
    head = f"... ({len(ls) - lines} earlier lines in {path})\n" if len(ls) > lines else ""
    return head + "\n".join(ls[-lines:])


# --------------------------------------------------------------------------- netns --
class Netns:
    """A network namespace with lo up and a veth pair hx0 (10.254.0.1) <-> hx1 (10.254.0.2)."""

    def __init__(self, name: str | None = None) -> None:
        """A new namespace of this process (`create()` makes it), or, given `name`, one that
        exists already (e.g. a stale one to `destroy()`)."""
        self.ip = ip_bin()
        self.name = name or f"{NS_PREFIX}{os.getpid()}-{next(_ns_counter)}"
        self.created = name is not None

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"

    def create(self) -> "Netns":
        ip, n = self.ip, self.name
        _run([ip, "netns", "add", n])
        self.created = True
        try:
            _run([ip, "-n", n, "link", "set", "lo", "up"])
            _run([ip, "-n", n, "link", "add", "hx0", "type", "veth", "peer", "name", "hx1"])
            _run([ip, "-n", n, "addr", "add", f"{NODE_IP}/24", "dev", "hx0"])
            _run([ip, "-n", n, "addr", "add", f"{PEER_IP}/24", "dev", "hx1"])
            _run([ip, "-n", n, "link", "set", "hx0", "up"])
            _run([ip, "-n", n, "link", "set", "hx1", "up"])
        except BaseException:
            self.destroy()
            raise
        return self

    def prefix(self) -> list[str]:
        return [self.ip, "netns", "exec", self.name]

    def run(self, cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self.prefix() + cmd, capture_output=True, text=True, timeout=timeout)

    def popen(self, cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        """Start `cmd` in the namespace; returns once it is in there (`wait_entered`)."""
        # `ip netns exec` execs the command (no fork), so the pid is the command's own.
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                self.prefix() + cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        self.wait_entered(proc)
        return proc

    def holds(self, pid: int) -> bool:
        """Whether process `pid` is in this namespace now (what `ip netns pids` compares)."""
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
            ns = os.stat(self.path)
        except OSError:  # the process is gone or a zombie (namespaces released), or no namespace
            return False
        return (st.st_dev, st.st_ino) == (ns.st_dev, ns.st_ino)

    def wait_entered(self, proc: subprocess.Popen, timeout: float = NS_ENTER_TIMEOUT_S) -> None:
        """Wait until `proc`, started with `prefix()`, is in the namespace. `Popen` returns once
        the child is forked, still in pytest's namespace; `ip netns exec` calls setns(2) only
        after that, and until then neither `pids()` lists it nor `destroy()` kills it. Returns
        too if the process exits first (`ip` failed, or a short command is done). If it is
        neither in nor gone within `timeout` s, kills it and raises RuntimeError."""
        t_end = time.monotonic() + timeout
        while not self.holds(proc.pid):
            if proc.poll() is not None:
                return
            if time.monotonic() > t_end:
                proc.kill()
                proc.wait(5)
                raise RuntimeError(f"pid {proc.pid} ({' '.join(map(str, proc.args[:6]))} ...) not in namespace"
                                   f" {self.name} after {timeout}s; killed")
            time.sleep(0.005)

    def pids(self) -> list[int]:
        r = _run([self.ip, "netns", "pids", self.name], check=False)
        return [int(x) for x in r.stdout.split()] if r.returncode == 0 else []

    def destroy(self, grace: float = NS_TERM_GRACE_S, timeout: float = NS_DESTROY_TIMEOUT_S) -> None:
        """Kill every process in the namespace, then delete it. SIGTERM (once per process),
        SIGKILL after `grace` s; repeated until the namespace holds no process, since what is
        in there may start more while it is being killed. After `timeout` s the namespace is
        deleted anyway and RuntimeError names what survived."""
        if not self.created:
            return
        # Only our own processes can be in our namespace: the server and the peers we started
        # (`popen` returns only once a process is in, so none is on its way in).
        t0 = time.monotonic()
        termed: set[int] = set()
        left = self.pids()
        while left and time.monotonic() - t0 < timeout:
            kill = time.monotonic() - t0 >= grace
            for pid in left:
                if kill or pid not in termed:
                    try:
                        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                    termed.add(pid)
            time.sleep(0.05)
            left = self.pids()
        _run([self.ip, "netns", "del", self.name], check=False)
        self.created = False
        if left:
            raise RuntimeError(f"processes {left} still in namespace {self.name} after {timeout}s of killing;"
                               " namespace deleted anyway")

    def kill_signalling(self, port: int = HTTP_PORT) -> int:
        """Abort every established TCP connection on the server's signalling port, on the
        server's side (`ss -K`, sock_destroy: the server's socket errors at once and the
        client sees a reset), the way a proxy restart or NAT timeout drops a WebSocket.
        Returns how many sockets were killed."""
        r = self.run(["ss", "-K", "-t", "-n", "-H", "state", "established", f"( sport = :{port} )"])
        if r.returncode != 0:
            raise RuntimeError(f"ss -K failed: {r.stderr.strip()}")
        return len([ln for ln in r.stdout.splitlines() if ln.strip()])

    # --- sockets inside the namespace, used from pytest ----------------------------
    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket that lives in this namespace, for use by pytest (which stays in the root
        namespace): a short-lived helper thread enters the namespace (setns(2) affects only
        the calling thread) and creates it; the socket keeps its namespace for good."""
        out: dict = {}

        def make() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if _libc.setns(fd, _CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({self.name}): {os.strerror(err)}")
                    out["sock"] = socket.socket(family, type)
                finally:
                    os.close(fd)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                out["err"] = e

        t = threading.Thread(target=make, name=f"setns-{self.name}")
        t.start()
        t.join(10)
        if "err" in out:
            raise out["err"]
        return out["sock"]

    def tcp_connect(self, host: str = "127.0.0.1", port: int = HTTP_PORT, timeout: float = 5) -> socket.socket:
        s = self.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect((host, port))
        return s

    # --- HTTP from inside the namespace -------------------------------------------
    def nshttp(self, *args: str, timeout: float = 30) -> dict:
        r = self.run([PYTHON, str(NSHTTP_SCRIPT), *args], timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"nshttp {args} failed: {r.stderr}")
        return json.loads(r.stdout)

    def http_get(self, path: str, timeout: float = 5) -> dict:
        return self.nshttp("get", HTTP_URL + path, "--timeout", str(timeout), timeout=timeout + 10)

    def ws_upgrade(self, path: str, headers: list[str] = (), timeout: float = 5) -> dict:
        args = ["upgrade", "127.0.0.1", str(HTTP_PORT), path, "--timeout", str(timeout)]
        for h in headers:
            args += ["--header", h]
        return self.nshttp(*args, timeout=timeout + 10)


class LinkedNetns(Netns):
    """A client's own namespace, joined to the server's (`server_ns`) by a veth pair, so what
    reaches this client can be shaped on its link alone: the server side is `sbl<i>s`
    (10.254.<10+i>.1), the client side `sbl<i>c` (10.254.<10+i>.2, default route via the
    server side). The client reaches the server at NODE_IP (`url`)."""

    def __init__(self, server_ns: Netns, index: int) -> None:
        super().__init__()
        self.server_ns = server_ns
        self.index = index
        self.server_if = f"sbl{index}s"
        self.client_if = f"sbl{index}c"
        self.server_ip = f"10.254.{10 + index}.1"
        self.client_ip = f"10.254.{10 + index}.2"
        self.url = f"ws://{NODE_IP}:{HTTP_PORT}"
        self.nft_table = f"sbshape{index}"

    def create(self) -> "LinkedNetns":
        ip, n, s = self.ip, self.name, self.server_ns.name
        _run([ip, "netns", "add", n])
        self.created = True
        try:
            _run([ip, "-n", n, "link", "set", "lo", "up"])
            _run([ip, "-n", s, "link", "add", self.server_if, "type", "veth", "peer", "name", self.client_if,
                  "netns", n])
            _run([ip, "-n", s, "addr", "add", f"{self.server_ip}/24", "dev", self.server_if])
            _run([ip, "-n", n, "addr", "add", f"{self.client_ip}/24", "dev", self.client_if])
            _run([ip, "-n", s, "link", "set", self.server_if, "up"])
            _run([ip, "-n", n, "link", "set", self.client_if, "up"])
            _run([ip, "-n", n, "route", "add", "default", "via", self.server_ip])
        except BaseException:
            self.destroy()
            raise
        return self

    def shape(self, rate_kbit: int, loss_pct: int = 0) -> None:
        """Limit what the server sends this client: `tc tbf` at `rate_kbit` (50 ms of queue),
        and drop `loss_pct` % of its UDP datagrams at random (nftables)."""
        s = self.server_ns.prefix()
        _run(s + ["tc", "qdisc", "replace", "dev", self.server_if, "root", "tbf", "rate", f"{rate_kbit}kbit",
                  "burst", "16kbit", "latency", "50ms"])
        if loss_pct:
            t = self.nft_table
            _run(s + ["nft", "add", "table", "inet", t])
            _run(s + ["nft", "add", "chain", "inet", t, "out", "{ type filter hook output priority 0 ; }"])
            _run(s + ["nft", "add", "rule", "inet", t, "out", "oifname", self.server_if, "meta", "l4proto", "udp",
                      "numgen", "random", "mod", "100", "<", str(loss_pct), "drop"])

    def unshape(self) -> None:
        s = self.server_ns.prefix()
        _run(s + ["tc", "qdisc", "del", "dev", self.server_if, "root"], check=False)
        _run(s + ["nft", "delete", "table", "inet", self.nft_table], check=False)


def nft_bin() -> str | None:
    for cand in (shutil.which("nft"), "/usr/sbin/nft", "/sbin/nft"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def cleanup_stale_namespaces() -> None:
    """Delete sbtest-<pid>-<n> namespaces left by test runs whose process is gone."""
    ip = ip_bin()
    r = _run([ip, "netns", "list"], check=False)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{NS_PREFIX}(\d+)-\d+", name)
        if m and not _pid_alive(int(m.group(1))):
            # only this harness makes sbtest-* namespaces: what runs in one is a server or
            # peer a killed test run left behind
            try:
                Netns(name).destroy(grace=0)
            except RuntimeError as e:
                print(f"warning: stale namespace: {e}", file=sys.stderr)


# -------------------------------------------------------------------------- server --
def parse_prometheus(text: str) -> dict[str, float]:
    """{series: value}; series is the metric name plus its label set as written."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)", line)
        if m:
            try:
                out[m.group(1)] = float(m.group(2))
            except ValueError:
                pass
    return out


def metric(metrics: dict[str, float], name: str) -> float | None:
    """Sum of all series of `name` (None if absent)."""
    vals = [v for k, v in metrics.items() if k == name or k.startswith(name + "{")]
    return sum(vals) if vals else None


class Server:
    def __init__(self, ns: Netns, workdir: Path, args: list[str], env: dict[str, str] | None = None,
                 dev: bool = True) -> None:
        self.ns = ns
        self.args = args
        self.dev = dev  # pass --dev (embedded defaults); without it the args must configure keys
        self.extra_env = dict(env or {})  # e.g. SWITCHBOARD_* settings for this server only
        base = f"server{'-' + '_'.join(a.strip('-') for a in args) if args else ''}"
        self.log = workdir / f"{base}.log"
        n = 1
        while self.log.exists():  # a second server with the same arguments (e.g. a restart)
            n += 1
            self.log = workdir / f"{base}-{n}.log"
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.stopped = False  # stop() was called (a test may stop a server on purpose)

    def start(self, ready_timeout: float = 30) -> "Server":
        binary = server_bin()
        if not binary.exists():
            raise RuntimeError(f"server binary {binary} missing: run `cargo build --release` (or set SB_E2E_SERVER_BIN)")
        # The server reads SWITCHBOARD_* (and LIVEKIT_*) variables as configuration and
        # refuses unknown ones: start it from a clean slate, whatever the caller's shell has.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHBOARD_", "LIVEKIT_"))}
        env.setdefault("RUST_LOG", "info")
        env.setdefault("NO_COLOR", "1")  # plain log file
        env.setdefault("RUST_BACKTRACE", "1")
        # SB_E2E_MEDIA_THREADS runs the server with that many media threads (CI runs one browser
        # test with 1 and with 2); a test's own settings win.
        if os.environ.get("SB_E2E_MEDIA_THREADS"):
            env["SWITCHBOARD_RTC__MEDIA_THREADS"] = os.environ["SB_E2E_MEDIA_THREADS"]
        # SB_E2E_BANDWIDTH_ESTIMATION=false runs the server without subscriber bandwidth
        # estimation (rtc.bandwidth_estimation), to tell its effects apart.
        if os.environ.get("SB_E2E_BANDWIDTH_ESTIMATION"):
            env["SWITCHBOARD_RTC__BANDWIDTH_ESTIMATION"] = os.environ["SB_E2E_BANDWIDTH_ESTIMATION"]
        env.update(self.extra_env)
        cmd = [str(binary), *(["--dev"] if self.dev else []), "--node-ip", NODE_IP, *self.args]
        self.proc = self.ns.popen(cmd, self.log, env=env)
        r = self.ns.nshttp("wait-ready", HTTP_URL + "/", "--timeout", str(ready_timeout), "--expect-body", "OK",
                           "--pid", str(self.proc.pid), timeout=ready_timeout + 15)
        if not r["ready"]:
            try:
                code = self.proc.wait(1)
            except subprocess.TimeoutExpired:
                code = None
            raise RuntimeError(
                f"server did not become ready within {ready_timeout}s (exit code {code}; last: {r['last_error']});"
                f" log {self.log}:\n{tail(self.log, 60)}")
        self.ready = True
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # `ip netns exec` execs the server: this is the server's pid

    def fd_count(self) -> int:
        """Open file descriptors of the server process."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kb(self) -> int:
        """Resident memory of the server (VmRSS, kB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS in /proc/{self.pid}/status")

    def stop(self, timeout: float = 10) -> int | None:
        self.stopped = True
        return stop_process(self.proc, timeout)

    def metrics(self) -> dict[str, float]:
        r = self.ns.http_get("/metrics")
        if r["status"] != 200:
            raise AssertionError(f"/metrics -> {r['status']} {r['error'] or r['body'][:300]}")
        return parse_prometheus(r["body"])

    def wait_metrics(self, want: dict[str, float], timeout: float, *, op: str = "==") -> dict[str, float]:
        """Poll /metrics until every named metric satisfies `op` its wanted value; return the last
        reading. Raises AssertionError naming the metrics that never got there."""
        t_end = time.monotonic() + timeout
        while True:
            m = self.metrics()
            bad = {}
            for name, v in want.items():
                got = metric(m, name)
                ok = got is not None and (got == v if op == "==" else got >= v)
                if not ok:
                    bad[name] = got
            if not bad:
                return m
            if time.monotonic() > t_end:
                raise AssertionError(f"after {timeout}s metrics still {bad}, wanted {op} {want}")
            time.sleep(0.25)


# --------------------------------------------------------------------------- tokens --
def make_token(identity: str, room: str, *, key: str = API_KEY, secret: str = API_SECRET,
               ttl: datetime.timedelta | None = None, room_join: bool | None = True, **grants) -> str:
    """`grants`: further api.VideoGrants fields, e.g. can_publish=False, hidden=True."""
    t = api.AccessToken(key, secret).with_identity(identity).with_name(identity)
    t = t.with_grants(api.VideoGrants(room_join=room_join, room=room, **grants))
    if ttl is not None:
        t = t.with_ttl(ttl)
    return t.to_jwt()


# ---------------------------------------------------------------------------- peers --
@dataclass
class Peer:
    """A participant process (tests/e2e/peer.py) inside the namespace."""

    ns: Netns
    workdir: Path
    identity: str
    room: str
    duration: float = 10.0
    tone: float = 0.0
    amplitude: float | None = None  # peak of the tone, 0..1 (peer.py's default when None)
    video: bool = False
    single_pc: str = "default"
    e2ee_key: str | None = None
    wait_for: list[str] = field(default_factory=list)
    send_data: int = 0
    send_private: str = ""
    settle: float = 1.0
    extra: list[str] = field(default_factory=list)
    connect_timeout: float = 20.0
    wait_timeout: float = 20.0
    token: str | None = None
    tag: str | None = None  # names the result/log files instead of the identity (two peers, one identity)
    url: str = WS_URL  # a peer in a LinkedNetns reaches the server at its veth address
    proc: subprocess.Popen | None = None

    @property
    def out(self) -> Path:
        return self.workdir / f"peer-{self.tag or self.identity}.json"

    @property
    def log(self) -> Path:
        return self.workdir / f"peer-{self.tag or self.identity}.log"

    @property
    def hard_timeout(self) -> float:
        return self.connect_timeout + 5 + self.wait_timeout + self.settle + self.duration + 60

    def start(self) -> "Peer":
        token = self.token or make_token(self.identity, self.room)
        cmd = [PYTHON, str(PEER_SCRIPT), "--url", self.url, "--token", token, "--out", str(self.out),
               "--duration", str(self.duration), "--single-pc", self.single_pc,
               "--connect-timeout", str(self.connect_timeout), "--wait-timeout", str(self.wait_timeout),
               "--settle", str(self.settle)]
        if self.tone:
            cmd += ["--tone", str(self.tone)]
        if self.amplitude is not None:
            cmd += ["--amplitude", str(self.amplitude)]
        if self.video:
            cmd += ["--video"]
        if self.e2ee_key is not None:
            cmd += ["--e2ee-key", self.e2ee_key]
        if self.wait_for:
            cmd += ["--wait-for", ",".join(self.wait_for)]
        if self.send_data:
            cmd += ["--send-data", str(self.send_data)]
        if self.send_private:
            cmd += ["--send-private", self.send_private]
        cmd += self.extra
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.started = time.monotonic()
        self.proc = self.ns.popen(cmd, self.log, env=env)
        return self

    def wait(self) -> dict:
        """Wait (bounded by hard_timeout from start) and return the peer's JSON result."""
        assert self.proc is not None
        left = max(1.0, self.started + self.hard_timeout - time.monotonic())
        try:
            self.proc.wait(left)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"peer {self.identity} still running after {self.hard_timeout:.0f}s; killed."
                                 f" log {self.log}:\n{tail(self.log, 40)}")
        if not self.out.exists():
            raise AssertionError(f"peer {self.identity} exited {self.proc.returncode} without a result;"
                                 f" log {self.log}:\n{tail(self.log, 40)}")
        res = json.loads(self.out.read_text())
        res["_exit"] = self.proc.returncode
        return res

    @property
    def live_events(self) -> Path:
        return self.workdir / f"peer-{self.tag or self.identity}.json.events.jsonl"

    def events_so_far(self) -> list[dict]:
        """The peer's events up to now (peer.py appends each to a file as it happens)."""
        try:
            text = self.live_events.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line being written
        return out

    def wait_event(self, etype: str, timeout: float, /, count: int = 1, **match) -> list[dict]:
        """Wait (at most `timeout` s) until the running peer has had `count` events of type `etype`
        with the given fields; return them. AssertionError if not, or if the peer exits first."""
        t_end = time.monotonic() + timeout
        while True:
            got = [e for e in self.events_so_far()
                   if e["type"] == etype and all(e.get(k) == v for k, v in match.items())]
            if len(got) >= count:
                return got
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"peer {self.tag or self.identity} exited ({self.proc.returncode}) before"
                                     f" {count} {etype} {match}; had {got}; log {self.log}:\n{tail(self.log, 30)}")
            if time.monotonic() > t_end:
                raise AssertionError(f"peer {self.tag or self.identity}: {len(got)} of {count} {etype} {match}"
                                     f" within {timeout}s; events {[e['type'] for e in self.events_so_far()]}")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass


def wait_all(peers: list[Peer]) -> dict[str, dict]:
    return {p.identity: p.wait() for p in peers}


def assert_joined(res: dict, who: str) -> None:
    assert res["connected"], f"{who} could not join: {res.get('connect_error')}"
    assert res.get("error") is None, f"{who} failed: {res['error']}"
    assert res["_exit"] == 0, f"{who} exited {res['_exit']}"
    assert not res.get("callback_errors"), f"{who}: event handlers failed: {res['callback_errors']}"


# --------------------------------------------------------------------------- checks --
def video_delivery(receiver: dict, sender: dict, sender_id: str, window: float) -> dict:
    """Share of the counters `sender` sent during the `window` seconds after `receiver`
    decoded its first frame from it, that `receiver` decoded at least once."""
    rec = receiver["remote"].get(sender_id, {}).get("video")
    info = {"window": window}
    if not rec or not rec.get("counters"):
        info.update(ratio=0.0, reason=f"no decoded video from {sender_id}: {rec and {k: rec.get(k) for k in ('frames', 'undecodable', 'sizes')}}")
        return info
    sent = sender["published"].get("video", {}).get("sent", [])
    t0 = rec["counters"][0][1]
    t1 = t0 + window
    last_sent = sent[-1][1] if sent else 0
    expected = {c for c, t in sent if t0 <= t <= t1}
    got = {c for c, _ in rec["counters"]}
    info.update(
        first_frame_after_subscribe=t0 - rec.get("subscribed_t", t0),
        expected=len(expected), received=len(expected & got), frames=rec["frames"],
        undecodable=rec["undecodable"], sizes=rec["sizes"],
        ratio=(len(expected & got) / len(expected)) if expected else 0.0,
    )
    if last_sent < t1 + 0.5:
        info["reason"] = (f"sender {sender_id} stopped {t1 + 0.5 - last_sent:.1f}s before the window ended"
                          f" (media started late: first frame {t0 - sender['connected']:.1f}s after sender joined)")
        info["ratio"] = 0.0
    return info


def tone_presence(receiver: dict, sender_id: str, hz: float, tol: float = 10.0) -> dict:
    """How many 0.2 s windows of `sender_id`'s audio at `receiver` had `hz` as dominant frequency."""
    rec = receiver["remote"].get(sender_id, {}).get("audio")
    if not rec or "dominant_hz_hist" not in rec:
        return {"tone_seconds": 0.0, "reason": f"no audio from {sender_id}: {rec}"}
    hist = {float(k): v for k, v in rec["dominant_hz_hist"].items()}
    on = sum(v for f, v in hist.items() if abs(f - hz) <= tol)
    off = sum(v for f, v in hist.items() if abs(f - hz) > tol)
    return {"tone_seconds": on * 0.2, "other_seconds": off * 0.2, "silent_seconds": rec["silent_windows"] * 0.2,
            "dominant_hz": rec["dominant_hz"], "rms": rec["rms"], "hist": rec["dominant_hz_hist"]}


def events(res: dict, kind: str, **match) -> list[dict]:
    return [e for e in res["events"] if e["type"] == kind and all(e.get(k) == v for k, v in match.items())]
