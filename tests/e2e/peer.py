#!/usr/bin/env python3
"""One LiveKit participant, run as its own process (inside the test's network namespace).

It joins a room with the LiveKit Python SDK, optionally publishes a sine tone and/or a
video whose frames carry a frame counter, optionally sends data packets, records all it
receives for --duration seconds, leaves cleanly and writes one JSON result file.

The JSON (see `result` in main()) is read by the pytest side; every time in it is wall
clock (time.time()), so results of several peers on this host can be compared.

Video frame counter: 16 bits, bit 15 first, drawn as 20 px wide black/white blocks in
row A (y 60..100) and their complement in row B (y 140..180) on a grey 320x240 frame.
A frame decodes only if every block of row A is the opposite of row B, so a blurred or
half-decoded frame is counted as undecodable instead of giving a wrong counter.

Scheduled actions (--at T:ACTION, T seconds after the peer is set up, i.e. after --wait-for,
--settle and data sending): mute-audio / unmute-audio (local audio track), disable-remote /
enable-remote (RemoteTrackPublication enabled flag, which the SDK sends as
UpdateTrackSettings{disabled}; 1.2.1 has no Python method for it, so through its FFI request).

Every event is also appended, as it happens, to <out>.events.jsonl (one JSON object a line).

Exit codes: 0 = ran to the end, 2 = could not connect (connect_error is in the JSON),
3 = other failure (error in the JSON). The JSON is written in every case.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import sys
import time
import traceback

import numpy as np
from livekit import rtc
from livekit.rtc._ffi_client import FfiClient
from livekit.rtc._proto import ffi_pb2
from livekit.rtc._proto.participant_pb2 import DisconnectReason

W, H = 320, 240
FPS = 15
BITS = 16
BLOCK_W = W // BITS  # 20 px
ROW_A = (60, 100)
ROW_B = (140, 180)
SAMPLE_RATE = 48000
AUDIO_FRAME_MS = 10
AUDIO_AMPLITUDE = 0.3
AUDIO_WINDOW_S = 0.2  # analysis window: 5 Hz FFT resolution
AUDIO_MIN_RMS = 300.0  # a window quieter than this counts as silence


def log(*a: object) -> None:
    print(f"[peer {time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- video --
def draw_counter(base: np.ndarray, n: int) -> bytes:
    img = base.copy()
    for i in range(BITS):
        bit = (n >> (BITS - 1 - i)) & 1
        x0, x1 = i * BLOCK_W, (i + 1) * BLOCK_W
        a = 255 if bit else 0
        img[ROW_A[0] : ROW_A[1], x0:x1, :3] = a
        img[ROW_B[0] : ROW_B[1], x0:x1, :3] = 255 - a
    return img.tobytes()


def decode_counter(frame: rtc.VideoFrame) -> int | None:
    """Counter drawn by draw_counter(), or None if the frame does not carry a clean one.

    Works at any received resolution (the sender's encoder may scale down)."""
    w, h = frame.width, frame.height
    if w < BITS * 2 or h < 24:
        return None
    img = np.frombuffer(frame.data, dtype=np.uint8).reshape(h, w, 4)
    lum = img[:, :, :3].mean(axis=2)
    n = 0
    for i in range(BITS):
        # centre half of each block, in the sender's coordinates scaled to this frame
        cx0 = int((i * BLOCK_W + BLOCK_W * 0.25) * w / W)
        cx1 = max(cx0 + 1, int((i * BLOCK_W + BLOCK_W * 0.75) * w / W))
        ay0, ay1 = int((ROW_A[0] + 10) * h / H), int((ROW_A[1] - 10) * h / H)
        by0, by1 = int((ROW_B[0] + 10) * h / H), int((ROW_B[1] - 10) * h / H)
        a = float(lum[ay0 : max(ay1, ay0 + 1), cx0:cx1].mean())
        b = float(lum[by0 : max(by1, by0 + 1), cx0:cx1].mean())
        if abs(a - b) < 80:
            return None
        bit_a = a > 128
        bit_b = b > 128
        if bit_a == bit_b:
            return None
        n = (n << 1) | int(bit_a)
    return n


async def publish_video(room: rtc.Room, args, result: dict, stop: asyncio.Event) -> None:
    source = rtc.VideoSource(W, H)
    track = rtc.LocalVideoTrack.create_video_track("counter-video", source)
    opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=args.simulcast)
    pub = await publish_or_record(room, track, opts, "video", args, result)
    if pub is None:
        await source.aclose()
        return
    LOCAL_TRACKS["video"] = track
    result["published"]["video"] = {"sid": pub.sid, "sent": []}
    sent = result["published"]["video"]["sent"]
    base = np.full((H, W, 4), 128, dtype=np.uint8)
    base[:, :, 3] = 255
    t0 = time.monotonic()
    n = 0
    try:
        while not stop.is_set():
            frame = rtc.VideoFrame(W, H, rtc.VideoBufferType.RGBA, draw_counter(base, n & 0xFFFF))
            source.capture_frame(frame, timestamp_us=int((time.monotonic() - t0) * 1e6))
            sent.append([n & 0xFFFF, time.time()])
            n += 1
            delay = t0 + n / FPS - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
    finally:
        await source.aclose()


