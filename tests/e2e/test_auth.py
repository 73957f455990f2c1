"""Bad tokens are refused with HTTP 401 before any WebSocket upgrade (acceptance item 6)."""
from __future__ import annotations

import datetime
import urllib.parse

import pytest

import harness

ROOM = "!abc:example.org"

BAD_TOKENS = {
    "wrong-secret": lambda: harness.make_token("mallory", ROOM, secret="not-the-dev-secret"),
    "unknown-api-key": lambda: harness.make_token("mallory", ROOM, key="otherkey"),
    "expired": lambda: harness.make_token("mallory", ROOM, ttl=datetime.timedelta(minutes=-10)),
    "no-room-join-grant": lambda: harness.make_token("mallory", ROOM, room_join=None),
    "room-join-false": lambda: harness.make_token("mallory", ROOM, room_join=False),
    "not-a-jwt": lambda: "not.a.jwt",
    "truncated-signature": lambda: harness.make_token("mallory", ROOM)[:-6],
}


def _q(token: str) -> str:
    return urllib.parse.quote(token, safe="")


def _assert_refused(r: dict, what: str) -> None:
    assert r["error"] is None, f"{what}: {r['error']}"
    assert r["status"] != 101, f"{what}: upgraded to a WebSocket: {r['status_line']}"
    assert r["status"] == 401, f"{what}: {r['status_line']} {r['body'][:300]!r}"
    assert r["body"].strip(), f"{what}: 401 without a reason in the body"


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_token_is_refused_with_401_before_upgrade(server, netns, case):
    token = BAD_TOKENS[case]()
    qs = "&protocol=16&sdk=python&version=1.2.1&auto_subscribe=1"
    # token in the query (livekit-client) ...
    _assert_refused(netns.ws_upgrade(f"/rtc?access_token={_q(token)}{qs}"), f"{case} (query)")
    # ... and in the Authorization header (Rust/Python SDKs)
    _assert_refused(netns.ws_upgrade(f"/rtc?{qs[1:]}", headers=[f"Authorization: Bearer {token}"]),
                    f"{case} (header)")
    # the validate endpoint the SDKs call after a failed upgrade says the same
    r = netns.http_get(f"/rtc/validate?access_token={_q(token)}")
    assert r["status"] == 401, f"{case} (validate): {r}"
    assert server.alive()


def test_missing_token_is_refused_with_401(server, netns):
    _assert_refused(netns.ws_upgrade("/rtc?protocol=16&sdk=python"), "no token")


def test_good_token_control(server, netns):
    """The same requests with a good token do get through, so the 401s above are about the token."""
    token = harness.make_token("alice", ROOM)
    r = netns.http_get(f"/rtc/validate?access_token={_q(token)}")
    assert r["status"] == 200, r
    r = netns.ws_upgrade(f"/rtc?access_token={_q(token)}&protocol=16&sdk=python&version=1.2.1&auto_subscribe=1")
    assert r["status"] == 101, f"{r['status_line']} {r['body'][:300]!r}"
    assert r["headers"].get("upgrade", "").lower() == "websocket", r["headers"]
