"""A real Synapse (PyPI `matrix-synapse`, SQLite) inside the test's network namespace, and a
Switchboard configured for MatrixRTC authorisation against it (issue 3's end-to-end tests).

Fixtures (import them into a test module: `from synapse_harness import synapse, ...  # noqa`):
  synapse(server_name="hs1.test", port=None) -> Synapse, started and answering
      /_matrix/client/versions; several per test (two server names, two ports) are fine.
      Stopped at teardown; each one's log is attached to a failing test's report.
  matrixrtc_server(full_access=("hs1.test",), homeserver_urls=None, dev=True, extra_toml="")
      -> harness.Server: switchboard with a `[matrixrtc]` config file, ready (GET / == OK).

Synapse is configured (Synapse.config()) with: one plain-HTTP listener on 127.0.0.1:<port>
carrying the `client`, `federation` and `openid` resources (OpenID userinfo is served only on a
listener with `federation` or `openid`), SQLite, `registration_shared_secret` (users are made
with the shared-secret admin API), `enable_registration: false`, `trusted_key_servers: []`,
every `rc_*` rate limit raised, and MSC4140 delayed events on (in 1.163 that is just
`max_event_delay_duration`; there is no experimental flag for it any more).

All HTTP goes from pytest (root namespace) over sockets created inside the test's namespace
(harness.Netns.tcp_connect), so it reaches 127.0.0.1 of the namespace.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import secrets
import sqlite3
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest

import harness

# Well-known ports of the test homeservers; any free port of the namespace works.
SYNAPSE_PORTS = {"hs1.test": 8008, "hs2.test": 8009}
SHARED_SECRET = "switchboard-e2e-shared-secret"
READY_TIMEOUT_S = 90.0  # a cold first start (SQLite schema set-up) takes a few seconds here
SYNAPSE_ENV_DROP = ("SYNAPSE_", "LIVEKIT_", "SWITCHBOARD_")



# ------------------------------------------------------------------------------ HTTP --
class _NsConnection(http.client.HTTPConnection):
    """http.client over a TCP socket that lives in the test's network namespace."""

    def __init__(self, ns: harness.Netns, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ns = ns

    def connect(self) -> None:
        self.sock = self._ns.tcp_connect(self.host, self.port, timeout=self.timeout)


@dataclass
class Reply:
    status: int | None
    headers: dict[str, str]  # names lower-cased
    body: bytes
    error: str | None = None  # transport error (no status)
    elapsed: float = 0.0

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def json_or_none(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def __repr__(self) -> str:  # short, for assertion messages
        body = self.text
        if len(body) > 400:
            body = body[:400] + f"...({len(self.body)} bytes)"
        return f"<HTTP {self.status} {body!r}{' error ' + self.error if self.error else ''}>"


def ns_request(ns: harness.Netns, method: str, url: str, *, body: bytes | str | dict | list | None = None,
               headers: dict[str, str] | None = None, timeout: float = 15.0) -> Reply:
    """One HTTP/1.1 request from inside the namespace. A dict/list body is sent as JSON with
    `Content-Type: application/json` unless `headers` sets one. Never raises for transport
    errors: they come back as Reply(status=None, error=...). If the server answers before
    it read the whole body and then closes, the answer is still read (Linux keeps what
    arrived before a reset readable)."""
    u = urllib.parse.urlsplit(url)
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    hdrs = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        if not any(k.lower() == "content-type" for k in hdrs):
            hdrs["Content-Type"] = "application/json"
    elif isinstance(body, str):
        body = body.encode()
    # any other iterable of bytes (e.g. a tuple) goes out with Transfer-Encoding: chunked
    t0 = time.monotonic()
    conn = _NsConnection(ns, u.hostname or "127.0.0.1", u.port or 80, timeout)
    send_error = None
    try:
        try:
            conn.request(method, path, body=body, headers=hdrs)
        except (BrokenPipeError, ConnectionResetError) as e:
            if conn.sock is None:
                raise
            send_error = f"{type(e).__name__} while sending: {e}"
        r = conn.getresponse()
        data = r.read()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, data, None, time.monotonic() - t0)
    except Exception as e:  # noqa: BLE001 - reported to the caller
        err = f"{type(e).__name__}: {e}"
        if send_error:
            err = f"{send_error}; then {err}"
        return Reply(None, {}, b"", err, time.monotonic() - t0)
    finally:
        conn.close()


def _q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


# --------------------------------------------------------------------------- Synapse --
@dataclass
class MatrixUser:
    user_id: str
    access_token: str
    device_id: str
    server_name: str

    @property
    def localpart(self) -> str:
        return self.user_id[1:].split(":", 1)[0]


class MatrixError(AssertionError):
    pass


class Synapse:
    """One Synapse homeserver process inside `ns`, its files under workdir/synapse-<name>/."""

    def __init__(self, ns: harness.Netns, workdir: Path, server_name: str = "hs1.test", port: int | None = None):
        self.ns = ns
        self.server_name = server_name
        self.port = port or SYNAPSE_PORTS.get(server_name) or 8010
        self.dir = workdir / f"synapse-{server_name}"
        self.cfg = self.dir / "homeserver.yaml"
        self.db = self.dir / "homeserver.db"
        self.log = self.dir / "synapse.log"  # stdout+stderr (Synapse logs to stderr without log_config)
        self.proc: subprocess.Popen | None = None
        self.ready = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- set-up ------------------------------------------------------------------------
    def config(self) -> dict:
        d = str(self.dir)
        high = {"per_second": 10000, "burst_count": 10000}
        return {
            "server_name": self.server_name,
            # also makes Synapse serve /.well-known/matrix/client with this base URL (how an
            # authorisation service finds a user's client-server API for delegated leave)
            "public_baseurl": self.url + "/",
            "pid_file": f"{d}/homeserver.pid",
            "listeners": [{
                "port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client", "federation", "openid"], "compress": False}],
            }],
            "database": {"name": "sqlite3", "args": {"database": str(self.db)}},
            "media_store_path": f"{d}/media_store",
            "signing_key_path": f"{d}/signing.key",
            "registration_shared_secret": SHARED_SECRET,
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "enable_registration": False,
            "report_stats": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "enable_metrics": False,
            "url_preview_enabled": False,
            "presence": {"enabled": False},
            "federation_domain_whitelist": [],  # this test homeserver talks to nobody
            # MSC4140 delayed events: enabled by a maximum delay (Synapse >= 1.118).
            "max_event_delay_duration": "24h",
            "rc_message": high,
            "rc_registration": high,
            "rc_login": {"address": high, "account": high, "failed_attempts": high},
            "rc_joins": {"local": high, "remote": high},
            "rc_joins_per_room": high,
            "rc_invites": {"per_room": high, "per_user": high, "per_issuer": high},
            "rc_room_creation": high,
            "rc_delayed_event_mgmt": high,
            "rc_presence": {"per_user": high},
            "rc_3pid_validation": high,
            "rc_key_requests": high,
            "rc_media_create": high,
            "rc_reports": high,
            "rc_user_directory": high,
            "rc_admin_redaction": high,
        }

    def write_config(self) -> None:
        from signedjson.key import generate_signing_key, write_signing_keys  # ships with Synapse

        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "media_store").mkdir(exist_ok=True)
        with open(self.dir / "signing.key", "w") as f:
            write_signing_keys(f, [generate_signing_key("a_" + secrets.token_hex(2))])
        # JSON is YAML: no YAML writer needed
        self.cfg.write_text(json.dumps(self.config(), indent=2) + "\n")

    def start(self, ready_timeout: float = READY_TIMEOUT_S) -> "Synapse":
        self.write_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith(SYNAPSE_ENV_DROP)}
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [harness.PYTHON, "-m", "synapse.app.homeserver", "-c", str(self.cfg)]
        self.proc = self.ns.popen(cmd, self.log, env=env)
        t0 = time.monotonic()
        last = None
        while time.monotonic() - t0 < ready_timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"synapse {self.server_name} exited with {self.proc.returncode} before it"
                                   f" answered; log {self.log}:\n{harness.tail(self.log, 60)}")
            r = ns_request(self.ns, "GET", self.url + "/_matrix/client/versions", timeout=3)
            if r.status == 200:
                self.ready = True
                self.start_s = time.monotonic() - t0
                return self
            last = r
            time.sleep(0.2)
        raise RuntimeError(f"synapse {self.server_name} did not answer /_matrix/client/versions within"
                           f" {ready_timeout}s (last {last}); log {self.log}:\n{harness.tail(self.log, 60)}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15) -> int | None:
        return harness.stop_process(self.proc, timeout)

    # --- HTTP ----------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, *, token: str | None = None,
                timeout: float = 15.0) -> Reply:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return ns_request(self.ns, method, self.url + path, body=body, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, body=None, *, token: str | None = None, expect: int = 200) -> dict:
        """request() that must answer `expect`; returns the JSON body."""
        r = self.request(method, path, body, token=token)
        if r.status != expect:
            raise MatrixError(f"{self.server_name}: {method} {path} -> {r!r} (wanted {expect})")
        return r.json()

    # --- Matrix helpers --------------------------------------------------------------
    def register(self, username: str, password: str | None = None, admin: bool = False) -> MatrixUser:
        """Shared-secret registration (`/_synapse/admin/v1/register`: GET a nonce, POST with
        HMAC-SHA1(secret, nonce NUL user NUL password NUL admin|notadmin))."""
        password = password or secrets.token_hex(8)
        nonce = self.call("GET", "/_synapse/admin/v1/register")["nonce"]
        mac = hmac.new(SHARED_SECRET.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), username.encode(), password.encode(),
                                 b"admin" if admin else b"notadmin"]))
        r = self.call("POST", "/_synapse/admin/v1/register", {
            "nonce": nonce, "username": username, "password": password, "admin": admin,
            "mac": mac.hexdigest(),
        })
        return MatrixUser(r["user_id"], r["access_token"], r["device_id"], self.server_name)

    def create_room(self, user: MatrixUser, **extra) -> str:
        body = {"preset": "public_chat", "name": "call", **extra}
        return self.call("POST", "/_matrix/client/v3/createRoom", body, token=user.access_token)["room_id"]

    def join(self, user: MatrixUser, room_id: str) -> None:
        self.call("POST", f"/_matrix/client/v3/join/{_q(room_id)}", {}, token=user.access_token)

    def openid_token(self, user: MatrixUser) -> dict:
        """`{access_token, token_type, matrix_server_name, expires_in}` as a client sends it on."""
        return self.call("POST", f"/_matrix/client/v3/user/{_q(user.user_id)}/openid/request_token", {},
                         token=user.access_token)

    def userinfo(self, openid_access_token: str) -> Reply:
        """What an authorisation service asks: federation OpenID userinfo (no auth)."""
        return self.request("GET", f"/_matrix/federation/v1/openid/userinfo?access_token={_q(openid_access_token)}")

    def expire_openid_token(self, openid_access_token: str) -> None:
        """Make an issued OpenID token expired (Synapse reads `open_id_tokens` on every lookup,
        no cache), by moving its validity into the past in the SQLite database."""
        past = int(time.time() * 1000) - 60_000
        with sqlite3.connect(self.db, timeout=10) as db:
            n = db.execute("UPDATE open_id_tokens SET ts_valid_until_ms = ? WHERE token = ?",
                           (past, openid_access_token)).rowcount
        assert n == 1, f"OpenID token not in {self.db}"

    def put_state(self, user: MatrixUser, room_id: str, event_type: str, state_key: str, content: dict,
                  delay_ms: int | None = None) -> dict:
        """Send a state event; with delay_ms, schedule it (MSC4140: query parameter
        `org.matrix.msc4140.delay`) and return `{"delay_id": ...}` instead of `{"event_id"}`."""
        path = f"/_matrix/client/v3/rooms/{_q(room_id)}/state/{_q(event_type)}/{_q(state_key)}"
        if delay_ms is not None:
            path += f"?org.matrix.msc4140.delay={int(delay_ms)}"
        return self.call("PUT", path, content, token=user.access_token)

    def get_state(self, user: MatrixUser, room_id: str, event_type: str, state_key: str) -> dict | None:
        """Content of the state event, or None if there is none (404)."""
        r = self.request("GET", f"/_matrix/client/v3/rooms/{_q(room_id)}/state/{_q(event_type)}/{_q(state_key)}",
                         token=user.access_token)
        if r.status == 404:
            return None
        if r.status != 200:
            raise MatrixError(f"{self.server_name}: get_state -> {r!r}")
        return r.json()

    def room_state(self, user: MatrixUser, room_id: str) -> list[dict]:
        return self.call("GET", f"/_matrix/client/v3/rooms/{_q(room_id)}/state", token=user.access_token)

    def delayed_events(self, user: MatrixUser) -> list[dict]:
        return self.call("GET", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
                         token=user.access_token)["delayed_events"]

    def delayed_event_action(self, delay_id: str, action: str, token: str | None = None) -> Reply:
        """POST …/org.matrix.msc4140/delayed_events/{delay_id}/{action} (cancel|restart|send);
        Synapse 1.163 accepts these without an access token (rate-limited per IP then)."""
        return self.request("POST", f"/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{_q(delay_id)}/{action}",
                            {}, token=token)

    def wait_state(self, user: MatrixUser, room_id: str, event_type: str, state_key: str, predicate,
                   timeout: float) -> tuple[dict | None, float]:
        """Poll until predicate(content) holds; returns (content, seconds waited)."""
        t0 = time.monotonic()
        while True:
            c = self.get_state(user, room_id, event_type, state_key)
            if predicate(c):
                return c, time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"state {event_type}/{state_key} in {room_id} still {c} after {timeout}s")
            time.sleep(0.2)


