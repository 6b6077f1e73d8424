import { from, lastValueFrom, toArray } from 'rxjs';
import { PFERR_PRESENT, resolveExits, type FaultPolicy, type VmExit } from '@vmexit/core';
import { z } from 'zod';
import { describe, expect, it } from 'vitest';
import { errorCodeMatches, splitPolicy } from '../src/index.js';

const pf = (seq: number, errorCode: number): VmExit => ({
  kind: 'exception',
  vcpu: 0,
  seq,
  hw: { backend: 'vmx', code: 0, name: 'EXCEPTION_NMI', fields: {} },
  vector: 14,
  errorCode,
  address: 0x1000 * seq,
  access: errorCode & 0x16,
  resolution: null,
  resolvedBy: null,
});

const tagger = (name: string, needs: string[] = []): FaultPolicy<{ tag: string }> => ({
  name,
  description: name,
  needs,
  optionsSchema: z.strictObject({ tag: z.string().default(name) }),
  exits: ({ options }) => resolveExits(options.tag, () => ({ kind: 'inject', vector: 14, errorCode: 0 })),
});

describe('splitPolicy', () => {
  describe('.exits', () => {
    it('routes each #PF by its error code, keeps the order, and gives each branch its options', async () => {
      const split = splitPolicy({ name: 'by-ec', condition: { exit: errorCodeMatches(PFERR_PRESENT, 0) }, true: tagger('np'), false: tagger('prot') });
      const r = split.optionsSchema!.safeParse({ true: { tag: 'not-present' } });
      expect(r.success).toBe(true);
      const options = r.success ? r.data : never();
      const op = split.exits!({ options, backend: { name: 'vmx' } } as never);
      const out = await lastValueFrom(from([pf(1, 0), pf(2, 1), pf(3, 4), pf(4, 7)]).pipe(op, toArray()));
      expect(out.map((e) => [e.seq, e.resolvedBy])).toEqual([
        [1, 'not-present'],
        [2, 'prot'],
        [3, 'not-present'],
        [4, 'prot'],
      ]);
    });
    it('asks the predicate once per exit: an impure one (every other call) still sends each exit down one branch', async () => {
      // A predicate that alternates on every call, as one that samples or counts does. Asked once per branch, exit 1
      // got true for the first branch and false for the second (so it went down both: twice out of the pipeline);
      // asked once per exit, the exits go true, false, true, false.
      let calls = 0;
      const split = splitPolicy({ name: 'alt', condition: { exit: () => calls++ % 2 === 0 }, true: tagger('t'), false: tagger('f') });
      const r = split.optionsSchema!.safeParse({});
      const options = r.success ? r.data : never();
      const out = await lastValueFrom(
        from([pf(1, 0), pf(2, 0), pf(3, 0), pf(4, 0)]).pipe(split.exits!({ options, backend: { name: 'vmx' } } as never), toArray()),
      );
      expect(out.map((e) => [e.seq, e.resolvedBy])).toEqual([
        [1, 't'],
        [2, 'f'],
        [3, 't'],
        [4, 'f'],
      ]);
      expect(calls).toBe(4);
    });
    it('by backend: the chosen branch only, and it needs only what both branches need', async () => {
      const split = splitPolicy({ name: 'by-backend', condition: { backend: 'vmx' }, true: tagger('v', ['PageFaultFilter']), false: tagger('s') });
      expect(split.needs).toEqual([]);
      const r = split.optionsSchema!.safeParse({});
      const options = r.success ? r.data : never();
      const out = await lastValueFrom(from([pf(1, 0)]).pipe(split.exits!({ options, backend: { name: 'svm' } } as never), toArray()));
      expect(out[0]!.resolvedBy).toBe('s');
      expect(() =>
        split.setup!({
          options,
          backend: { name: 'vmx' },
          capability: () => {
            throw new RangeError('not bound');
          },
        } as never),
      ).toThrow(/chose 'v' on backend vmx, which needs PageFaultFilter/);
    });
  });
  describe('.optionsSchema', () => {
    it('reports a branch option problem under its branch, and unknown keys', () => {
      const split = splitPolicy({ name: 'x', condition: { backend: 'vmx' }, true: tagger('a') });
      const r = split.optionsSchema!.safeParse({ true: { tag: 3 }, maybe: {} });
      expect(r.success).toBe(false);
      if (!r.success) expect(r.error.issues.map((i) => i.path.join('.'))).toEqual(['maybe', 'true.tag']);
    });
  });
});

function never(): never {
  throw new Error('unreachable');
}
