// The gateway as a real browser sees it: native EventSource with cookie auth, automatic reconnect
// with Last-Event-ID, a fetch() stream with Authorization: Bearer, and the error and warning
// events a UI must handle. Each test drives pages on the gateway's own origin (its /healthz page
// is a blank same-origin document), so the token cookie goes with every EventSource request.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Gateway, browser, eventTypes, installRecorder, payload, setCookie, sleep, token, until,
} from './harness.mjs';

const TYPES = eventTypes();
const CHANNELS = Object.keys(TYPES).sort();

describe('in-process source with the publish endpoint', () => {
  let gw;
  let chrome;

  before(async () => {
    gw = await Gateway.start({
      server: 'publish_endpoint = true',
      rest: '[streams]\nheartbeat = "1s"\nretry = "2s"\nretry_jitter = "1s"\nmin_stream_age = "6s"\n',
    });
    chrome = await browser();
  });

  after(async () => {
    try {
      await chrome?.close();
    } finally {
      await gw?.stop(); // throws if it crashed, hung on SIGTERM or logged a panic
    }
    if (process.env.SSE_BROWSER_DEBUG) console.error(gw?.stderr);
  });

  async function blankPage(jwt) {
    await setCookie(chrome.context, gw.base, jwt);
    const page = await chrome.context.newPage();
    await page.goto(`${gw.base}/healthz`);
    await installRecorder(page);
    return page;
  }

  test('native EventSource with cookie auth receives every event type of every channel', async () => {
    assert.deepEqual(CHANNELS, ['deals', 'notifications', 'payments', 'tasks']);
    const page = await blankPage(token('alice', ['finance_manager']));
    for (const ch of CHANNELS) {
      await page.evaluate(([ch, types]) => window.openStream(ch, `/api/v1/streams/${ch}`, { types }), [ch, TYPES[ch]]);
    }
    await until('four open streams', () => page.evaluate((chs) => chs.every((c) => window.rec[c].opens === 1), CHANNELS));

    const sent = {};
    let n = 0;
    for (const ch of CHANNELS) {
      sent[ch] = [];
      // Someone else's notification first: it must not reach alice (per-user channel, D3).
      if (ch === 'notifications') {
        await gw.publish(ch, 'notification.read', payload(ch, 'notification.read'), { recipient_ids: 'bob' });
      }
      for (const type of TYPES[ch]) {
        const data = payload(ch, type, ++n);
        const extra = ch === 'notifications' ? { recipient_ids: 'alice' } : {};
        const id = await gw.publish(ch, type, data, extra);
        sent[ch].push({ type, id, data });
      }
    }
    const total = Object.values(sent).reduce((k, v) => k + v.length, 0);
    assert.equal(total, 12, 'the seed has 12 event types');
    await until('every event in the page', () =>
      page.evaluate((want) => Object.entries(want).every(([c, k]) => window.rec[c].events.length >= k),
        Object.fromEntries(CHANNELS.map((c) => [c, sent[c].length]))));
    await until('a heartbeat on every stream', () => page.evaluate((chs) => chs.every((c) => window.rec[c].heartbeats > 0), CHANNELS));
    const rec = await page.evaluate(() => window.rec);
    for (const ch of CHANNELS) {
      assert.deepEqual(rec[ch].events, sent[ch], `${ch}: every event type, in order, with its id and payload`);
      assert.deepEqual(rec[ch].errors, []);
      assert.deepEqual(rec[ch].warnings, []);
      assert.equal(rec[ch].failures, 0);
    }
    assert.equal(rec.notifications.lastHeartbeatData, '');
    await page.close();
  });

  test('the server closes the stream at token expiry and the browser reconnects with Last-Event-ID, missing nothing', async () => {
    // A token that expires in 3-4 s: the gateway sends `error` token_expired at exp and closes.
    // The page does what a UI does on token_expired: it puts a fresh token in the cookie. The
    // browser's own reconnect then carries Last-Event-ID and the gateway replays the gap.
    const fresh = token('dave', []);
    const page = await blankPage(token('dave', [], 4));
    const requests = [];
    page.on('request', (r) => { if (r.url().includes('/api/v1/streams/deals')) requests.push(r); });
    const types = TYPES.deals;
    await page.evaluate(([types, cookie]) => window.openStream('deals', '/api/v1/streams/deals', { types, refreshCookie: cookie }),
      [types, `sse_token=${fresh}`]);
    await until('the stream opens', () => page.evaluate(() => window.rec.deals.opens === 1));
    const replayedBefore = await gw.metric('sse_gateway_events_replayed_total{channel="deals"}');

    const sent = [];
    const publish = async (n) => {
      const type = types[n % types.length];
      const data = payload('deals', type, 100 + n);
      sent.push({ type, id: await gw.publish('deals', type, data), data });
    };
    for (let i = 0; i < 3; i++) await publish(sent.length);
    await until('three live events', () => page.evaluate(() => window.rec.deals.events.length === 3));

    await until('token_expired and the close', () =>
      page.evaluate(() => window.rec.deals.errors.some((e) => e.code === 'token_expired') && window.rec.deals.failures >= 1), 10_000);
    const state = await page.evaluate(() => ({ states: window.rec.deals.states, readyState: window.es.deals.readyState }));
    assert.equal(state.readyState, 0, 'CONNECTING: the browser will reconnect by itself');
    // Published while the browser waits out its retry delay (2-3 s): nobody is connected.
    for (let i = 0; i < 3; i++) await publish(sent.length);
    await until('the browser reconnects', () => page.evaluate(() => window.rec.deals.opens === 2), 10_000);
    await publish(sent.length); // live again

    await until('seven events', () => page.evaluate(() => window.rec.deals.events.length >= 7));
    await publish(sent.length); // a marker: a duplicate would come before it
    await until('eight events', () => page.evaluate(() => window.rec.deals.events.length >= 8));
    const rec = await page.evaluate(() => window.rec.deals);
    assert.deepEqual(rec.events, sent, 'every event exactly once, in order, then the marker');
    assert.equal(requests.length, 2, 'one reconnect');
    const first = await requests[0].allHeaders();
    const second = await requests[1].allHeaders();
    assert.equal(first['last-event-id'], undefined);
    assert.equal(second['last-event-id'], sent[2].id, 'the reconnect carries the last id seen');
    const replayed = await gw.metric('sse_gateway_events_replayed_total{channel="deals"}');
    assert.equal(replayed - replayedBefore, 3, 'the three missed events came from the replay');
    await page.close();
  });

  test('a fetch() client with Authorization: Bearer streams and resumes with a Last-Event-ID header', async () => {
    // No cookie at all for this page: only the header authenticates.
    await chrome.context.clearCookies();
    const page = await chrome.context.newPage();
    await page.goto(`${gw.base}/healthz`);
    await page.evaluate(() => {
      // A minimal WHATWG event-stream parser over a ReadableStream reader.
      window.fetchStream = async (key, url, headers) => {
        const log = { status: 0, events: [], retry: null, done: false, body: null };
        window.flog = window.flog || {};
        window.flog[key] = log;
        const ctl = new AbortController();
        window.aborts = window.aborts || {};
        window.aborts[key] = ctl;
        const res = await fetch(url, { headers, credentials: 'omit', signal: ctl.signal });
        log.status = res.status;
        log.contentType = res.headers.get('content-type');
        if (!res.ok) { log.body = await res.text(); log.done = true; return; }
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        let ev = { event: 'message', data: [], id: null };
        try {
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += value;
            let nl;
            while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
              // A CR last in what was read may be the first half of a CRLF: wait for more.
              if (nl === buf.length - 1 && buf[nl] === '\r') break;
              const line = buf.slice(0, nl);
              buf = buf.slice(nl + (buf.startsWith('\r\n', nl) ? 2 : 1));
              if (line === '') {
                // A heartbeat (1 s in this group) is not an event of the page's.
                if (ev.data.length && ev.event !== 'heartbeat') log.events.push({ type: ev.event, id: ev.id, data: ev.data.join('\n') });
                ev = { event: 'message', data: [], id: ev.id };
                continue;
              }
              if (line.startsWith(':')) continue;
              const i = line.indexOf(':');
              const field = i < 0 ? line : line.slice(0, i);
              let val = i < 0 ? '' : line.slice(i + 1);
              if (val.startsWith(' ')) val = val.slice(1);
              // As a browser reads them: an empty type is `message`, an id with NUL and a retry
              // that is not all digits are ignored.
              if (field === 'event') ev.event = val || 'message';
              else if (field === 'data') ev.data.push(val);
              else if (field === 'id' && !val.includes('\0')) ev.id = val;
              else if (field === 'retry' && /^\d+$/.test(val)) log.retry = Number(val);
            }
          }
        } catch (e) { log.error = e.name; /* AbortError when the test aborts it */ }
        log.done = true;
      };
    });
    const bearer = { authorization: `Bearer ${token('erin', [])}`, accept: 'text/event-stream' };
    page.evaluate(([h]) => { window.fetchStream('a', '/api/v1/streams/tasks', h); }, [bearer]);
    await until('the fetch stream opens', () => page.evaluate(() => window.flog?.a?.status === 200));
    const sent = [];
    for (const [i, type] of TYPES.tasks.entries()) {
      const data = payload('tasks', type, 200 + i);
      sent.push({ type, id: await gw.publish('tasks', type, data), data });
    }
    await until('three events over fetch', () => page.evaluate(() => window.flog.a.events.length === 3));
    const a = await page.evaluate(() => window.flog.a);
    assert.equal(a.contentType, 'text/event-stream');
    assert.ok(a.retry >= 2000, `a retry: field first (${a.retry})`);
    assert.deepEqual(a.events.map((e) => ({ ...e, data: JSON.parse(e.data) })), sent);

    // Drop it, miss two events, resume with the header a fetch client sets itself.
    assert.ok(!a.done, 'the first fetch stream was still open');
    await page.evaluate(() => window.aborts.a.abort());
    await until('the first fetch ends', () => page.evaluate(() => window.flog.a.done));
    assert.equal(await page.evaluate(() => window.flog.a.error), 'AbortError', 'ended by the abort, not by the gateway');
    for (const [i, type] of TYPES.tasks.slice(0, 2).entries()) {
      const data = payload('tasks', type, 300 + i);
      sent.push({ type, id: await gw.publish('tasks', type, data), data });
    }
    page.evaluate(([h]) => { window.fetchStream('b', '/api/v1/streams/tasks', h); }, [{ ...bearer, 'last-event-id': sent[2].id }]);
    await until('the two missed events', () => page.evaluate(() => window.flog?.b?.events.length === 2));
    // Then live on the same stream, once each: a marker after the catch-up.
    const marker = payload('tasks', TYPES.tasks[0], 400);
    sent.push({ type: TYPES.tasks[0], id: await gw.publish('tasks', TYPES.tasks[0], marker), data: marker });
    await until('the marker', () => page.evaluate(() => window.flog.b.events.length >= 3));
    const b = await page.evaluate(() => window.flog.b);
    assert.deepEqual(b.events.map((e) => ({ ...e, data: JSON.parse(e.data) })), sent.slice(3));
    assert.ok(!b.done, 'the resumed stream stays open');
    await page.evaluate(() => window.aborts.b.abort());

    // Without the header (and no cookie) the same request is refused with the JSON body.
    page.evaluate(() => { window.fetchStream('c', '/api/v1/streams/tasks', { accept: 'text/event-stream' }); });
    await until('the refusal', () => page.evaluate(() => window.flog?.c?.done));
    const c = await page.evaluate(() => window.flog.c);
    assert.equal(c.status, 401);
    assert.equal(JSON.parse(c.body).code, 'unauthorized');
    await page.close();
  });

  test('forbidden reaches the page, and the browser honours the long retry', async () => {
    const page = await blankPage(token('frank', ['sales']));
    let requests = 0;
    page.on('request', (r) => { if (r.url().includes('/api/v1/streams/payments')) requests += 1; });
    await page.evaluate((types) => window.openStream('pay', '/api/v1/streams/payments', { types }), TYPES.payments);
    await until('the forbidden error', () => page.evaluate(() => window.rec.pay.errors.length === 1 && window.rec.pay.failures >= 1));
    const rec = await page.evaluate(() => ({ ...window.rec.pay, readyState: window.es.pay.readyState }));
    assert.deepEqual(rec.errors, [{ code: 'forbidden' }]);
    assert.deepEqual(rec.events, []);
    assert.equal(rec.readyState, 0, 'the browser schedules a reconnect ...');
    // Past the normal retry of this group (2 s + up to 1 s of jitter) with room to spare: a stream
    // wrongly given that retry would have come back inside this wait.
    await sleep(5000);
    assert.equal(requests, 1, '... after the retry of at least 60 s, not now');
    // The retry the gateway asked for, read with fetch (EventSource does not expose it).
    const retry = await page.evaluate(async () => {
      const text = await (await fetch('/api/v1/streams/payments', { headers: { accept: 'text/event-stream' } })).text();
      return Number(text.match(/^retry: ?(\d+)$/m)[1]);
    });
    assert.ok(retry >= 60_000, `retry ${retry} ms`);
    await page.close();
  });

  test('stream_limit: 409 with its JSON body while the streams are young, then the oldest stream gets the error event', async () => {
    const page = await blankPage(token('carol', []));
    const keys = ['s1', 's2', 's3', 's4', 's5'];
    const chans = ['deals', 'tasks', 'notifications', 'deals', 'tasks'];
    for (const [i, key] of keys.entries()) {
      await page.evaluate(([k, c, types]) => window.openStream(k, `/api/v1/streams/${c}`, { types, closeOn: ['stream_limit'] }),
        [key, chans[i], TYPES[chans[i]]]);
      await until(`${key} open`, () => page.evaluate((k) => window.rec[k].opens === 1, key));
    }
    // A sixth stream while the oldest is younger than min_stream_age (6 s, room for five opens on
    // a busy machine): HTTP 409.
    const refused = await page.evaluate(async () => {
      // Bounded: a gateway that let the stream in would send a body that never ends.
      const res = await fetch('/api/v1/streams/deals', { headers: { accept: 'text/event-stream' }, signal: AbortSignal.timeout(10000) });
      if (res.status !== 409) {
        await res.body.cancel();
        return { status: res.status };
      }
      return { status: res.status, body: await res.json() };
    });
    assert.equal(refused.status, 409);
    assert.equal(refused.body.code, 'stream_limit');

    // Once the oldest is older than that, a sixth stream evicts it with `error` stream_limit.
    const openedAt = await page.evaluate(() => window.rec.s1.openedAt[0]);
    await sleep(Math.max(0, openedAt + 6300 - Date.now()));
    await page.evaluate((types) => window.openStream('s6', '/api/v1/streams/deals', { types }), TYPES.deals);
    await until('the eviction', () => page.evaluate(() => window.rec.s1.errors.length === 1 && window.rec.s6.opens === 1));
    const rec = await page.evaluate(() => window.rec);
    assert.deepEqual(rec.s1.errors, [{ code: 'stream_limit' }], 'the oldest stream is the one evicted');
    assert.ok(rec.s1.states.includes('closed-by-page'));
    for (const k of ['s2', 's3', 's4', 's5']) assert.deepEqual(rec[k].errors, [], k);
    assert.equal(await gw.metric('sse_gateway_evictions_total'), 1);
    await page.close();
  });
});