# ------------------------------------------------------------------- LiveKit helpers --
def b64_unpadded(b: bytes) -> str:
    return base64.b64encode(b).decode().rstrip("=")


def canonical_json(v) -> bytes:
    # enough of canonical JSON for arrays of strings: compact, UTF-8, no escaping of non-ASCII
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()


def hashed(parts: list[str]) -> str:
    """unpaddedB64(SHA-256(canonicalJSON(parts))): lk-jwt-service >= 0.4.3 / MSC4195."""
    return b64_unpadded(hashlib.sha256(canonical_json(parts)).digest())


LEGACY_SLOT = "m.call#ROOM"


def sfu_get_room_name(matrix_room_id: str) -> str:
    return hashed([matrix_room_id, LEGACY_SLOT])


def sfu_get_identity(user_id: str, device_id: str) -> str:
    return f"{user_id}:{device_id}"


def get_token_room_name(room_id: str, slot_id: str) -> str:
    return hashed([room_id, slot_id])


def get_token_identity(user_id: str, claimed_device_id: str, member_id: str) -> str:
    return hashed([user_id, claimed_device_id, member_id])


def decode_jwt(token: str, secret: str = harness.API_SECRET) -> dict:
    """Verified (HS256, `secret`) claims of a LiveKit token."""
    import jwt

    return jwt.decode(token, secret, algorithms=["HS256"], options={"verify_aud": False})


