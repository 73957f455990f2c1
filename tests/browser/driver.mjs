#!/usr/bin/env node
// Browser driver for the end-to-end suite: livekit-client in headless Chromium, remote-controlled
// over stdin/stdout by tests/e2e/browser.py (which starts this inside the test's network
// namespace).
//
//   node driver.mjs --profile DIR [--chromium /usr/bin/chromium]
//
// What it does:
//  1. serves this folder (page.html, client.js, node_modules/) on http://127.0.0.1:<free port>/;
//  2. launches Chromium (playwright-core, the system binary, never a downloaded one) with one
//     persistent context whose profile is DIR; every participant is a page (tab) of it;
//  3. reads one JSON command per stdin line and answers one JSON line on stdout:
//       {"id": 1, "op": "open", "name": "alice", "version": "2.23"}  -> page.html?lk=2.23 loaded
//       {"id": 2, "op": "call", "name": "alice", "fn": "connect", "args": [{...}],
//        "timeout_ms": 30000}      -> the result of `await window.sb.connect(...args)` (client.js)
//       {"id": 3, "op": "websockets", "name": "alice"}  -> the WebSockets the page opened
//       {"id": 4, "op": "requests", "name": "alice"}    -> its HTTP requests to other origins
//       {"id": 5, "op": "close", "name": "alice"}
//       {"id": 6, "op": "quit"}
//     Answers are {"id": N, "ok": true, "result": ...} or {"id": N, "ok": false, "error": "..."}.
//     Commands run concurrently (answers may come out of order); each is bounded by its
//     timeout_ms (default DEFAULT_TIMEOUT_MS). Before any command it prints
//     {"id": 0, "ok": true, "result": {"port": ..., "browser": "<chromium version>"}}.
//
// stdout carries only those answers. Everything else goes to stderr, one line each, prefixed
// with the time and the participant: page console messages, page errors, HTTP requests to the
// server and failed ones, WebSocket opens/closes, the driver's own notes. The Python side
// writes stderr to the test's log. When stdin closes (the test went away) Chromium is closed.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.dirname(fileURLToPath(import.meta.url));
const DEFAULT_TIMEOUT_MS = 30_000;
const VERSIONS = ['2.22', '2.23']; // the npm aliases livekit-client-<v> in package.json

// The traps behind these are in shared/docs/test-peers.md (beside the clone).
const CHROMIUM_ARGS = [
  '--no-sandbox', // we run as root
  '--use-fake-device-for-media-stream', // camera: moving test pattern, microphone: 400 Hz beeps
  '--use-fake-ui-for-media-stream', // grant getUserMedia/getDisplayMedia without a prompt
  '--allow-loopback-in-peer-connection', // ICE on the namespace's loopback
  '--disable-background-networking', // nothing but the test's own traffic
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
  '--mute-audio', // decode remote audio, play nothing
  '--disable-features=WebRtcHideLocalIpsWithMdns', // host candidates as addresses, not .local names
  // remote <audio> elements play without a user gesture (the tests never click)
  '--autoplay-policy=no-user-gesture-required',
];

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

function log(who, ...parts) {
  const t = new Date().toISOString().slice(11, 23);
  process.stderr.write(`${t} [${who}] ${parts.join(' ')}\n`);
}

