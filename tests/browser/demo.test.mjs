// The demo page as a newcomer sees it: `sse-gateway --demo`, open the printed URL, watch the four
// channels. Then a second client of the same user pushes the page past the per-user stream limit,
// so the page shows an eviction (`error` stream_limit), closes that stream for good and keeps the
// others open without a reconnect. The test checks the DOM and leaves a screenshot in
// tests/browser/output/demo-page.png.
// A second test restarts the gateway under the page (SIGTERM, then a new `--demo` gateway on the
// same port with the same secret, so the page's token cookie stays valid): every channel goes to
// reconnecting, reconnects by itself with the Last-Event-ID the page shows, and, the old id being
// from the previous process's epoch, gets the `history_gap` warning the page explains
// (screenshot in tests/browser/output/demo-restart.png). streams.test.mjs covers the browser's
// gap-free resume within one process.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { join } from 'node:path';
import { Gateway, SECRET, browser, eventTypes, outputDir, sleep, until } from './harness.mjs';

const TYPES = eventTypes();
let gw;
let chrome;

before(async () => {
  gw = await Gateway.start({
    args: ['--demo'],
    // Fast samples, a small history, evictable after 1 s, quick reconnects.
    rest: '[demo]\ninterval = "250ms"\n[streams]\nheartbeat = "2s"\nbuffer_events = 4\nmin_stream_age = "1s"\nretry = "1500ms"\nretry_jitter = "1s"\n',
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

const boxes = (page) => page.$$eval('section[data-channel]', (sections) => sections.map((s) => ({
  channel: s.dataset.channel,
  state: s.dataset.state,
  badge: s.querySelector('[data-role=state]').textContent,
  stats: Object.fromEntries([...s.querySelectorAll('[data-stat]')].map((b) => [b.dataset.stat, b.textContent])),
  chips: Object.fromEntries([...s.querySelectorAll('[data-type]')].map((c) => [c.dataset.type, Number(c.textContent.split(' ').pop())])),
  kinds: [...s.querySelectorAll('li[data-kind]')].map((li) => li.dataset.kind),
  log: [...s.querySelectorAll('li[data-kind]')].map((li) => li.textContent),
  notice: s.querySelector('[data-role=notice]').textContent,
  noticeClass: s.querySelector('[data-role=notice]').className,
  // The connection log, newest first: kind, the bold word(s), and the whole line (clock first).
  conn: [...s.querySelectorAll('[data-role=connection-log] li')].map((li) => ({
    kind: li.dataset.kind, type: li.querySelector('.type').textContent, text: li.textContent,
  })),
})));

test('the demo page shows live events of the four channels, then an eviction it closes for good', async () => {
  const url = gw.printed('demo page:');
  const jwt = gw.printed('token:');
  assert.ok(url && jwt, `--demo prints the page and the token:\n${gw.stdout}`);
  const page = await chrome.context.newPage();
  await page.setViewportSize({ width: 1700, height: 1000 }); // four columns
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  await page.goto(url);
  assert.ok(!page.url().includes('token='), 'the token leaves the address bar');
  assert.match(await page.textContent('#who'), /demo-user/);

  // Every channel open, every event type of each seen at least once.
  await until('all four channels open with every event type', async () => {
    const b = await boxes(page);
    return b.length === 4 && b.every((x) => x.state === 'open' && Object.values(x.chips).every((n) => n > 0));
  });
  let b = await boxes(page);
  assert.deepEqual(b.map((x) => x.channel).sort(), Object.keys(TYPES).sort());
  for (const x of b) {
    assert.deepEqual(Object.keys(x.chips).sort(), [...TYPES[x.channel]].sort(), `${x.channel}: a counter per event type`);
    assert.equal(x.badge, 'open');
    assert.ok(Number(x.stats.events) >= TYPES[x.channel].length);
    assert.match(x.stats['last-id'], /^\d+-\d+$/);
    assert.equal(x.stats.reconnects, '0');
  }
  await until('a heartbeat on every channel', async () => (await boxes(page)).every((x) => x.stats.heartbeat !== '-'));

  // A second client of demo-user opens two more streams: 6 > 5, so the page's oldest stream is
  // evicted (the second extra one fits). The page closes an evicted stream for good (left to
  // reconnect after its long retry:, it would evict the user's oldest stream in turn), says why,
  // and its three other streams go on.
  const extra = [];
  for (let i = 0; i < 2; i++) {
    const ctl = new AbortController();
    const res = await fetch(`${gw.base}/api/v1/streams/payments`, {
      headers: { authorization: `Bearer ${jwt}`, accept: 'text/event-stream' }, signal: ctl.signal,
    });
    assert.equal(res.status, 200);
    extra.push(ctl);
    // Left unread: the stream stays open (and counts against the limit) until the abort below.
  }
  await until('one channel evicted and closed by the page', async () => (await boxes(page)).some((x) => x.state === 'closed'), 30_000);
  await sleep(1200); // more live events on the others, for the picture
  b = await boxes(page);
  const closed = b.filter((x) => x.state === 'closed');
  assert.equal(closed.length, 1, `one stream evicted: ${JSON.stringify(b.map((x) => [x.channel, x.state]))}`);
  const [c] = closed;
  assert.equal(c.badge, 'closed');
  assert.ok(Number(c.stats.errors) >= 1, `${c.channel}: the error is counted`);
  assert.ok(c.log.some((l) => l.includes('{"code":"stream_limit"}')), `${c.channel}: the stream_limit error is listed`);
  assert.ok(c.log.some((l) => l.includes('closed by the page')), `${c.channel}: the close is listed`);
  assert.match(c.notice, /too many open streams/);
  for (const x of b.filter((x) => x !== c)) {
    assert.equal(x.state, 'open', `${x.channel} stays open`);
    assert.equal(x.stats.reconnects, '0', `${x.channel}: no reconnect`);
  }
  assert.match(await page.textContent('#summary'), /^3\/4 streams open, \d+ events, 0 reconnects$/);
  assert.deepEqual(consoleErrors.filter((e) => !/Failed to load resource|EventSource/.test(e)), []);

  const shot = join(outputDir(), 'demo-page.png');
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`screenshot: ${shot}`);
  for (const ctl of extra) ctl.abort();
  await page.close();
});

test('the demo page shows a gateway restart: reconnecting, reconnected with Last-Event-ID, history_gap', async () => {
  // Quick reconnects; a small history (an id from before the restart is from another epoch anyway).
  const rest = '[demo]\ninterval = "250ms"\n[streams]\nheartbeat = "2s"\nbuffer_events = 4\nretry = "1000ms"\nretry_jitter = "500ms"\n';
  const first = await Gateway.start({ args: ['--demo'], rest });
  let second;
  const page = await chrome.context.newPage();
  try {
    const url = first.printed('demo page:');
    const jwt = first.printed('token:');
    assert.ok(url && jwt, `--demo prints the page and the token:\n${first.stdout}`);
    // The printed token is signed with the configured secret (not a per-process one): a gateway
    // started again with the same configuration accepts the cookie the page keeps.
    const [head, body, sig] = jwt.split('.');
    assert.equal(sig, createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url'), 'the demo token is signed with [auth] secret');

    await page.setViewportSize({ width: 1700, height: 1000 });
    const consoleErrors = [];
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    page.on('pageerror', (e) => consoleErrors.push(String(e)));
    // What the browser really sends on each stream request (to compare with what the page says).
    const sent = [];
    page.on('request', async (r) => {
      if (!r.url().includes('/api/v1/streams/')) return;
      const h = await r.allHeaders();
      sent.push({ channel: r.url().split('/').pop(), lastEventId: h['last-event-id'] });
    });
    await page.goto(url);
    await until('all four channels open with events', async () => {
      const b = await boxes(page);
      return b.length === 4 && b.every((x) => x.state === 'open' && Number(x.stats.events) > 0);
    });

    // SIGTERM: the gateway drains (a jittered retry: of 1-1.5 s, then the close) and exits 0.
    const port = new URL(first.base).port;
    await first.stop();
    await until('every channel reconnecting', async () => (await boxes(page)).every((x) => x.state === 'reconnecting'));
    const down = await boxes(page);
    for (const x of down) {
      assert.equal(x.badge, 'reconnecting', `${x.channel}: the badge`);
      assert.equal(x.stats.reconnects, '0', `${x.channel}: no reconnect yet`);
      assert.match(x.stats['last-id'], /^\d+-\d+$/, `${x.channel}: an event id was seen`);
      assert.deepEqual(x.conn.map((c) => [c.kind, c.type]), [['connection', 'connection lost; reconnecting'], ['connection', 'opened']], `${x.channel}: the connection log`);
      assert.equal(x.notice, '', `${x.channel}: no notice while reconnecting`);
    }
    assert.match(await page.textContent('#summary'), /^0\/4 streams open, \d+ events, 0 reconnects$/);
    const lastId = Object.fromEntries(down.map((x) => [x.channel, x.stats['last-id']]));

    // Nothing listens for a while (a restart takes time): after its retry: (at most 1.5 s) each
    // stream tries again, is refused at the TCP level, and the browser keeps trying; the page
    // stays at reconnecting, without another log line or a notice.
    await until('a refused attempt on every channel', async () => Object.keys(lastId).every((ch) => sent.filter((r) => r.channel === ch).length >= 2), 5_000);
    await sleep(300);
    for (const x of await boxes(page)) {
      assert.equal(x.state, 'reconnecting', `${x.channel}: still reconnecting after a refused attempt`);
      assert.equal(x.conn.length, 2, `${x.channel}: ${JSON.stringify(x.conn.map((c) => c.text))}`);
      assert.equal(x.notice, '', `${x.channel}: no notice for a refused connection`);
    }

    // A new gateway, same configuration and port: the page's streams come back by themselves.
    second = await Gateway.start({ args: ['--demo'], rest, listen: `127.0.0.1:${port}` });
    assert.equal(second.base, first.base);
    await until('every channel open again, with the history_gap warning and new events', async () => {
      const b = await boxes(page);
      return b.every((x) => x.state === 'open' && x.stats.warnings === '1' && x.stats['last-id'] !== lastId[x.channel]);
    });
    await sleep(1000); // more live events, for the picture
    const up = await boxes(page);
    for (const x of up) {
      const what = `${x.channel}: ${JSON.stringify(x.conn.map((c) => c.text))}`;
      assert.equal(x.badge, 'open', what);
      assert.equal(x.stats.reconnects, '1', what);
      assert.equal(x.stats.errors, '0', what);
      assert.equal(x.stats.warnings, '1', what);
      // Newest first: the gateway's answer to the resume, the reconnect, the loss, the first open.
      assert.deepEqual(x.conn.map((c) => [c.kind, c.type]),
        [['warning', 'warning'], ['connection', 'reconnected'], ['connection', 'connection lost; reconnecting'], ['connection', 'opened']], what);
      assert.ok(x.conn[1].text.endsWith(` reconnected (the browser sent Last-Event-ID ${lastId[x.channel]})`), what);
      // The new process has a new epoch: the old id is unknown to it, so it says history_gap.
      assert.ok(x.conn[0].text.endsWith(` warning {"code":"history_gap","channel":"${x.channel}"}`), what);
      assert.equal(x.noticeClass, 'notice warning', what);
      assert.match(x.notice, /^History gap at .+: events may have been missed while disconnected; refetch over REST\.$/, `${x.channel}: the notice ${JSON.stringify(x.notice)}`);
      const [epoch] = x.stats['last-id'].split('-');
      assert.notEqual(epoch, lastId[x.channel].split('-')[0], `${x.channel}: the new gateway's ids carry a new epoch`);
      // The browser sent exactly what the page says it sent.
      const requests = sent.filter((r) => r.channel === x.channel);
      assert.equal(requests[0]?.lastEventId, undefined, `${x.channel}: the first request has no Last-Event-ID`);
      assert.ok(requests.length >= 3, `${x.channel}: the first, a refused one, the resume: ${JSON.stringify(requests)}`);
      assert.equal(requests.at(-1).lastEventId, lastId[x.channel], `${x.channel}: the resume request`);
    }
    assert.match(await page.textContent('#summary'), /^4\/4 streams open, \d+ events, 4 reconnects$/);
    assert.match(await page.textContent('#who'), /demo-user/, 'the old cookie still names the user');
    assert.equal(await second.metric('sse_gateway_history_gaps_total'), 4, 'one history_gap per channel');
    const unexpected = consoleErrors.filter((e) => !/Failed to load resource|EventSource/.test(e));
    assert.deepEqual(unexpected, []);
    if (process.env.SSE_BROWSER_DEBUG) console.error(`console errors:\n${consoleErrors.join('\n')}`);

    const shot = join(outputDir(), 'demo-restart.png');
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`screenshot: ${shot}`);
  } finally {
    await page.close();
    if (first.child.exitCode === null && first.child.signalCode === null) await first.stop().catch(() => {});
    if (process.env.SSE_BROWSER_DEBUG) console.error(first.stderr, second?.stderr);
    await second?.stop(); // throws if it crashed, hung on SIGTERM or logged a panic
  }
});
