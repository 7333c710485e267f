// Shared pieces of the browser tests: start the release gateway on 127.0.0.1:0 with a temporary
// configuration, sign HS256 tokens, publish over the development endpoint, build valid payloads
// from the committed contract (docs/events.schema.json), and launch headless Chromium.

import { spawn } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, '../..');
export const OUTPUT = join(here, 'output');
export const SECRET = 'browser-test-secret-of-at-least-32-bytes';
export const COOKIE = 'sse_token';
export const WAIT_MS = 15_000;

/** The gateway binary under test: $SSE_GATEWAY_BIN, else the release `sse-gateway`. */
export const BIN = process.env.SSE_GATEWAY_BIN || join(REPO, 'target/release/sse-gateway');

/** Chromium: $CHROMIUM, else Debian's. */
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** An HS256 JWT for `sub` with `roles`, valid for `ttl` seconds (may be negative). */
export function token(sub, roles = [], ttl = 3600) {
  const now = Math.floor(Date.now() / 1000);
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ sub, roles, iat: now, exp: now + ttl });
  const sig = createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

/**
 * A running gateway. `config` is TOML appended after `[server] listen` and `[auth] secret`/`cookie`
 * (give whole sections; `server` and `auth` keys go in `server` / `auth`). `listen` is the address
 * (default `127.0.0.1:0`, a free port); a restart test passes the port of a gateway it stopped.
 */
export class Gateway {
  static async start({ server = '', auth = '', rest = '', args = [], listen = '127.0.0.1:0' } = {}) {
    if (!existsSync(BIN)) {
      throw new Error(`${BIN} not found: build it first (cargo build --release --workspace)`);
    }
    const dir = mkdtempSync(join(tmpdir(), 'sse-browser-'));
    const config = `[server]\nlisten = "${listen}"\n${server}\n[auth]\nsecret = "${SECRET}"\ncookie = "${COOKIE}"\nleeway_secs = 0\n${auth}\n${rest}\n`;
    writeFileSync(join(dir, 'gateway.toml'), config);
    const env = { ...process.env, RUST_LOG: 'info' };
    delete env.SSE_GATEWAY_JWT_SECRET;
    delete env.SSE_GATEWAY_AMQP_URL;
    const child = spawn(BIN, ['--config', join(dir, 'gateway.toml'), ...args], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const gw = new Gateway(child, dir, config);
    await gw.#listening();
    return gw;
  }

  constructor(child, dir, config) {
    this.child = child;
    this.dir = dir;
    this.config = config;
    this.stdout = '';
    this.stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => { this.stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d) => { this.stderr += d; });
    this.exited = new Promise((r) => child.on('exit', (code, signal) => r({ code, signal })));
  }