# ----------------------------------------------------------------- switchboard --
def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string for what we write


def matrixrtc_toml(full_access=("hs1.test",), homeserver_urls: dict[str, str] | None = None,
                   dev: bool = True, extra: str = "") -> str:
    lines = []
    if not dev:
        lines += ["[keys]", f"{harness.API_KEY} = {toml_str(harness.API_SECRET)}", "",
                  "[http]", 'bind = "127.0.0.1"', f"port = {harness.HTTP_PORT}", "",
                  "[rtc]", f"node_ips = [{toml_str(harness.NODE_IP)}]", ""]
    lines += ["[matrixrtc]"]
    if not dev:
        lines += ["enabled = true", f"public_url = {toml_str(harness.WS_URL)}"]
    lines += [f"full_access_homeservers = [{', '.join(toml_str(s) for s in full_access)}]", "",
              "[matrixrtc.homeserver_urls]"]
    for name, url in (homeserver_urls or {}).items():
        lines.append(f"{toml_str(name)} = {toml_str(url)}")
    return "\n".join(lines) + "\n" + extra


class ConfiguredServer(harness.Server):
    """harness.Server started from a config file, with or without --dev."""

    def __init__(self, ns: harness.Netns, workdir: Path, config_text: str, dev: bool, name: str):
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config_text)
        super().__init__(ns, workdir, ["--config", str(self.config_path)], dev=dev)
        self.log = workdir / f"{name}.log"

    # --- the authorisation endpoints ---------------------------------------------------
    def post(self, path: str, body, *, headers: dict[str, str] | None = None, timeout: float = 30,
             retry_429: bool = True) -> Reply:
        """POST to the server; by default waits out 429s (the endpoints are rate-limited per
        IP and a test makes many requests from 127.0.0.1)."""
        t_end = time.monotonic() + 30
        while True:
            r = ns_request(self.ns, "POST", harness.HTTP_URL + path, body=body, headers=headers, timeout=timeout)
            if r.status != 429 or not retry_429 or time.monotonic() > t_end:
                return r
            time.sleep(1.0)

    def request(self, method: str, path: str, body=None, *, headers: dict[str, str] | None = None,
                timeout: float = 15) -> Reply:
        return ns_request(self.ns, method, harness.HTTP_URL + path, body=body, headers=headers, timeout=timeout)


