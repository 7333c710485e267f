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
  try {
    const usage = join(dir, 'usage.ts');
    writeFileSync(usage, `
import type { DealsV1Event, PaymentsV1Event, StreamEvents, HttpError, ChannelName, DefaultVersions } from ${JSON.stringify(DTS.replace(/\.d\.ts$/, ''))};

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
