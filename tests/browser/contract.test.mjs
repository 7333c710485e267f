// The TypeScript declarations of the contract (docs/events.d.ts, generated from the catalogue)
// compile under `strict`, narrow on `event` the way a UI uses them, and cover every event type of
// docs/events.schema.json. No browser needed; runs in well under a second.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ts from 'typescript';
import { REPO, eventTypes } from './harness.mjs';

const DTS = join(REPO, 'docs/events.d.ts');

test('docs/events.d.ts compiles under strict and narrows a discriminated union per channel', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sse-ts-'));
  // Every channel's union narrowed exhaustively: each event type of docs/events.schema.json is an
  // arm of it, and it has no other (the default arm must be unreachable).
  const unionOf = (channel) => `${channel[0].toUpperCase()}${channel.slice(1)}V1Event`;
  const exhaustive = Object.entries(eventTypes()).map(([channel, types]) => `
export function every_${channel}(e: ${unionOf(channel)}): string {
  switch (e.event) {
    ${types.map((t) => `case ${JSON.stringify(t)}:`).join(' ')} return e.id + JSON.stringify(e.data);
    case "error": return e.data.code;
    case "warning": return e.data.code + " on " + e.data.channel;
    case "heartbeat": return e.data;
    default: return never(e);
  }
}`).join('\n');
  try {
    const usage = join(dir, 'usage.ts');
    writeFileSync(usage, `
import type { ${Object.keys(eventTypes()).map(unionOf).join(', ')}, StreamEvents, HttpError, ChannelName, DefaultVersions } from ${JSON.stringify(DTS.replace(/\.d\.ts$/, ''))};

function never(x: never): never { throw new Error(String(x)); }

export function describe(e: DealsV1Event): string {
  switch (e.event) {
    case "deal.created": return e.id + e.data.title + e.data.created_at + e.data.client_id;
    case "deal.updated": return String(e.data.version) + JSON.stringify(e.data.changes);
    case "deal.journal.appended": return e.data.text;
    case "policy.status.changed": return e.data.effective_from + e.data.effective_to;
    case "calculation.added": return e.data.premium_amount.toFixed(2);
    case "error": return e.data.code === "token_expired" ? "refresh" : e.data.code;
    case "warning": return e.data.code + " on " + e.data.channel;
    case "heartbeat": return e.data;
    default: return never(e);
  }
}

export const p: StreamEvents["payments"][1] = { event: "payment.overdue", id: "1-1", data: { payment_id: "x", deal_id: "y", due_date: "2025-01-01", amount: 1 } };
export const w: PaymentsV1Event = { event: "warning", data: { code: "source_unavailable", channel: "payments" } };
export const h: HttpError = { code: "stream_limit" };
export const c: ChannelName = "notifications";
export const v: DefaultVersions["deals"] = 1;

// @ts-expect-error: deal.created has no such field
export const bad = (e: DealsV1Event) => e.event === "deal.created" && e.data.no_such_field;
// @ts-expect-error: not an error code of the gateway
export const badCode: PaymentsV1Event = { event: "error", data: { code: "teapot" } };
${exhaustive}
`);
    const program = ts.createProgram([usage], {
      strict: true, noEmit: true, target: ts.ScriptTarget.ES2020, module: ts.ModuleKind.ESNext,
      moduleResolution: ts.ModuleResolutionKind.Node10, types: [], noUnusedLocals: true,
    });
    const diags = ts.getPreEmitDiagnostics(program).map((d) => {
      const where = d.file ? `${d.file.fileName}:${d.file.getLineAndCharacterOfPosition(d.start).line + 1}: ` : '';
      return where + ts.flattenDiagnosticMessageText(d.messageText, '\n');
    });
    assert.deepEqual(diags, []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('docs/events.d.ts has a union arm for every event type of docs/events.schema.json', () => {
  const dts = readFileSync(DTS, 'utf8');
  let n = 0;
  for (const [channel, types] of Object.entries(eventTypes())) {
    assert.match(dts, new RegExp(`^  ${channel}: \\{ 1: `, 'm'), channel);
    for (const type of types) {
      n += 1;
      assert.ok(dts.includes(`{ event: ${JSON.stringify(type)}; id: string; data: `), `${channel} ${type}`);
    }
  }
  assert.equal(n, 12);
});

test('docs/events.schema.json: each string format has a pattern that takes what the gateway takes', () => {
  // A validator checks `format` only when asked to; the `pattern` beside it always applies. The
  // lists are core/src/catalogue.rs's (datetime_accepts_rfc3339_and_rejects_out_of_range_parts),
  // but for calendar dates (2023-02-29), which only `format` checks.
  const schema = JSON.parse(readFileSync(join(REPO, 'docs/events.schema.json'), 'utf8'));
  const patterns = {};
  (function walk(v) {
    if (!v || typeof v !== 'object') return;
    if (typeof v.format === 'string') (patterns[v.format] ??= new Set()).add(v.pattern);
    for (const x of Object.values(v)) walk(x);
  })(schema);
  assert.deepEqual(Object.keys(patterns).sort(), ['date', 'date-time', 'uuid']);
  const re = {};
  for (const [format, set] of Object.entries(patterns)) {
    assert.equal(set.size, 1, `${format}: one pattern everywhere`);
    const [p] = set;
    assert.equal(typeof p, 'string', `${format}: a pattern beside the format`);
    re[format] = new RegExp(p, 'u');
  }
  const cases = {
    'date-time': {
      good: ['2024-05-01T12:30:00Z', '2024-05-01t12:30:00z', '2024-05-01T12:30:00.1Z', '2024-05-01T12:30:00.123456789+03:00',
        '2024-02-29T00:00:00+23:59', '1999-12-31T23:59:59-12:00'],
      bad: ['', '2024-05-01', '2024-05-01T12:30Z', '2024-05-01T12:30:00', '2024-05-01T24:00:00Z', '2024-05-01T12:60:00Z',
        '2024-05-01T12:30:61Z', '2024-05-01T12:30:00.Z', '2024-05-01T12:30:00+0300', '2024-05-01T12:30:00+24:00',
        '2024-05-01T12:30:00+03:60', '2024-05-01X12:30:00Z', '2024-05-01T12:30:00ZZ', '2024-05-01T12:30:00+03:00 ',
        '2024-05-01T1:30:00Z', '2024-05-01T12:30:00,5Z', '2024-05-01T12:30:00 Z', '2024-05-01T12:30:00.5.5Z',
        '2024-05-01 12:30:00Z', '2024-05-01T12:30:60Z', '2016-12-31T23:59:60Z', '2017-01-01T02:59:60.5+03:00'],
    },
    date: { good: ['2024-02-29', '1999-12-31'], bad: ['', '2024-13-01', '2024-00-10', '2024-01-32', '2024-1-01', '2024-01-01T00:00:00Z', ' 2024-01-01'] },
    uuid: {
      good: ['123e4567-e89b-12d3-a456-426614174000', 'ABCDEF01-2345-6789-abcd-ef0123456789'],
      bad: ['', '123e4567e89b12d3a456426614174000', '123e4567-e89b-12d3-a456-42661417400g', '{123e4567-e89b-12d3-a456-426614174000}'],
    },
  };
  for (const [format, { good, bad }] of Object.entries(cases)) {
    for (const s of good) assert.ok(re[format].test(s), `${format}: ${JSON.stringify(s)} matches`);
    for (const s of bad) assert.ok(!re[format].test(s), `${format}: ${JSON.stringify(s)} does not match`);
  }
});