LOCAL_TRACKS: dict[str, rtc.Track] = {}  # kind -> our published track (for --at mute-audio)


async def publish_or_record(room: rtc.Room, track, opts, kind: str, args, result: dict):
    """publish_track; with --publish-may-fail a failure (or no answer within
    --publish-timeout) is recorded in result["publish_errors"] instead of failing the peer."""
    t0 = time.time()
    try:
        return await asyncio.wait_for(room.local_participant.publish_track(track, opts), args.publish_timeout)
    except Exception as e:  # noqa: BLE001
        if not args.publish_may_fail:
            raise
        result["publish_errors"][kind] = {"error": f"{type(e).__name__}: {e}", "after_s": time.time() - t0}
        log("publishing", kind, "failed:", result["publish_errors"][kind])
        return None


async def publish_audio(room: rtc.Room, args, result: dict, stop: asyncio.Event) -> None:
    source = rtc.AudioSource(SAMPLE_RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("tone", source)
    opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    pub = await publish_or_record(room, track, opts, "audio", args, result)
    if pub is None:
        await source.aclose()
        return
    LOCAL_TRACKS["audio"] = track
    result["published"]["audio"] = {"sid": pub.sid, "hz": args.tone, "frames": 0}
    spf = SAMPLE_RATE * AUDIO_FRAME_MS // 1000
    t0 = time.monotonic()
    sent_samples = 0
    try:
        while not stop.is_set():
            due = int((time.monotonic() - t0) * SAMPLE_RATE) + spf  # keep one frame ahead
            while sent_samples < due and not stop.is_set():
                idx = np.arange(sent_samples, sent_samples + spf)
                pcm = (args.amplitude * 32767 * np.sin(2 * np.pi * args.tone * idx / SAMPLE_RATE)).astype(np.int16)
                frame = rtc.AudioFrame(pcm.tobytes(), SAMPLE_RATE, 1, spf)
                await asyncio.wait_for(source.capture_frame(frame), 5)
                sent_samples += spf
                result["published"]["audio"]["frames"] += 1
            try:
                await asyncio.wait_for(stop.wait(), AUDIO_FRAME_MS / 1000)
            except asyncio.TimeoutError:
                pass
    finally:
        await source.aclose()


# --------------------------------------------------------------------------- receive --
async def receive_video(track: rtc.RemoteVideoTrack, rec: dict, stop: asyncio.Event, on_first=None,
                        on_size=None) -> None:
    """Decode the track; `rec` gets frame counts, sizes, counters and each frame's arrival
    time (`frame_t`); `on_size(w, h)` is called whenever the frame size changes."""
    stream = rtc.VideoStream(track, format=rtc.VideoBufferType.RGBA)
    seen: dict[int, float] = {}
    rec.update(frames=0, undecodable=0, counters=[], first_frame_t=None, sizes={}, frame_t=[])
    last_size = None
    try:
        it = stream.__aiter__()
        while not stop.is_set():
            try:
                ev = await asyncio.wait_for(it.__anext__(), 0.5)
            except asyncio.TimeoutError:
                continue
            except StopAsyncIteration:
                break
            now = time.time()
            f = ev.frame
            rec["frames"] += 1
            if rec["first_frame_t"] is None:
                rec["first_frame_t"] = now
            size = f"{f.width}x{f.height}"
            rec["sizes"][size] = rec["sizes"].get(size, 0) + 1
            rec["frame_t"].append(round(now, 3))
            if size != last_size:
                last_size = size
                if on_size:
                    on_size(f.width, f.height)
            c = decode_counter(f)
            if c is None:
                rec["undecodable"] += 1
            elif c not in seen:
                seen[c] = now
                rec["counters"].append([c, now])
                if on_first and len(rec["counters"]) == 1:
                    on_first()  # the first frame that carried a counter
    finally:
        await stream.aclose()


async def receive_audio(track: rtc.RemoteAudioTrack, rec: dict, stop: asyncio.Event, on_first=None) -> None:
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
    chunks: list[np.ndarray] = []
    rec.update(frames=0, first_frame_t=None)
    try:
        it = stream.__aiter__()
        while not stop.is_set():
            try:
                ev = await asyncio.wait_for(it.__anext__(), 0.5)
            except asyncio.TimeoutError:
                continue
            except StopAsyncIteration:
                break
            if rec["first_frame_t"] is None:
                rec["first_frame_t"] = time.time()
                if on_first:
                    on_first()
            rec["frames"] += 1
            chunks.append(np.frombuffer(ev.frame.data, dtype=np.int16).copy())
    finally:
        await stream.aclose()
        rec.update(analyse_audio(np.concatenate(chunks) if chunks else np.zeros(0, np.int16)))


def analyse_audio(pcm: np.ndarray) -> dict:
    """Dominant frequency per AUDIO_WINDOW_S window (windows quieter than AUDIO_MIN_RMS
    count as silent), and over the whole signal."""
    win = int(SAMPLE_RATE * AUDIO_WINDOW_S)
    hist: dict[str, int] = {}
    silent = 0
    n_win = len(pcm) // win
    hann = np.hanning(win)
    for k in range(n_win):
        x = pcm[k * win : (k + 1) * win].astype(np.float64)
        if np.sqrt(np.mean(x * x)) < AUDIO_MIN_RMS:
            silent += 1
            continue
        spec = np.abs(np.fft.rfft(x * hann))
        f = float(np.argmax(spec[1:]) + 1) * SAMPLE_RATE / win
        key = str(int(round(f)))
        hist[key] = hist.get(key, 0) + 1
    whole = None
    if len(pcm) >= win:
        x = pcm.astype(np.float64)
        spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        whole = float(np.argmax(spec[1:]) + 1) * SAMPLE_RATE / len(x)
    return {
        "samples": int(len(pcm)),
        "rms": float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0,
        "windows": n_win,
        "silent_windows": silent,
        "dominant_hz_hist": hist,
        "dominant_hz": whole,
    }


def note_cryptors(room: rtc.Room, result: dict) -> None:
    """Add the room's current frame cryptors to result["frame_cryptors"] (every cryptor seen
    at some point, since a remote one goes away when its participant leaves)."""
    seen = {(c["identity"], c["track_sid"]): c for c in result.setdefault("frame_cryptors", [])}
    for c in room.e2ee_manager.frame_cryptors():
        seen[(c.participant_identity, c.track_sid)] = {
            "identity": c.participant_identity, "track_sid": c.track_sid,
            "key_index": c.key_index, "enabled": c.enabled}
    result["frame_cryptors"] = list(seen.values())


async def watch_cryptors(room: rtc.Room, result: dict, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if room.isconnected():
            note_cryptors(room, result)
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


async def rtp_stats(room: rtc.Room) -> dict:
    """Per-SSRC inbound/outbound RTP counters from libwebrtc (both peer connections)."""
    st = await room.get_rtc_stats()
    out: dict = {"inbound": [], "outbound": []}
    for s in list(st.publisher_stats) + list(st.subscriber_stats):
        which = s.WhichOneof("stats")
        if which == "inbound_rtp":
            r = s.inbound_rtp
            out["inbound"].append({
                "kind": r.stream.kind, "ssrc": r.stream.ssrc, "track": r.inbound.track_identifier,
                "packets_received": r.received.packets_received, "packets_lost": r.received.packets_lost,
                "bytes_received": r.inbound.bytes_received, "frames_decoded": r.inbound.frames_decoded,
                "nack_count": r.inbound.nack_count, "pli_count": r.inbound.pli_count,
            })
        elif which == "outbound_rtp":
            r = s.outbound_rtp
            out["outbound"].append({
                "kind": r.stream.kind, "ssrc": r.stream.ssrc,
                "packets_sent": r.sent.packets_sent, "bytes_sent": r.sent.bytes_sent,
            })
    return out


# ------------------------------------------------------------------------------ main --
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--out", required=True, help="path of the JSON result")
    p.add_argument("--duration", type=float, default=10.0, help="seconds to stay after joining (and after --wait-for)")
    p.add_argument("--tone", type=float, default=0.0, help="publish a sine tone of this frequency (Hz)")
    p.add_argument("--amplitude", type=float, default=AUDIO_AMPLITUDE,
                   help="peak amplitude of the tone, 0..1 of full scale (0 publishes digital silence)")
    p.add_argument("--video", action="store_true", help="publish the frame-counter video")
    p.add_argument("--simulcast", action="store_true")
    p.add_argument("--single-pc", choices=["default", "true", "false"], default="default",
                   help="RoomOptions.single_peer_connection (default: the SDK's choice)")
    p.add_argument("--e2ee-key", default=None, help="shared E2EE key (enables encryption)")
    p.add_argument("--connect-timeout", type=float, default=20.0)
    p.add_argument("--wait-for", default="", help="comma-separated identities to wait for before data actions")
    p.add_argument("--wait-timeout", type=float, default=20.0)
    p.add_argument("--settle", type=float, default=1.0, help="seconds to wait after --wait-for before data actions")
    p.add_argument("--send-data", type=int, default=0, help="send this many reliable packets (topic 'seq') to all")
    p.add_argument("--send-private", default="", help="send one reliable packet (topic 'private') to this identity only")
    p.add_argument("--no-receive", action="store_true", help="do not read media of subscribed tracks")
    p.add_argument("--exit-on-disconnect", action="store_true",
                   help="stop (and write the result) as soon as the room is disconnected")
    p.add_argument("--publish-timeout", type=float, default=20.0, help="bound on each publish_track")
    p.add_argument("--publish-may-fail", action="store_true",
                   help="record a failed publish_track in publish_errors instead of failing")
    p.add_argument("--send-sizes", default="",
                   help="comma-separated payload sizes (bytes): one reliable packet each, topic 'sized'")
    p.add_argument("--send-gap", type=float, default=0.0, help="seconds between --send-sizes packets")
    p.add_argument("--send-lossy", type=int, default=0, help="send this many lossy packets (topic 'lossy'), 20 ms apart")
    p.add_argument("--at", action="append", default=[], metavar="T:ACTION",
                   help="at T s after setup: mute-audio, unmute-audio, disable-remote, enable-remote")
    return p.parse_args(argv)


def live_event(args, e: dict) -> None:
    """Also append the event to <out>.events.jsonl as it happens, so the test can wait on it
    while the peer still runs (harness.Peer.wait_event)."""
    with open(args.out + ".events.jsonl", "a") as f:
        f.write(json.dumps(e) + "\n")


def sized_payload(i: int, size: int) -> bytes:
    """Deterministic payload of exactly `size` bytes for packet i (the tests recompute it)."""
    head = f"{i}:{size}:".encode()
    body = hashlib.sha256(head).digest() * (size // 32 + 1)
    return (head + body)[:size] if size >= len(head) else head[:size]


def enable_remote(pub: rtc.RemoteTrackPublication, enabled: bool) -> None:
    """RemoteTrackPublication.set_enabled of the Rust SDK (UpdateTrackSettings{disabled})."""
    req = ffi_pb2.FfiRequest()
    req.enable_remote_track_publication.track_publication_handle = pub._ffi_handle.handle
    req.enable_remote_track_publication.enabled = enabled
    FfiClient.instance.request(req)


async def run_actions(room: rtc.Room, actions: list[tuple[float, str]], base: float, args, result: dict,
                      stop: asyncio.Event) -> None:
    for at, what in sorted(actions):
        delay = base + at - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return
            except asyncio.TimeoutError:
                pass
        done: dict = {"t": time.time(), "type": "action", "action": what}
        if what in ("mute-audio", "unmute-audio"):
            track = LOCAL_TRACKS.get("audio")
            if track is None:
                raise RuntimeError(f"{what}: no published audio track")
            track.mute() if what == "mute-audio" else track.unmute()
        elif what in ("disable-remote", "enable-remote"):
            sids = []
            for p in room.remote_participants.values():
                for pub in p.track_publications.values():
                    enable_remote(pub, what == "enable-remote")
                    sids.append(pub.sid)
            done["sids"] = sids
        else:
            raise ValueError(f"unknown action {what!r}")
        result["events"].append(done)
        live_event(args, done)
        log("action", what, done.get("sids", ""))


async def run(args: argparse.Namespace, result: dict) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    room = rtc.Room()
    tasks: list[asyncio.Task] = []
    events = result["events"]

    def ev(etype: str, /, **kw) -> None:
        e = {"t": time.time(), "type": etype, **kw}
        events.append(e)
        live_event(args, e)

    def on(name: str):
        """room.on(name), but an exception in the handler is recorded (the SDK only logs it)."""
        def deco(fn):
            def guarded(*a):
                try:
                    fn(*a)
                except Exception as e:  # noqa: BLE001
                    result["callback_errors"].append(f"{name}: {type(e).__name__}: {e}")
                    traceback.print_exc()
            room.on(name, guarded)
            return fn
        return deco

    def remote(identity: str) -> dict:
        return result["remote"].setdefault(identity, {})

    @on("participant_connected")
    def _pc(p: rtc.RemoteParticipant) -> None:
        ev("participant_connected", identity=p.identity, sid=p.sid)

    @on("participant_disconnected")
    def _pd(p: rtc.RemoteParticipant) -> None:
        ev("participant_disconnected", identity=p.identity, sid=p.sid)

    @on("track_unpublished")
    def _tup(pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        ev("track_unpublished", identity=p.identity, sid=pub.sid, kind=rtc.TrackKind.Name(pub.kind))

    @on("track_muted")
    def _tm(p: rtc.Participant, pub: rtc.TrackPublication) -> None:
        ev("track_muted", identity=p.identity, sid=pub.sid, kind=rtc.TrackKind.Name(pub.kind))

    @on("track_unmuted")
    def _tum(p: rtc.Participant, pub: rtc.TrackPublication) -> None:
        ev("track_unmuted", identity=p.identity, sid=pub.sid, kind=rtc.TrackKind.Name(pub.kind))

    @on("track_published")
    def _tp(pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        ev("track_published", identity=p.identity, sid=pub.sid, kind=rtc.TrackKind.Name(pub.kind),
           mime=pub.mime_type, encryption=int(pub.encryption_type))

    @on("track_subscribed")
    def _ts(track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        kind = "video" if track.kind == rtc.TrackKind.KIND_VIDEO else "audio"
        ev("track_subscribed", identity=p.identity, sid=track.sid, kind=kind,
           mime=pub.mime_type, encryption=int(pub.encryption_type))
        if args.no_receive:
            return
        rec = remote(p.identity).setdefault(kind, {})
        rec["sid"] = track.sid
        rec["subscribed_t"] = time.time()
        rec["encryption"] = int(pub.encryption_type)
        def first(identity=p.identity, kind=kind) -> None:
            # video: first frame with a decoded counter; audio: first frame
            ev("first_frame", identity=identity, kind=kind)

        def size(w: int, h: int, identity=p.identity) -> None:
            ev("video_size", identity=identity, width=w, height=h)

        coro = (receive_video(track, rec, stop, first, size) if kind == "video"
                else receive_audio(track, rec, stop, first))
        tasks.append(asyncio.ensure_future(coro))

    @on("track_unsubscribed")
    def _tu(track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        ev("track_unsubscribed", identity=p.identity, sid=track.sid)

    @on("track_subscription_failed")
    def _tf(p: rtc.RemoteParticipant, sid: str, error: str) -> None:
        ev("track_subscription_failed", identity=p.identity, sid=sid, error=str(error))

    @on("data_received")
    def _dr(pkt: rtc.DataPacket) -> None:
        data = bytes(pkt.data)
        result["data"].append({
            "t": time.time(),
            "from": pkt.participant.identity if pkt.participant else None,
            "topic": pkt.topic,
            # whole payload only when short; long ones by length and digest
            "payload": data.decode("utf-8", "replace") if len(data) <= 256 else data[:64].decode("utf-8", "replace"),
            "len": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "kind": rtc.DataPacketKind.Name(pkt.kind),
        })

    @on("e2ee_state_changed")
    def _e2ee(p, state) -> None:
        ev("e2ee_state_changed", identity=p.identity if p else None, state=rtc.EncryptionState.Name(state))

    @on("active_speakers_changed")
    def _as(speakers) -> None:
        ev("active_speakers_changed", identities=[p.identity for p in speakers])

    @on("connection_quality_changed")
    def _cq(p, quality) -> None:
        ev("connection_quality_changed", identity=p.identity if p else None,
           quality=getattr(quality, "name", str(quality)))

    @on("connection_state_changed")
    def _cs(state) -> None:
        ev("connection_state_changed", state=rtc.ConnectionState.Name(state))

    @on("disconnected")
    def _dc(reason) -> None:
        try:
            name = DisconnectReason.Name(reason)
        except ValueError:
            name = None
        ev("disconnected", reason=str(reason), reason_name=name)
        if args.exit_on_disconnect:
            stop.set()

    for name in ("reconnecting", "reconnected"):
        on(name)((lambda n: (lambda *a: ev(n)))(name))

    opts = rtc.RoomOptions(auto_subscribe=True, connect_timeout=args.connect_timeout)
    if args.single_pc != "default":
        opts.single_peer_connection = args.single_pc == "true"
    if args.e2ee_key is not None:
        opts.encryption = rtc.E2EEOptions(
            key_provider_options=rtc.KeyProviderOptions(shared_key=args.e2ee_key.encode()))

    result["connect_started"] = time.time()
    try:
        await asyncio.wait_for(room.connect(args.url, args.token, opts), args.connect_timeout + 5)
    except BaseException as e:  # noqa: BLE001 - report whatever it was
        result["connect_error"] = f"{type(e).__name__}: {e}"
        log("connect failed:", result["connect_error"])
        return 2
    result["connected"] = time.time()
    try:
        result["room_sid"] = await asyncio.wait_for(room.sid, 10)
    except BaseException as e:  # noqa: BLE001 - informative only
        result["room_sid_error"] = f"{type(e).__name__}: {e}"
    result["local_sid"] = room.local_participant.sid
    result["initial_participants"] = sorted(p.identity for p in room.remote_participants.values())
    log("connected as", room.local_participant.identity, "room", room.name, "others", result["initial_participants"])

    try:
        if args.tone:
            tasks.append(asyncio.ensure_future(publish_audio(room, args, result, stop)))
        if args.video:
            tasks.append(asyncio.ensure_future(publish_video(room, args, result, stop)))
        if args.e2ee_key is not None:
            tasks.append(asyncio.ensure_future(watch_cryptors(room, result, stop)))

        deadline_base = time.monotonic()
        if args.wait_for:
            want = set(args.wait_for.split(","))
            t_end = time.monotonic() + args.wait_timeout
            while not want <= {p.identity for p in room.remote_participants.values()}:
                if time.monotonic() > t_end or stop.is_set():
                    result["wait_for_error"] = f"timed out waiting for {sorted(want)}; saw {sorted(p.identity for p in room.remote_participants.values())}"
                    log(result["wait_for_error"])
                    break
                await asyncio.sleep(0.1)
            else:
                result["wait_for_done"] = time.time()
                await asyncio.sleep(args.settle)
            deadline_base = time.monotonic()

        if args.send_data:
            for i in range(args.send_data):
                await asyncio.wait_for(
                    room.local_participant.publish_data(f"seq:{i}", reliable=True, topic="seq"), 10)
            result["sent_data"] = args.send_data
        if args.send_private:
            await asyncio.wait_for(room.local_participant.publish_data(
                f"private-for:{args.send_private}", reliable=True, topic="private",
                destination_identities=[args.send_private]), 10)
            result["sent_private_to"] = args.send_private
        if args.send_sizes:
            result["sent_sized"] = []
            for i, size in enumerate(int(x) for x in args.send_sizes.split(",")):
                entry = {"i": i, "size": size, "error": None}
                try:
                    await asyncio.wait_for(room.local_participant.publish_data(
                        sized_payload(i, size), reliable=True, topic="sized"), 10)
                except Exception as e:  # noqa: BLE001 - the tests look at which sizes the SDK refuses
                    entry["error"] = f"{type(e).__name__}: {e}"
                result["sent_sized"].append(entry)
                if args.send_gap:
                    await asyncio.sleep(args.send_gap)
        if args.send_lossy:
            result["sent_lossy"] = 0
            for i in range(args.send_lossy):
                await asyncio.wait_for(room.local_participant.publish_data(
                    f"lossy:{i}", reliable=False, topic="lossy"), 10)
                result["sent_lossy"] += 1
                await asyncio.sleep(0.02)
        if args.at:
            actions = [(float(a.split(":", 1)[0]), a.split(":", 1)[1]) for a in args.at]
            tasks.append(asyncio.ensure_future(run_actions(room, actions, time.monotonic(), args, result, stop)))

        remaining = deadline_base + args.duration - time.monotonic()
        if remaining > 0:
            try:
                await asyncio.wait_for(stop.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        # a task that died early (e.g. publish_track timed out) is a failure to report
        for t in tasks:
            if t.done() and t.exception() is not None:
                raise t.exception()
    finally:
        # who this peer sees in the room at the end (identity -> sid)
        result["final_participants"] = {p.identity: p.sid for p in room.remote_participants.values()}
        if room.isconnected() and args.e2ee_key is not None:
            note_cryptors(room, result)
        if room.isconnected():
            try:
                result["rtp_stats"] = await asyncio.wait_for(rtp_stats(room), 5)
            except BaseException as e:  # noqa: BLE001 - diagnostics only
                result["rtp_stats_error"] = f"{type(e).__name__}: {e}"
        stop.set()
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=10)
            for t in pending:
                t.cancel()
        result["leaving"] = time.time()
        try:
            await asyncio.wait_for(room.disconnect(), 10)
        except BaseException as e:  # noqa: BLE001
            result["disconnect_error"] = f"{type(e).__name__}: {e}"
        result["left"] = time.time()
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    result: dict = {
        "pid": os.getpid(), "started": time.time(), "connected": None, "connect_error": None,
        "events": [], "remote": {}, "data": [], "published": {}, "error": None, "callback_errors": [],
        "publish_errors": {},
    }
    code = 3
    try:
        code = asyncio.run(run(args, result))
    except BaseException as e:  # noqa: BLE001
        result["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
        code = 3
    finally:
        result["exit_code"] = code
        result["finished"] = time.time()
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, args.out)
        log("wrote", args.out, "exit", code)
    return code


if __name__ == "__main__":
    rc = main(sys.argv[1:])
    # The result is written and the room left. Skip interpreter finalisation: tearing down
    # liblivekit_ffi's runtime at exit sometimes aborts the process ("panic in a function
    # that cannot unwind", SIGABRT) with livekit 1.2.1, which says nothing about the server.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
