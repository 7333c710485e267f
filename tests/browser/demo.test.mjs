// The demo page as a newcomer sees it: `sse-gateway --demo`, open the printed URL, watch the four
// channels. Then a second client of the same user pushes the page past the per-user stream limit,
// so the page shows evictions (`error` stream_limit), the browser's reconnects, and the
// `history_gap` warnings of resumes that fell out of a deliberately tiny history. The test checks
// the DOM and leaves a screenshot in tests/browser/output/demo-page.png.

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
    // Fast samples, a history of 4 events per channel, evictable after 1 s, quick reconnects.
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

test('the demo page shows live events of the four channels, then evictions, reconnects and warnings', async () => {
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
  // evicted; its reconnect evicts the next oldest, and so on, until the extra clients' streams are
  // the oldest. Each page stream shows the error, reconnects by itself, and (the history holds
  // only 4 events and the demo emits 4 a second) resumes with a history_gap warning.
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
  await until('every channel evicted once and back', async () => {
    const now = await boxes(page);
    return now.every((x) => x.state === 'open' && Number(x.stats.reconnects) >= 1 && x.kinds.includes('warning'));
  }, 30_000);
  await sleep(1200); // more live events after the reconnect, for the picture
  b = await boxes(page);
  for (const x of b) {
    assert.ok(Number(x.stats.errors) >= 1, `${x.channel}: the error is counted`);
    assert.ok(x.log.some((l) => l.includes('{"code":"stream_limit"}')), `${x.channel}: the stream_limit error is listed`);
    assert.ok(x.log.some((l) => l.includes('history_gap')), `${x.channel}: the history_gap warning is listed`);
    assert.ok(x.log.some((l) => l.includes('reconnected')), `${x.channel}: the reconnect is listed`);
    assert.match(x.notice, /History gap|too many open streams/);
  }
  assert.match(await page.textContent('#summary'), /^4\/4 streams open, \d+ events, [1-9]\d* reconnects$/);
  assert.deepEqual(consoleErrors.filter((e) => !/Failed to load resource|EventSource/.test(e)), []);

  const shot = join(outputDir(), 'demo-page.png');
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`screenshot: ${shot}`);
  for (const ctl of extra) ctl.abort();
  await page.close();
});