describe('a broker that refuses connections', () => {
  let gw;
  let chrome;

  before(async () => {
    // Port 1 refuses at once: every channel's source is down from the start.
    gw = await Gateway.start({
      rest: '[broker]\nurl = "amqp://guest:guest@127.0.0.1:1/%2f"\nreconnect_min = "200ms"\nreconnect_max = "1s"\n' +
        '[streams]\nheartbeat = "1s"\nwarning_interval = "2s"\n',
    });
    chrome = await browser();
  });

  after(async () => {
    try {
      await chrome?.close();
    } finally {
      await gw?.stop(); // throws if it crashed, hung on SIGTERM or logged a panic
    }
  });

  // That the warning is queued with the stream's first bytes is the core's test
  // (source_outage_warns_at_once_and_every_sixty_seconds_until_it_recovers); here: it reaches a
  // browser, repeats, and closes nothing.
  test('source_unavailable reaches the page and repeats; the stream stays open', async () => {
    const ready = await fetch(`${gw.base}/readyz`);
    assert.equal(ready.status, 503);
    assert.deepEqual((await ready.json()).sources_down.sort(), CHANNELS);
    await setCookie(chrome.context, gw.base, token('gina', []));
    const page = await chrome.context.newPage();
    await page.goto(`${gw.base}/healthz`);
    await installRecorder(page);
    await page.evaluate((types) => window.openStream('deals', '/api/v1/streams/deals', { types }), TYPES.deals);
    await until('the first warning', () => page.evaluate(() => window.rec.deals.warnings.length >= 1));
    // Repeated: a heartbeat (1 s) comes between two warnings (2 s apart), so the second is not
    // one queued with the first at open.
    await until('a repeated warning', () => page.evaluate(() => /w.*h.*w/.test(window.rec.deals.order)), 8000);
    const rec = await page.evaluate(() => ({ ...window.rec.deals, readyState: window.es.deals.readyState }));
    for (const w of rec.warnings) assert.deepEqual(w, { code: 'source_unavailable', channel: 'deals' });
    assert.equal(rec.readyState, 1, 'OPEN: a warning does not close the stream');
    assert.equal(rec.failures, 0);
    assert.equal(rec.opens, 1);
    await page.close();
  });
});
