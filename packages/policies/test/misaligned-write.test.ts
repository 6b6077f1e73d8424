import { describe, expect, it } from 'vitest';
import { misalignedWrite } from '../src/index.js';
import { decide, pteWrite } from './helpers.js';

// On a real PAE guest: scenarios.int.test.ts, 'misaligned-write (PAE)'.
describe('misalignedWrite', () => {
  describe('.mmuEvents', () => {
    it('zaps the page on a misaligned write only', async () => {
      expect(await decide(misalignedWrite, pteWrite(1, true), {})).toBe('zap-page');
      expect(await decide(misalignedWrite, pteWrite(2, true), {})).toBe('zap-page');
      expect(await decide(misalignedWrite, pteWrite(1, false), {})).toBeNull();
    });
  });
});
