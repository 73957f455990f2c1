// One browser participant for the end-to-end suite (loaded by page.html?lk=<version>).
//
// Loads node_modules/livekit-client-<version>/dist/livekit-client.umd.js (window.LivekitClient)
// and exposes `window.sb`: async functions that driver.mjs calls with `await window.sb.<fn>(...)`.
// Everything they return is plain JSON. The page keeps one Room and records what happens to it
// in `events` (see recordRoomEvents) so a test can look at it afterwards.
//
// Every subscribed track is attached to a media element in #media: video to a visible 320x180
// <video> (adaptive stream only requests video for elements on screen; setVideoVisible hides
// and shows them), audio to an <audio> element (Chromium's --mute-audio silences the output,
// the receiver still decodes and measures it).
'use strict';

(() => {
  const params = new URLSearchParams(location.search);
  const version = params.get('lk') || '2.23';
  const lkBase = `node_modules/livekit-client-${version}/dist/`;

  const events = []; // {t: wall clock ms, type, ...}
  let room = null;
  let LK = null; // window.LivekitClient once loaded
  let screenTimer = null; // draws the fallback screen-share canvas
  let connectStarted = null; // Date.now() when connect() called room.connect()
  let toneGain = null; // GainNode of the tone publishTone publishes

  function record(type, fields = {}) {
    events.push({ t: Date.now(), type, ...fields });
  }

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const s = document.createElement('script');
      s.src = src;
      s.onload = resolve;
      s.onerror = () => reject(new Error(`could not load ${src}`));
      document.head.appendChild(s);
    });
  }

  /** The name of a numeric protobuf enum value (e.g. DisconnectReason), or the number. */
  function enumName(en, v) {
    return en && typeof en[v] === 'string' ? en[v] : v;
  }

  function mediaBox() {
    return document.getElementById('media');
  }

  // ------------------------------------------------------------------------- events --
  function recordRoomEvents(r) {
    const E = LK.RoomEvent;
    const who = (p) => (p ? p.identity : null);
    r.on(E.ParticipantConnected, (p) => record('participantConnected', { identity: p.identity }))
      .on(E.ParticipantDisconnected, (p) => record('participantDisconnected', { identity: p.identity }))
      .on(E.TrackPublished, (pub, p) =>
        record('trackPublished', { identity: who(p), sid: pub.trackSid, source: pub.source, kind: pub.kind }))
      .on(E.TrackUnpublished, (pub, p) =>
        record('trackUnpublished', { identity: who(p), sid: pub.trackSid, source: pub.source, kind: pub.kind }))
      .on(E.TrackSubscribed, (track, pub, p) => {
        record('trackSubscribed', { identity: who(p), sid: pub.trackSid, source: pub.source, kind: pub.kind });
        attach(track, p);
      })
      .on(E.TrackUnsubscribed, (track, pub, p) => {
        record('trackUnsubscribed', { identity: who(p), sid: pub.trackSid, source: pub.source, kind: pub.kind });
        for (const el of track.detach()) el.remove();
      })
      .on(E.TrackSubscriptionFailed, (sid, p, reason) =>
        record('trackSubscriptionFailed', { identity: who(p), sid, reason: String(reason) }))
      .on(E.TrackMuted, (pub, p) => record('trackMuted', { identity: who(p), sid: pub.trackSid }))
      .on(E.TrackUnmuted, (pub, p) => record('trackUnmuted', { identity: who(p), sid: pub.trackSid }))
      .on(E.DataReceived, (payload, p, kind, topic) =>
        record('dataReceived', {
          from: who(p),
          text: new TextDecoder().decode(payload),
          kind: kind === LK.DataPacket_Kind.LOSSY ? 'lossy' : 'reliable',
          topic: topic ?? null,
        }))
      .on(E.ActiveSpeakersChanged, (speakers) =>
        record('activeSpeakersChanged', { identities: speakers.map((p) => p.identity) }))
      .on(E.ConnectionQualityChanged, (quality, p) =>
        record('connectionQualityChanged', { identity: who(p), quality: String(quality) }))
      .on(E.Reconnecting, () => record('reconnecting'))
      .on(E.Reconnected, () => record('reconnected'))
      .on(E.SignalReconnecting, () => record('signalReconnecting'))
      .on(E.ConnectionStateChanged, (s) => record('connectionStateChanged', { state: s }))
      .on(E.EncryptionError, (err, p) =>
        record('encryptionError', { identity: who(p), message: String(err?.message ?? err) }))
      .on(E.ParticipantEncryptionStatusChanged, (encrypted, p) =>
        record('encryptionStatusChanged', { identity: who(p), encrypted }))
      .on(E.MediaDevicesError, (err) => record('mediaDevicesError', { message: String(err?.message ?? err) }))
      .on(E.Disconnected, (reason) =>
        record('disconnected', { reason: enumName(LK.DisconnectReason, reason) }));
  }

  function attach(track, participant) {
    const el = track.attach(); // a new <video> or <audio>
    el.dataset.identity = participant.identity;
    el.dataset.sid = track.sid;
    el.dataset.kind = track.kind;
    el.muted = track.kind === 'video'; // video elements carry no sound
    el.playsInline = true;
    mediaBox().appendChild(el);
  }

  // -------------------------------------------------------------------------- stats --
  /** inbound-rtp / outbound-rtp entries of a stats report, reduced to what tests look at. */
  const INBOUND = ['packetsReceived', 'packetsLost', 'bytesReceived', 'framesDecoded', 'framesReceived',
    'framesDropped', 'frameWidth', 'frameHeight', 'keyFramesDecoded', 'totalAudioEnergy', 'audioLevel',
    'totalSamplesReceived', 'concealedSamples', 'decoderImplementation', 'nackCount', 'pliCount', 'ssrc'];
  const OUTBOUND = ['rid', 'ssrc', 'packetsSent', 'bytesSent', 'framesEncoded', 'framesSent', 'frameWidth',
    'frameHeight', 'framesPerSecond', 'targetBitrate', 'qualityLimitationReason', 'active',
    'encoderImplementation', 'scalabilityMode', 'nackCount', 'pliCount'];

  function pick(stat, keys) {
    const out = {};
    for (const k of keys) if (stat[k] !== undefined) out[k] = stat[k];
    return out;
  }

  function reportEntries(report, type, keys) {
    const out = [];
    if (!report) return out;
    report.forEach((s) => {
      if (s.type !== type) return;
      const entry = pick(s, keys);
      if (s.codecId && report.get(s.codecId)) entry.codec = report.get(s.codecId).mimeType;
      out.push(entry);
    });
    return out;
  }

  /** The simulcast layers a TrackInfo lists (deprecated `layers`, else `codecs[0].layers`). */
  function layersOf(info) {
    if (!info) return null;
    const raw = info.layers?.length ? info.layers : info.codecs?.[0]?.layers ?? [];
    return raw.map((l) => ({
      quality: enumName(LK.VideoQuality, l.quality), width: l.width, height: l.height, rid: l.rid || '',
    }));
  }

  function publicationInfo(pub) {
    return {
      sid: pub.trackSid,
      source: pub.source,
      kind: pub.kind,
      name: pub.trackName,
      mime: pub.mimeType ?? null,
      muted: pub.isMuted,
      simulcasted: pub.simulcasted ?? null,
      encrypted: pub.isEncrypted ?? null,
      encryption: enumName(LK.Encryption_Type, pub.trackInfo?.encryption),
      layers: layersOf(pub.trackInfo),
      width: pub.trackInfo?.width ?? null,
      height: pub.trackInfo?.height ?? null,
    };
  }

  async function remoteTrackStats(pub) {
    const info = { ...publicationInfo(pub), subscribed: pub.isSubscribed, inbound: null, attached: 0, visible: false };
    const track = pub.track;
    if (!track) return info;
    const elements = track.attachedElements ?? [];
    info.attached = elements.length;
    info.visible = elements.some((el) => el.isConnected && el.style.display !== 'none');
    const report = track.receiver ? await track.receiver.getStats() : await track.getRTCStatsReport();
    const inbound = reportEntries(report, 'inbound-rtp', INBOUND);
    info.inbound = inbound[0] ?? null; // one receiver, one inbound stream
    info.ice = selectedPair(report);
    return info;
  }

  async function localTrackStats(pub) {
    const info = publicationInfo(pub);
    const sender = pub.track?.sender;
    const report = sender ? await sender.getStats() : null;
    info.outbound = reportEntries(report, 'outbound-rtp', OUTBOUND);
    info.ice = selectedPair(report);
    return info;
  }

  /** The selected ICE candidate pair of a report: both addresses, and the sender's bandwidth
   * estimate on it (what Chrome thinks it may send, which decides the simulcast layers). */
  function selectedPair(report) {
    let out = null;
    report?.forEach((s) => {
      if (s.type !== 'candidate-pair' || !s.nominated) return;
      const local = report.get(s.localCandidateId);
      const remote = report.get(s.remoteCandidateId);
      out = {
        local: local ? `${local.address}:${local.port} ${local.candidateType}` : null,
        remote: remote ? `${remote.address}:${remote.port} ${remote.candidateType}` : null,
        availableOutgoingBitrate: s.availableOutgoingBitrate ?? null,
      };
    });
    return out;
  }

  // ------------------------------------------------------------------------ publish --
  async function publishScreenCanvas(width, height) {
    // A canvas whose content changes 15 times a second (captureStream only emits a frame
    // when the canvas was painted).
    const canvas = document.createElement('canvas');
    canvas.width = width;
    canvas.height = height;
    const g = canvas.getContext('2d');
    let n = 0;
    screenTimer = setInterval(() => {
      n++;
      g.fillStyle = `hsl(${(n * 7) % 360} 60% 40%)`;
      g.fillRect(0, 0, width, height);
      g.fillStyle = '#fff';
      g.font = `${Math.round(height / 6)}px sans-serif`;
      g.fillText(`screen ${n}`, 20, height / 2);
    }, 1000 / 15);
    const mst = canvas.captureStream(15).getVideoTracks()[0];
    return room.localParticipant.publishTrack(mst, { source: LK.Track.Source.ScreenShare, name: 'screen' });
  }

  // ------------------------------------------------------------------------- window.sb --
  const sb = {
    /**
     * Join a room. opts: {url, token, singlePeerConnection?, adaptiveStream?, dynacast?,
     * e2eeKey? (shared passphrase: ExternalE2EEKeyProvider + the e2ee worker), e2eeOption?
     * ('e2ee' = the deprecated RoomOptions.e2ee that Element Call uses, or 'encryption', which
     * also encrypts data packets), autoSubscribe?, logLevel?}.
     */
    async connect(opts) {
      if (room) throw new Error('already connected');
      LK.setLogLevel(opts.logLevel ?? 'info');
      const roomOpts = { adaptiveStream: !!opts.adaptiveStream, dynacast: !!opts.dynacast };
      if (opts.singlePeerConnection !== undefined && opts.singlePeerConnection !== null) {
        roomOpts.singlePeerConnection = opts.singlePeerConnection;
      }
      let keyProvider = null;
      if (opts.e2eeKey) {
        keyProvider = new LK.ExternalE2EEKeyProvider();
        const worker = new Worker(new URL(lkBase + 'livekit-client.e2ee.worker.mjs', location.href), { type: 'module' });
        roomOpts[opts.e2eeOption ?? 'e2ee'] = { keyProvider, worker };
      }
      room = new LK.Room(roomOpts);
      recordRoomEvents(room);
      if (keyProvider) {
        await keyProvider.setKey(opts.e2eeKey);
        await room.setE2EEEnabled(true);
      }
      const started = Date.now();
      connectStarted = started;
      try {
        await room.connect(opts.url, opts.token, { autoSubscribe: opts.autoSubscribe ?? true });
      } catch (e) {
        record('connectFailed', { message: String(e?.message ?? e) });
        room = null; // a later connect() may try again
        throw e;
      }
      record('connected');
      return {
        identity: room.localParticipant.identity,
        sid: room.localParticipant.sid,
        roomSid: await room.getSid(),
        others: [...room.remoteParticipants.values()].map((p) => p.identity),
        e2eeEnabled: room.isE2EEEnabled,
        serverVersion: room.serverInfo?.version ?? null,
        connectMs: Date.now() - started,
      };
    },

    /** Publish the fake camera: {width, height, frameRate, simulcast}. */
    async publishCamera({ width = 320, height = 180, frameRate = 15, simulcast = false } = {}) {
      const track = await LK.createLocalVideoTrack({ resolution: { width, height, frameRate } });
      const pub = await room.localParticipant.publishTrack(track, { simulcast, source: LK.Track.Source.Camera });
      const s = track.mediaStreamTrack.getSettings();
      return { ...publicationInfo(pub), captured: { width: s.width, height: s.height, frameRate: s.frameRate } };
    },

    /**
     * Publish a continuous WebAudio sine tone as the microphone: {hz, gain} (gain 0..1 of full
     * scale). Unlike the fake microphone's short beeps it is speech for the whole of every
     * window; `setToneGain(0)` makes it silent (the track stays published).
     */
    async publishTone({ hz = 440, gain = 0.5 } = {}) {
      const ctx = new AudioContext();
      await ctx.resume();
      const osc = ctx.createOscillator();
      osc.frequency.value = hz;
      toneGain = ctx.createGain();
      toneGain.gain.value = gain;
      const dest = ctx.createMediaStreamDestination();
      osc.connect(toneGain).connect(dest);
      osc.start();
      const pub = await room.localParticipant.publishTrack(dest.stream.getAudioTracks()[0], {
        source: LK.Track.Source.Microphone,
        name: 'tone',
      });
      return publicationInfo(pub);
    },

    /** Sets the gain of the tone `publishTone` publishes (0 = silence). */
    setToneGain(gain) {
      if (!toneGain) throw new Error('no tone published');
      toneGain.gain.value = gain;
      return gain;
    },

    /** Who livekit-client says is speaking: identity -> {isSpeaking, audioLevel}, the local
     * participant included, and the room's activeSpeakers in order. */
    speaking() {
      const all = [room.localParticipant, ...room.remoteParticipants.values()];
      return {
        participants: Object.fromEntries(
          all.map((p) => [p.identity, { isSpeaking: p.isSpeaking, audioLevel: p.audioLevel }])),
        activeSpeakers: room.activeSpeakers.map((p) => p.identity),
      };
    },

    /** Publish the fake microphone (a beep every second). */
    async publishMic() {
      const track = await LK.createLocalAudioTrack();
      const pub = await room.localParticipant.publishTrack(track, { source: LK.Track.Source.Microphone });
      return publicationInfo(pub);
    },

    /**
     * Publish a screen share: getDisplayMedia if headless Chromium grants it, else a canvas
     * track published with source ScreenShare. Returns {method: 'getDisplayMedia'|'canvas', ...}.
     */
    async publishScreen({ width = 640, height = 360 } = {}) {
      let displayError = null;
      try {
        const tracks = await Promise.race([
          LK.createLocalScreenTracks({ audio: false, resolution: { width, height, frameRate: 15 } }),
          new Promise((_, reject) => setTimeout(() => reject(new Error('getDisplayMedia hung for 5 s')), 5000)),
        ]);
        const pub = await room.localParticipant.publishTrack(tracks[0], { source: LK.Track.Source.ScreenShare });
        return { method: 'getDisplayMedia', ...publicationInfo(pub) };
      } catch (e) {
        displayError = String(e?.message ?? e);
      }
      const pub = await publishScreenCanvas(width, height);
      return { method: 'canvas', displayError, ...publicationInfo(pub) };
    },

    /** Unpublish (and stop) every local track of a source ('camera', 'microphone',
     * 'screen_share') or kind ('audio', 'video'). Returns their sids. */
    async unpublish(what) {
      const done = [];
      for (const pub of [...room.localParticipant.trackPublications.values()]) {
        if ((pub.source !== what && pub.kind !== what) || !pub.track) continue;
        await room.localParticipant.unpublishTrack(pub.track, true);
        if (pub.source === LK.Track.Source.ScreenShare && screenTimer) clearInterval(screenTimer);
        done.push(pub.trackSid);
      }
      return done;
    },

    /** Send a text data packet: opts {reliable (default true), topic, destinationIdentities}. */
    async publishData(text, opts = {}) {
      const o = { reliable: opts.reliable ?? true };
      if (opts.topic) o.topic = opts.topic;
      if (opts.destinationIdentities) o.destinationIdentities = opts.destinationIdentities;
      await room.localParticipant.publishData(new TextEncoder().encode(text), o);
      return true;
    },

    /** Everything a test checks about media, right now (see remoteTrackStats / localTrackStats). */
    async stats() {
      const out = { identity: room?.localParticipant.identity ?? null, state: room?.state ?? 'none', local: [], remote: {} };
      if (!room) return out;
      for (const pub of room.localParticipant.trackPublications.values()) out.local.push(await localTrackStats(pub));
      for (const p of room.remoteParticipants.values()) {
        const tracks = [];
        for (const pub of p.trackPublications.values()) tracks.push(await remoteTrackStats(pub));
        out.remote[p.identity] = { sid: p.sid, tracks };
      }
      return out;
    },

    /**
     * Cap the video quality received from a remote participant's camera ('LOW', 'MEDIUM',
     * 'HIGH'; RemoteTrackPublication.setVideoQuality, which needs adaptiveStream off). Returns
     * how many publications it was applied to.
     */
    async setVideoQuality(identity, quality) {
      const p = room.remoteParticipants.get(identity);
      if (!p) return 0;
      let n = 0;
      for (const pub of p.trackPublications.values()) {
        if (pub.kind !== 'video') continue;
        pub.setVideoQuality(LK.VideoQuality[quality]);
        n += 1;
      }
      return n;
    },

    /** Show or hide the <video> elements of a remote participant (adaptive stream follows). */
    async setVideoVisible(identity, visible) {
      const els = [...mediaBox().querySelectorAll('video')].filter((el) => el.dataset.identity === identity);
      for (const el of els) el.style.display = visible ? '' : 'none';
      return els.length;
    },

    /**
     * Start publishing the camera and abandon it mid-negotiation: unpublish `afterMs` after
     * publishTrack was called (its AddTrackRequest is out, the offer may or may not be).
     * Returns {published: whether publishTrack still resolved, error: its rejection}.
     */
    async abandonPublish({ width = 320, height = 180, afterMs = 0 } = {}) {
      const track = await LK.createLocalVideoTrack({ resolution: { width, height, frameRate: 15 } });
      const publishing = room.localParticipant.publishTrack(track, { source: LK.Track.Source.Camera });
      await new Promise((r) => setTimeout(r, afterMs));
      await room.localParticipant.unpublishTrack(track, true);
      try {
        await publishing;
        return { published: true, error: null };
      } catch (e) {
        return { published: false, error: String(e?.message ?? e) };
      }
    },

    /**
     * A misbehaving page: opens its own signalling WebSocket (/rtc, token in the query), waits
     * for the server's first message (the JoinResponse), then sends `garbage` (bytes that are
     * no SignalRequest). Returns {firstMessageBytes, closeCode, closeReason} once the server
     * has closed the socket, or after 10 s ({closeCode: null}).
     */
    async garbageSignal({ url, token, garbage = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x02] }) {
      const ws = new WebSocket(`${url}/rtc?access_token=${encodeURIComponent(token)}&protocol=16&auto_subscribe=1`);
      ws.binaryType = 'arraybuffer';
      let firstMessageBytes = null;
      return new Promise((resolve) => {
        const timer = setTimeout(() => resolve({ firstMessageBytes, closeCode: null, closeReason: null }), 10000);
        ws.onmessage = (m) => {
          if (firstMessageBytes !== null) return;
          firstMessageBytes = m.data.byteLength;
          ws.send(new Uint8Array(garbage));
        };
        ws.onclose = (c) => {
          clearTimeout(timer);
          resolve({ firstMessageBytes, closeCode: c.code, closeReason: c.reason });
        };
      });
    },

    /**
     * Milliseconds from the start of room.connect() to the first decoded frame of `identity`'s
     * camera (polls its receiver's stats every 5 ms, at most `timeoutMs`); null on timeout.
     */
    async firstFrameMs(identity, timeoutMs = 20000) {
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        const p = room?.remoteParticipants.get(identity);
        const pub = p && [...p.trackPublications.values()].find((x) => x.source === LK.Track.Source.Camera);
        const receiver = pub?.track?.receiver;
        if (receiver) {
          let decoded = 0;
          (await receiver.getStats()).forEach((st) => {
            if (st.type === 'inbound-rtp') decoded = st.framesDecoded ?? 0;
          });
          if (decoded > 0) return Date.now() - connectStarted;
        }
        await new Promise((r) => setTimeout(r, 5));
      }
      return null;
    },

    /** The recorded events, from index `since` on. */
    async events(since = 0) {
      return events.slice(since);
    },

    async disconnect() {
      if (!room) return false;
      await room.disconnect();
      if (screenTimer) clearInterval(screenTimer);
      return true;
    },
  };

  window.sbLoaded = loadScript(lkBase + 'livekit-client.umd.js').then(() => {
    LK = window.LivekitClient;
    window.sb = sb;
    return { livekitVersion: LK.version, e2eeSupported: LK.isE2EESupported() };
  });
})();