function answer(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

/** `promise`, or a rejection after `ms`. */
function withTimeout(promise, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** `text` with the tokens and join requests in URLs cut to their first 12 characters. */
function shortenSecrets(text) {
  return text.replace(/((?:access_token|join_request)=)([^&\s'"]{12})[^&\s'"]+/g, '$1$2…');
}

/** A URL with long query values (tokens, join requests) shortened, for the log. */
function shortUrl(u) {
  try {
    const url = new URL(u);
    for (const [k, v] of url.searchParams) {
      if (v.length > 24) url.searchParams.set(k, `${v.slice(0, 12)}…(${v.length})`);
    }
    return decodeURI(url.toString());
  } catch {
    return u;
  }
}

// ------------------------------------------------------------------------ static files --
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.map': 'application/json',
  '.json': 'application/json',
};

function serveStatic(req, res) {
  const rel = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  const file = path.resolve(ROOT, '.' + rel);
  const inside = file === ROOT || file.startsWith(ROOT + path.sep);
  if ((req.method !== 'GET' && req.method !== 'HEAD') || !inside) {
    res.writeHead(403).end();
    return;
  }
  fs.readFile(file, (err, body) => {
    if (err) {
      log('http', `404 ${req.method} ${rel}`);
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found');
      return;
    }
    res.writeHead(200, {
      'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream',
      'Cache-Control': 'no-store',
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
}

function startHttp() {
  return new Promise((resolve, reject) => {
    const srv = http.createServer(serveStatic);
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => resolve(srv));
  });
}

// ------------------------------------------------------------------------------ pages --
class Participant {
  constructor(name, version, page) {
    this.name = name;
    this.version = version;
    this.page = page;
    this.websockets = []; // {url, opened, closed, error, sent, received}: what the page dialled
    this.requests = []; // {method, url, status}: HTTP requests to anything but our file server
    this.closed = false;
  }

  watch(base) {
    const { page, name } = this;
    page.on('console', (m) => log(name, `console.${m.type()}:`, shortenSecrets(m.text())));
    page.on('pageerror', (e) => log(name, 'PAGE ERROR:', e.stack || String(e)));
    page.on('crash', () => log(name, 'PAGE CRASHED'));
    page.on('requestfailed', (r) => log(name, 'request failed:', r.method(), shortUrl(r.url()), r.failure()?.errorText));
    page.on('response', (r) => {
      const req = r.request();
      if (req.url().startsWith(base + '/') || req.url().startsWith('data:')) return;
      this.requests.push({ method: req.method(), url: req.url(), status: r.status() });
      log(name, `http ${req.method()} ${shortUrl(req.url())} -> ${r.status()}`);
    });
    page.on('websocket', (ws) => {
      const rec = { url: ws.url(), opened: Date.now(), closed: null, error: null, sent: 0, received: 0 };
      this.websockets.push(rec);
      log(name, 'websocket open', shortUrl(rec.url));
      ws.on('framesent', () => rec.sent++);
      ws.on('framereceived', () => rec.received++);
      ws.on('socketerror', (e) => { rec.error = String(e); log(name, 'websocket error', shortUrl(rec.url), e); });
      ws.on('close', () => {
        rec.closed = Date.now();
        log(name, `websocket closed after ${rec.sent} sent / ${rec.received} received frames`, shortUrl(rec.url));
      });
    });
  }
}

async function main() {
  const profile = arg('--profile');
  if (!profile) throw new Error('usage: driver.mjs --profile DIR [--chromium PATH]');
  const executablePath = arg('--chromium', '/usr/bin/chromium');

  const httpServer = await startHttp();
  const base = `http://127.0.0.1:${httpServer.address().port}`;
  fs.mkdirSync(profile, { recursive: true });
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 720 },
  });
  const browserVersion = context.browser()?.version() ?? 'unknown';
  // the tab a persistent context starts with is not needed
  for (const p of context.pages()) await p.close();
  log('driver', `chromium ${browserVersion} up; serving ${ROOT} on ${base}`);

  const participants = new Map();
  let quitting = false;

  async function quit(code) {
    if (quitting) return;
    quitting = true;
    log('driver', 'quitting');
    await withTimeout(context.close(), 10_000).catch((e) => log('driver', `closing chromium: ${e}`));
    httpServer.close();
    process.exit(code);
  }

  function participant(name) {
    const p = participants.get(name);
    if (!p || p.closed) throw new Error(`no open page for ${JSON.stringify(name)}`);
    return p;
  }

  const ops = {
    async open({ name, version = '2.23' }) {
      if (!VERSIONS.includes(version)) throw new Error(`unknown livekit-client version ${version}; have ${VERSIONS}`);
      if (participants.has(name) && !participants.get(name).closed) throw new Error(`page ${name} already open`);
      const page = await context.newPage();
      const p = new Participant(name, version, page);
      participants.set(name, p);
      p.watch(base);
      const url = `${base}/page.html?lk=${version}&name=${encodeURIComponent(name)}`;
      await page.goto(url);
      // client.js sets window.sbLoaded once the livekit-client bundle is in
      const loaded = await page.evaluate(() => window.sbLoaded);
      log(name, `page open: livekit-client ${loaded.livekitVersion} (${url})`);
      return { url, ...loaded };
    },
    async call({ name, fn, args = [] }) {
      const p = participant(name);
      return p.page.evaluate(([f, a]) => {
        if (typeof window.sb?.[f] !== 'function') throw new Error(`window.sb.${f} is not a function`);
        return window.sb[f](...a);
      }, [fn, args]);
    },
    async websockets({ name }) {
      return participants.get(name)?.websockets ?? [];
    },
    async requests({ name }) {
      return participants.get(name)?.requests ?? [];
    },
    async close({ name }) {
      const p = participants.get(name);
      if (!p || p.closed) return false;
      p.closed = true;
      await p.page.close({ runBeforeUnload: false });
      log(name, 'page closed');
      return true;
    },
    async quit() {
      setImmediate(() => quit(0));
      return true;
    },
  };

  answer({ id: 0, ok: true, result: { port: httpServer.address().port, browser: browserVersion } });

  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  rl.on('line', async (line) => {
    if (!line.trim()) return;
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (e) {
      log('driver', 'unparsable command:', line.slice(0, 200));
      return;
    }
    const { id, op } = cmd;
    const timeoutMs = cmd.timeout_ms ?? DEFAULT_TIMEOUT_MS;
    const what = `${op}${cmd.fn ? ' ' + cmd.fn : ''} (${cmd.name ?? '-'})`;
    try {
      if (!ops[op]) throw new Error(`unknown op ${JSON.stringify(op)}`);
      const result = await withTimeout(ops[op](cmd), timeoutMs);
      answer({ id, ok: true, result: result === undefined ? null : result });
    } catch (e) {
      // Playwright reports a page exception as "page.evaluate: Error: <message>" followed by
      // the stack of its own evaluation wrapper: keep the message (without terminal colours).
      const msg = String(e?.message ?? e)
        .replace(/^page\.evaluate: /, '')
        .split('\n    at ')[0]
        .replace(/\x1b\[[0-9;]*m/g, '');
      log(cmd.name ?? 'driver', `${what} failed: ${msg}`);
      answer({ id, ok: false, error: msg });
    }
  });
  // the test (our only reader) went away: do not leave Chromium behind
  rl.on('close', () => quit(0));
  for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => quit(1));
  context.on('close', () => {
    if (!quitting) {
      log('driver', 'CHROMIUM WENT AWAY');
      process.exit(3);
    }
  });
}

main().catch((e) => {
  log('driver', 'FATAL', e.stack || String(e));
  answer({ id: 0, ok: false, error: String(e?.message ?? e) });
  process.exit(2);
});