def _register_log(request, title: str, path: Path) -> None:
    try:
        import conftest  # the suite's conftest (already imported by pytest under this name)

        conftest.register_log(request, title, path)
    except (ImportError, AttributeError):
        pass


# -------------------------------------------------------------------------- fixtures --
@pytest.fixture
def synapse(netns, workdir, request):
    """synapse(server_name="hs1.test", port=None) -> started Synapse; stopped at teardown."""
    started: list[Synapse] = []

    def _start(server_name: str = "hs1.test", port: int | None = None) -> Synapse:
        s = Synapse(netns, workdir, server_name, port)
        started.append(s)
        _register_log(request, f"synapse {server_name} log", s.log)
        return s.start()

    yield _start
    for s in started:
        s.stop()


@pytest.fixture
def matrixrtc_server(netns, workdir, request):
    """matrixrtc_server(full_access=("hs1.test",), homeserver_urls=None, dev=True, extra_toml="")
    -> ConfiguredServer (switchboard [--dev] --node-ip 10.254.0.1 --config <file>), ready;
    stopped at teardown (and the test fails if it died by itself)."""
    servers: list[ConfiguredServer] = []

    def _start(full_access=("hs1.test",), homeserver_urls: dict[str, str] | None = None, dev: bool = True,
               extra_toml: str = "") -> ConfiguredServer:
        if homeserver_urls is None:
            homeserver_urls = {name: f"http://127.0.0.1:{port}" for name, port in SYNAPSE_PORTS.items()}
        text = matrixrtc_toml(full_access, homeserver_urls, dev, extra_toml)
        s = ConfiguredServer(netns, workdir, text, dev, f"server-matrixrtc-{len(servers) + 1}")
        servers.append(s)
        _register_log(request, "server log", s.log)
        return s.start()

    yield _start
    died = []
    for s in servers:
        was_alive = s.alive()
        code = s.stop()
        if s.ready and not was_alive:
            died.append(f"server exited by itself with {code}; log {s.log}")
    if died:
        pytest.fail("; ".join(died) + ":\n" + harness.tail(servers[0].log, 60))
