import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { createFileDigests, InputError } from '../src/index.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-lab-file-digests-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');

/**
 * Digests that count the files they hash. `racyNs` 10 ms (not 2 s): the tests wait `SETTLE_MS` after a write, so
 * that the file is no longer "racily clean" (its ctime is more than 10 ms old when it is hashed) and that a later
 * write gets another ctime (Linux stamps file times from a clock with a tick of at most 10 ms).
 */
function counted(): { digests: ReturnType<typeof createFileDigests>; hashed: string[] } {
  const hashed: string[] = [];
  return { digests: createFileDigests({ racyNs: 10_000_000n, onHash: (f) => hashed.push(f) }), hashed };
}
const SETTLE_MS = 40;

describe('createFileDigests', () => {
  describe('.sha256', () => {
    it('hashes an unchanged file once, whichever way it is asked for', async () => {
      const file = path.join(tmp, 'same.json');
      fs.writeFileSync(file, '{"backend":"vmx"}');
      await sleep(SETTLE_MS);
      const { digests, hashed } = counted();
      expect(await digests.sha256(file)).toBe(sha256('{"backend":"vmx"}'));
      expect(await digests.sha256(file)).toBe(sha256('{"backend":"vmx"}'));
      expect(digests.sha256Sync(file)).toBe(sha256('{"backend":"vmx"}'));
      // A read of the whole file (as a trace loader does) takes the kept digest too: the file did not change.
      expect(digests.readWithSha256(file, (f) => fs.readFileSync(f)).sha256).toBe(sha256('{"backend":"vmx"}'));
      // One hash: the first call read the file; the others found its stat (dev, ino, size, mtime, ctime) unchanged.
      expect(hashed).toEqual([file]);
    });

    it('hashes again after a write that keeps the size and the modification time (the change time differs)', async () => {
      const file = path.join(tmp, 'rewritten.json');
      fs.writeFileSync(file, '{"backend":"vmx"}');
      fs.utimesSync(file, 1_600_000_000, 1_600_000_000); // whole seconds: restored exactly below
      await sleep(SETTLE_MS);
      const { digests, hashed } = counted();
      expect(await digests.sha256(file)).toBe(sha256('{"backend":"vmx"}'));
      const was = fs.statSync(file, { bigint: true });

      // Rewritten in place to other bytes of the same length, its mtime set back: only the ctime tells.
      fs.writeFileSync(file, '{"backend":"svm"}');
      fs.utimesSync(file, 1_600_000_000, 1_600_000_000);
      await sleep(SETTLE_MS);
      const now = fs.statSync(file, { bigint: true });
      expect([now.dev, now.ino, now.size, now.mtimeNs]).toEqual([was.dev, was.ino, was.size, was.mtimeNs]);
      expect(now.ctimeNs).not.toBe(was.ctimeNs);

      expect(await digests.sha256(file)).toBe(sha256('{"backend":"svm"}'));
      expect(digests.sha256Sync(file)).toBe(sha256('{"backend":"svm"}'));
      // Two hashes: the first version's, then the second's (kept from then on).
      expect(hashed).toEqual([file, file]);
    });

    it('does not keep the digest of a file changed just before it was hashed ("racily clean")', async () => {
      const file = path.join(tmp, 'racy.json');
      fs.writeFileSync(file, '{}');
      // The default 2 s, seen from a clock 1 ms after the write (a fixed time, however slow this machine runs the
      // test): a write in the same clock tick would keep its every field, so it is hashed each time.
      const ctime = fs.statSync(file, { bigint: true }).ctimeNs;
      const hashed: string[] = [];
      const digests = createFileDigests({ now: () => ctime + 1_000_000n, onHash: (f) => hashed.push(f) });
      expect(await digests.sha256(file)).toBe(sha256('{}'));
      expect(digests.sha256Sync(file)).toBe(sha256('{}'));
      expect(hashed).toEqual([file, file]);
      // The same file seen from a clock 3 s after the write is not racy: hashed once, then kept.
      const later = createFileDigests({ now: () => ctime + 3_000_000_000n, onHash: (f) => hashed.push(f) });
      later.sha256Sync(file);
      later.sha256Sync(file);
      expect(hashed).toHaveLength(3);
    });

    it('refuses what is not a regular file, naming it', async () => {
      const { digests } = counted();
      await expect(digests.sha256(tmp)).rejects.toThrow(new InputError(`${tmp}: not a regular file (a directory)`));
      expect(() => digests.sha256Sync(path.join(tmp, 'missing'))).toThrow(`${path.join(tmp, 'missing')}: cannot read (ENOENT)`);
    });
  });

  describe('.readWithSha256', () => {
    it('gives the digest of the bytes read, and keeps none when the file changed during the read', async () => {
      const file = path.join(tmp, 'torn.json');
      fs.writeFileSync(file, '{"backend":"vmx"}');
      await sleep(SETTLE_MS);
      const { digests, hashed } = counted();
      // The file changes while it is read (after these bytes were read): the digest is of the bytes returned.
      const { bytes, sha256: got } = digests.readWithSha256(file, (f) => {
        const b = fs.readFileSync(f);
        fs.writeFileSync(f, '{"backend":"svm"}');
        return b;
      });
      expect([bytes.toString(), got]).toEqual(['{"backend":"vmx"}', sha256('{"backend":"vmx"}')]);
      await sleep(SETTLE_MS);
      // Nothing was kept for the stat the file had before the read nor after it: the next call hashes the file.
      expect(digests.sha256Sync(file)).toBe(sha256('{"backend":"svm"}'));
      expect(hashed).toEqual([file, file]);
    });
  });
});