  async #listening() {
    const deadline = Date.now() + WAIT_MS;
    while (Date.now() < deadline) {
      const m = this.stdout.match(/^listening on (http:\/\/\S+)$/m);
      if (m) {
        this.base = m[1];
        return;
      }
      if (this.child.exitCode !== null) break;
      await sleep(20);
    }
    throw new Error(`the gateway did not print "listening on": stdout:\n${this.stdout}\nstderr:\n${this.stderr}\nconfig:\n${this.config}`);
  }

  /** A line the gateway printed on stdout after `listening on`, e.g. `token: ...`. */
  printed(prefix) {
    const line = this.stdout.split('\n').find((l) => l.startsWith(prefix));
    return line && line.slice(prefix.length).trim();
  }

  /** POST /api/v1/publish/{channel}; resolves to the event id (202) or throws with the answer. */
  async publish(channel, type, data, extra = {}) {
    const res = await fetch(`${this.base}/api/v1/publish/${channel}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token('publisher-bot', ['publisher'])}`, 'content-type': 'application/json' },
      body: JSON.stringify({ type, data, ...extra }),
    });
    const body = await res.text();
    if (res.status !== 202) throw new Error(`publish ${channel} ${type}: ${res.status} ${body}`);
    return JSON.parse(body).id;
  }

  /** The value of a metric line (`name{labels}`), or undefined. */
  async metric(series) {
    const text = await (await fetch(`${this.base}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(series + ' '));
    return line === undefined ? undefined : Number(line.slice(series.length + 1));
  }

  /** SIGTERM; throws if the gateway had already exited (a crash), needed SIGKILL, exited with
   *  another status than 0, or logged a panic. */
  async stop() {
    const running = this.child.exitCode === null && this.child.signalCode === null;
    let exit = { code: this.child.exitCode, signal: this.child.signalCode };
    if (running) {
      this.child.kill('SIGTERM');
      const t = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
      exit = await this.exited;
      clearTimeout(t);
    }
    rmSync(this.dir, { recursive: true, force: true });
    if (!running || exit.code !== 0 || /panic/i.test(this.stderr)) {
      throw new Error(`the gateway ${running ? 'stopped' : 'had exited'} with ${JSON.stringify(exit)}; stderr:\n${this.stderr.slice(-4000)}`);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Payloads from the committed contract: one valid payload per event type.
// ------------------------------------------------------------------------------------------------

const SCHEMAS = JSON.parse(readFileSync(join(REPO, 'docs/events.schema.json'), 'utf8'));

/**
 * { channel: [eventType, ...] } for schema version 1, from docs/events.schema.json, whose $defs
 * keys are `<channel key>.<event type>`: the channel name with `_` doubled and other characters
 * but letters, digits and `-` as `_<hex>_`, then `_v<version>` (`deals_v1.deal.created`).
 */
export function eventTypes() {
  const out = {};
  for (const key of Object.keys(SCHEMAS.$defs)) {
    const m = key.match(/^([^.]+)_v1\.(.+)$/);
    if (!m) continue;
    const channel = m[1].replace(/__|_([0-9a-f]+)_/g, (_, hex) => (hex ? String.fromCodePoint(parseInt(hex, 16)) : '_'));
    (out[channel] ||= []).push(m[2]);
  }
  return out;
}

/** The channel key of `channel` at `version`, as the gateway writes it (the inverse of eventTypes' decoding). */
function channelKey(channel, version) {
  const escaped = [...channel].map((c) => (/[A-Za-z0-9-]/.test(c) ? c : c === '_' ? '__' : `_${c.codePointAt(0).toString(16)}_`)).join('');
  return `${escaped}_v${version}`;
}

function valueFor(schema, name, n) {
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  if (schema.enum) return schema.enum[0];
  switch (type) {
    case 'string':
      if (schema.format === 'uuid') return randomUUID();
      if (schema.format === 'date-time') return new Date(Date.UTC(2025, 0, 1, 12, 0, n % 60)).toISOString();
      if (schema.format === 'date') return `2025-01-${String(1 + (n % 28)).padStart(2, '0')}`;
      return `${name} #${n}`;
    case 'integer': return n;
    case 'number': return 1000.5 + n;
    case 'boolean': return true;
    case 'object': return { status: 'issuing', n };
    default: return null;
  }
}

/** A payload the catalogue accepts for `channel` v1 `type`; `n` varies the values. */
export function payload(channel, type, n = 1) {
  const key = `${channelKey(channel, 1)}.${type}`;
  const schema = SCHEMAS.$defs[key];
  if (!schema) throw new Error(`no schema ${key} for ${channel} v1 ${type}`);
  const out = {};
  for (const [name, prop] of Object.entries(schema.properties)) out[name] = valueFor(prop, name, n);
  return out;
}

// ------------------------------------------------------------------------------------------------
// Chromium
// ------------------------------------------------------------------------------------------------

export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/** A fresh persistent Chromium context (own profile dir), closed by `close()`. */
export async function browser() {
  const profile = mkdtempSync(join(tmpdir(), 'sse-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1400, height: 1000 },
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Puts the token in the gateway's cookie for `base` (cookies ignore ports). */
export async function setCookie(context, base, jwt) {
  await context.addCookies([{ name: COOKIE, value: jwt, url: base }]);
}

export function outputDir() {
  mkdirSync(OUTPUT, { recursive: true });
  return OUTPUT;
}

/**
 * Installs the recorder in a page: `window.openStream(key, url, opts)` opens a native
 * EventSource and records everything it sees in `window.rec[key]` (JSON-serializable);
 * `window.es[key]` is the EventSource. `opts.types` names the event types to listen for;
 * `opts.refreshCookie` is set as the cookie when `token_expired` arrives (what a UI does);
 * `opts.closeOn` lists error codes after which the page closes the EventSource.
 */
export async function installRecorder(page) {
  await page.evaluate(() => {
    window.rec = {};
    window.es = {};
    window.openStream = (key, url, opts = {}) => {
      // `order`: 'w' per warning, 'h' per heartbeat, in the order they came.
      const rec = { events: [], errors: [], warnings: [], heartbeats: 0, order: '', opens: 0, failures: 0, states: [], openedAt: [] };
      window.rec[key] = rec;
      const es = new EventSource(url, { withCredentials: true });
      window.es[key] = es;
      es.onopen = () => { rec.opens += 1; rec.openedAt.push(Date.now()); rec.states.push('open'); };
      es.addEventListener('error', (e) => {
        if (e instanceof MessageEvent) {
          const body = JSON.parse(e.data);
          rec.errors.push(body);
          if (body.code === 'token_expired' && opts.refreshCookie) document.cookie = opts.refreshCookie + '; path=/';
          if ((opts.closeOn || []).includes(body.code)) { es.close(); rec.states.push('closed-by-page'); }
          return;
        }
        rec.failures += 1;
        rec.states.push(es.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting');
      });
      es.addEventListener('warning', (e) => { rec.warnings.push(JSON.parse(e.data)); rec.order += 'w'; });
      es.addEventListener('heartbeat', (e) => { rec.heartbeats += 1; rec.order += 'h'; rec.lastHeartbeatData = e.data; });
      for (const type of opts.types || []) {
        es.addEventListener(type, (e) => rec.events.push({ type: e.type, id: e.lastEventId, data: JSON.parse(e.data) }));
      }
      return true;
    };
  });
}

/** Polls `fn(page)` (an async predicate) until it is truthy; fails with `what` after WAIT_MS. */
export async function until(what, fn, timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}
