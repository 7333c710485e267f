// The demo page as a newcomer sees it: `sse-gateway --demo`, open the printed URL, watch the four
// channels. Then a second client of the same user pushes the page past the per-user stream limit,
// so the page shows an eviction (`error` stream_limit), closes that stream for good and keeps the
// others open without a reconnect. The test checks the DOM and leaves a screenshot in
// tests/browser/output/demo-page.png. (The page's reconnect and `history_gap` texts are not
// driven here: streams.test.mjs covers the browser's resume itself.)

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Gateway, browser, eventTypes, outputDir, sleep, until } from './harness.mjs';

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
