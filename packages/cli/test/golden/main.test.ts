import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { formatHeadline, runMain, type MainDocument } from '../../src/commands/main.js';

// The golden result of `vmexit main` (what `npm start` runs): the headline comparison on the bundled kbuild,
// as `node packages/cli/dist/bin/vmexit.js main --json` prints it less what a run cannot repeat (wall time,
// accesses/s). The run is deterministic (same variants, workload and seed -> same counters and digests), so a
// difference is a change in what the variants do, to be reviewed. The README's headline table is this
// document's formatHeadline.
//
// To regenerate both after an intended change (from packages/cli, after `npx tsc -b packages/cli` at the root):
//   UPDATE_GOLDEN=1 npx vitest run test/golden/main.test.ts

const GOLDEN = fileURLToPath(new URL('./main.json', import.meta.url));
const README = fileURLToPath(new URL('../../../../README.md', import.meta.url));
const START = '<!-- headline:start -->';
const END = '<!-- headline:end -->';
const update = process.env.UPDATE_GOLDEN === '1';

/** The document less the fields that differ from run to run (timings, and provenance: versions, host, start time). */
export function withoutTimings(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutTimings);
  if (typeof value !== 'object' || value === null) return value;
  return Object.fromEntries(
    Object.entries(value)
      .filter(([k]) => k !== 'wallSeconds' && k !== 'accessesPerSecond' && k !== 'provenance')
      .map(([k, v]) => [k, withoutTimings(v)]),
  );
}

/** The README block between the markers, as it is written there: the headline in a text code block. */
function readmeBlock(doc: MainDocument): string {
  return `${START}\n\`\`\`text\n${formatHeadline(doc).trim()}\n\`\`\`\n${END}`;
}

describe('vmexit main (golden)', () => {
  it('runs the headline comparison on kbuild exactly as main.json records it', async () => {
    const doc = withoutTimings(await runMain({ workload: 'kbuild', mode: 'long4', seed: 1 })) as MainDocument;
    if (update) {
      fs.writeFileSync(GOLDEN, `${JSON.stringify(doc, null, 2)}\n`);
      const text = fs.readFileSync(README, 'utf8');
      const a = text.indexOf(START);
      const b = text.indexOf(END);
      if (a < 0 || b < a) throw new Error(`README.md has no ${START} ... ${END} block to update`);
      fs.writeFileSync(README, text.slice(0, a) + readmeBlock(doc) + text.slice(b + END.length));
    }
    const golden = JSON.parse(fs.readFileSync(GOLDEN, 'utf8')) as MainDocument;
    expect(doc).toEqual(golden);
  }, 900_000);

  it("the README's headline block is the golden result's table", () => {
    const golden = JSON.parse(fs.readFileSync(GOLDEN, 'utf8')) as MainDocument;
    const text = fs.readFileSync(README, 'utf8');
    const a = text.indexOf(START);
    const b = text.indexOf(END);
    expect(a, `README.md has a ${START} marker`).toBeGreaterThanOrEqual(0);
    expect(b, `README.md has a ${END} marker after it`).toBeGreaterThan(a);
    expect(text.slice(a, b + END.length)).toBe(readmeBlock(golden));
  });
});
