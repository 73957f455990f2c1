"""The LiveKit signalling protocol spoken by a raw client (lkproto.py: WebSocket + protobuf,
no SDK, no WebRTC), so what the server sends is checked message by message."""
from __future__ import annotations

import time

import jwt
import pytest

import harness
import lkproto
from lkproto import lkm, lkrtc

ROOM = "!proto:example.org"


def _join(raw_ws, identity: str, room: str = ROOM, token: str | None = None,
          **path_kw) -> tuple[lkproto.SignalClient, lkrtc.JoinResponse]:
    sc, reply = raw_ws(lkproto.rtc_path(token or harness.make_token(identity, room), **path_kw))
    assert sc is not None, f"{identity}: upgrade refused: {reply.status_line} {reply.body[:300]!r}"
    first = sc.recv(5)
    assert first.WhichOneof("message") == "join", f"{identity}: first message is {first.WhichOneof('message')}: {first}"
    return sc, first.join


def test_join_response_fields_then_refresh_token(server, raw_ws):
    sc, j = _join(raw_ws, "alice")
    ver = lkproto.parse_semver(j.server_info.version)
    assert ver is not None, f"server_info.version {j.server_info.version!r} is not semver"
    assert ver >= (1, 8, 0), f"server_info.version {j.server_info.version} < 1.8.0 (clients disable RPC)"
    assert j.room.sid.startswith("RM_") and len(j.room.sid) > 3, j.room
    assert j.room.name == ROOM, j.room
    assert j.participant.sid.startswith("PA_") and len(j.participant.sid) > 3, j.participant
    assert j.participant.identity == "alice", j.participant
    assert j.ping_interval == 5 and j.ping_timeout == 15, (j.ping_interval, j.ping_timeout)
    assert len(j.ice_servers) == 0, f"ice_servers must be empty (no external STUN/TURN): {j.ice_servers}"
    assert list(j.other_participants) == [], j.other_participants
    # a refresh_token follows: a JWT for the same identity and room, signed with the dev key
    m = sc.wait_for("refresh_token", 5)
    claims = jwt.decode(m.refresh_token, harness.API_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["video"]["room"] == ROOM, claims
    assert claims["video"].get("roomJoin") is True, claims


def test_ping_req_gets_pong_resp_and_legacy_ping_gets_pong(server, raw_ws):
    sc, _ = _join(raw_ws, "alice")
    for ts in (1, 1_700_000_000_123, 2**62 + 7):
        sc.send(lkrtc.SignalRequest(ping_req=lkrtc.Ping(timestamp=ts, rtt=12)))
        m = sc.wait_for("pong_resp", 5)
        assert m.pong_resp.last_ping_timestamp == ts, m.pong_resp
    sc.send(lkrtc.SignalRequest(ping=1234567))
    m = sc.wait_for("pong", 5)
    # pong carries the server's clock in milliseconds (same host: a unit check, not a timing one)
    assert abs(m.pong - time.time() * 1000) < 60_000, f"pong {m.pong} is not unix milliseconds"


def test_second_client_sees_join_and_disconnected_after_leave(server, raw_ws):
    bob, jb = _join(raw_ws, "bob")
    alice, ja = _join(raw_ws, "alice")
    assert [p.identity for p in ja.other_participants] == ["bob"], ja.other_participants
    assert ja.room.sid == jb.room.sid, (ja.room.sid, jb.room.sid)

    def is_alice(state=None):
        def pred(upd: lkrtc.ParticipantUpdate) -> bool:
            return any(p.identity == "alice" and p.sid == ja.participant.sid and (state is None or p.state == state)
                       for p in upd.participants)
        return pred

    m = bob.wait_for("update", 5, is_alice())
    p = next(p for p in m.update.participants if p.identity == "alice")
    assert p.state in (lkm.ParticipantInfo.JOINED, lkm.ParticipantInfo.ACTIVE), p
    server.wait_metrics({"switchboard_participants": 2}, timeout=5)

    alice.send(lkrtc.SignalRequest(leave=lkrtc.LeaveRequest(
        reason=lkm.DisconnectReason.CLIENT_INITIATED, action=lkrtc.LeaveRequest.DISCONNECT)))
    m = bob.wait_for("update", 5, is_alice(lkm.ParticipantInfo.DISCONNECTED))
    server.wait_metrics({"switchboard_participants": 1}, timeout=5)
    # bob himself was never reported gone
    assert not any(p.identity == "bob" and p.state == lkm.ParticipantInfo.DISCONNECTED
                   for r in bob.received if r.WhichOneof("message") == "update" for p in r.update.participants)


def _updates_about(sc: lkproto.SignalClient, identity: str) -> list[tuple[str, str]]:
    """(sid, state name) of every ParticipantInfo about `identity` that `sc` received, in order."""
    return [(p.sid, lkm.ParticipantInfo.State.Name(p.state)) for m in sc.received if m.WhichOneof("message") == "update"
            for p in m.update.participants if p.identity == identity]


def test_duplicate_identity_old_session_is_gone_before_the_new_one_is_announced(server, raw_ws):
    bob, _ = _join(raw_ws, "bob")
    old, jo = _join(raw_ws, "alice")
    bob.wait_for("update", 5, lambda u: any(p.sid == jo.participant.sid for p in u.participants))
    new, jn = _join(raw_ws, "alice")
    assert jn.participant.sid != jo.participant.sid
    assert [p.identity for p in jn.other_participants] == ["bob"], jn.other_participants
    m = old.wait_for("leave", 5)
    assert m.leave.reason == lkm.DisconnectReason.DUPLICATE_IDENTITY, m.leave
    old.ws.wait_closed(5)
    new.drain(1.0)
    bob.drain(1.0)
    # clients key remote participants by identity, and apply an update with their own identity to
    # themselves: the new session must not hear about the old one, and the others must hear
    # of the old one leaving before the new one arrives (as livekit-server orders it)
    about_old = [u for u in _updates_about(new, "alice") if u[0] == jo.participant.sid]
    assert not about_old, f"the new alice was sent updates about the old alice: {_updates_about(new, 'alice')}"
    seen = _updates_about(bob, "alice")
    old_gone = [i for i, (sid, st) in enumerate(seen) if sid == jo.participant.sid and st == "DISCONNECTED"]
    new_here = [i for i, (sid, st) in enumerate(seen) if sid == jn.participant.sid]
    assert old_gone and new_here, f"bob's updates about alice: {seen}"
    assert old_gone[0] < new_here[0], f"bob heard of the new alice before the old one left: {seen}"
    server.wait_metrics({"switchboard_participants": 2}, timeout=5)


def test_add_track_without_can_publish_is_answered_not_allowed(server, raw_ws):
    def add_track(cid: str) -> lkrtc.SignalRequest:
        return lkrtc.SignalRequest(add_track=lkrtc.AddTrackRequest(
            cid=cid, name="mic", type=lkm.TrackType.AUDIO, source=lkm.TrackSource.MICROPHONE))

    sc, j = _join(raw_ws, "nopub", token=harness.make_token("nopub", ROOM, can_publish=False))
    assert not j.participant.permission.can_publish and j.participant.permission.can_subscribe, j.participant.permission
    sc.send(add_track("cid-1"))
    m = sc.wait_for("request_response", 5)
    assert m.request_response.reason == lkrtc.RequestResponse.NOT_ALLOWED, m.request_response
    assert m.request_response.add_track.cid == "cid-1", m.request_response
    sc.drain(1.0)
    assert "track_published" not in sc.cases(), sc.cases()
    # control: with the grant, the same request gets track_published
    ok, _ = _join(raw_ws, "canpub")
    ok.send(add_track("cid-2"))
    m = ok.wait_for("track_published", 5)
    assert m.track_published.cid == "cid-2" and m.track_published.track.sid.startswith("TR_"), m.track_published


V1_VARIANTS = {
    "gzip-padded": dict(gzip_it=True, padding=True),
    "gzip-unpadded": dict(gzip_it=True, padding=False),
    "plain-padded": dict(gzip_it=False, padding=True),
    "plain-unpadded": dict(gzip_it=False, padding=False),
}


def _acao(headers: dict) -> str | None:
    return {k.lower(): v for k, v in headers.items()}.get("access-control-allow-origin")


def test_rtc_v1_join_request_variants_and_validate(server, netns, raw_ws):
    for i, (name, kw) in enumerate(V1_VARIANTS.items()):
        tok = harness.make_token(f"v1-{i}", ROOM)
        jr = lkproto.join_request_param(lkproto.minimal_join_request(), **kw)
        if not kw["padding"]:
            assert "=" not in jr
        # query token like livekit-client for some, Bearer header like the Python SDK for others
        if i % 2:
            sc, reply = raw_ws(lkproto.v1_path(None, jr), [f"Authorization: Bearer {tok}"])
        else:
            sc, reply = raw_ws(lkproto.v1_path(tok, jr))
        assert sc is not None, f"{name}: {reply.status_line} {reply.body[:300]!r}"
        m = sc.recv(5)
        assert m.WhichOneof("message") == "join", f"{name}: first message {m.WhichOneof('message')}"
        assert m.join.participant.identity == f"v1-{i}" and m.join.participant.sid.startswith("PA_"), m.join
        r = netns.http_get(f"/rtc/v1/validate?access_token={tok}&join_request={jr}")
        assert r["status"] == 200, f"{name} validate: {r}"
        assert _acao(r["headers"]) == "*", f"{name} validate without ACAO *: {r['headers']}"
    # a join_request that is not one: HTTP 400, no upgrade; same for a missing one
    tok = harness.make_token("garbage", ROOM)
    for bad in ("!!!not-base64!!!", "AAAA", lkproto.join_request_param(lkproto.minimal_join_request())[:-8] + "AAAAAAAA"):
        sc, reply = raw_ws(lkproto.v1_path(tok, bad))
        assert sc is None and reply.status == 400, f"join_request={bad!r}: {reply.status_line} {reply.body[:200]!r}"
    sc, reply = raw_ws(lkproto.v1_path(tok, None))
    assert sc is None and reply.status == 400, f"no join_request: {reply.status_line} {reply.body[:200]!r}"
    assert server.alive()


def test_rtc_v1_disabled_answers_404_with_cors(start_server, netns, raw_ws):
    start_server("--disable-rtc-v1")
    tok = harness.make_token("alice", ROOM)
    jr = lkproto.join_request_param(lkproto.minimal_join_request())
    sc, reply = raw_ws(lkproto.v1_path(tok, jr))
    assert sc is None and reply.status == 404, f"/rtc/v1: {reply.status_line} {reply.body[:200]!r}"
    assert _acao(reply.headers) == "*", f"/rtc/v1 404 without ACAO *: {reply.headers}"
    r = netns.http_get(f"/rtc/v1/validate?access_token={tok}&join_request={jr}")
    assert r["status"] == 404, r
    assert _acao(r["headers"]) == "*", f"/rtc/v1/validate 404 without ACAO *: {r['headers']}"
    # /rtc still works
    _join(raw_ws, "alice")


def test_resume_continues_the_session_and_an_unknown_sid_is_told_to_rejoin(server, raw_ws):
    sc, first = _join(raw_ws, "alice")
    sid = first.participant.sid
    tok = harness.make_token("alice", ROOM)
    # a sid the server never gave out: told to rejoin from scratch, first thing (no
    # JoinResponse), then closed; the live session is left alone
    rc, reply = raw_ws(lkproto.rtc_path(tok, extra={"reconnect": "1", "sid": "PA_unknown", "reconnect_reason": "1"}))
    assert rc is not None, f"{reply.status_line} {reply.body[:300]!r}"
    try:
        m = rc.recv(5)
    except (TimeoutError, lkproto.WsClosed) as e:
        pytest.fail(f"reconnect=1 (unknown sid): no message ({e})")
    assert m.WhichOneof("message") == "leave", f"unknown sid: first message {m.WhichOneof('message')}"
    assert m.leave.action == lkrtc.LeaveRequest.RECONNECT, m.leave
    assert m.leave.reason == lkm.DisconnectReason.STATE_MISMATCH, m.leave
    rc.ws.wait_closed(5)
    sc.send(lkrtc.SignalRequest(ping_req=lkrtc.Ping(timestamp=99)))
    assert sc.wait_for("pong_resp", 5).pong_resp.last_ping_timestamp == 99
    assert "leave" not in sc.cases(), sc.cases()

    # the right sid: the session continues on the new socket, the old one is closed
    rc, reply = raw_ws(lkproto.rtc_path(tok, extra={"reconnect": "1", "sid": sid, "reconnect_reason": "1"}))
    assert rc is not None, f"{reply.status_line} {reply.body[:300]!r}"
    m = rc.recv(5)
    assert m.WhichOneof("message") == "reconnect", f"resume: first message {m.WhichOneof('message')}"
    upd = rc.wait_for("update", 5, lambda u: any(p.sid == sid for p in u.participants))
    assert [p.identity for p in upd.update.participants if p.sid == sid] == ["alice"], upd
    sc.ws.wait_closed(5)
    rc.send(lkrtc.SignalRequest(ping_req=lkrtc.Ping(timestamp=7)))
    assert rc.wait_for("pong_resp", 5).pong_resp.last_ping_timestamp == 7
    assert "join" not in rc.cases() and "leave" not in rc.cases(), rc.cases()
    m = server.wait_metrics({"switchboard_participants": 1, "switchboard_signal_detached": 0}, timeout=5)
    assert harness.metric(m, "switchboard_signal_resumes_total") == 1, m
    assert harness.metric(m, "switchboard_signal_resumes_refused_total") == 1, m
