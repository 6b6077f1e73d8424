import { describe, expect, it } from 'vitest';
import { Progress, rate, renderProgress } from '../src/progress.js';

describe('progress', () => {
  describe('.rate', () => {
    it('shortens counts to k and M with one decimal', () => {
      expect([rate(0), rate(999), rate(1000), rate(12_345), rate(999_999), rate(2_500_000), rate(83_348_455)]).toEqual([
        '0',
        '999',
        '1.0 k',
        '12.3 k',
        '1000.0 k',
        '2.5 M',
        '83.3 M',
      ]);
    });
  });

  describe('.renderProgress', () => {
    it('draws a bar with the percentage when the total is known', () => {
      expect(renderProgress(0, 100, 10)).toBe('[          ]   0%  0 accesses');
      expect(renderProgress(25, 100, 10)).toBe('[###       ]  25%  25 accesses');
      expect(renderProgress(1_500_000, 3_000_000, 10)).toBe('[#####     ]  50%  1.5 M accesses');
      expect(renderProgress(100, 100)).toBe(`[${'#'.repeat(30)}] 100%  100 accesses`);
    });

    it('caps the bar at 100 % (an estimated total can be passed) and shows the count alone without a total', () => {
      expect(renderProgress(130, 100, 10)).toBe('[##########] 100%  130 accesses');
      expect(renderProgress(4200, null)).toBe('4.2 k accesses');
      expect(renderProgress(7, 0)).toBe('7 accesses');
    });
  });

  describe('Progress', () => {
    it('draws nothing in the first second, then at most every 100 ms, and clears what it drew', () => {
      let t = 5000;
      const out: string[] = [];
      const p = new Progress({ tty: true, now: () => t, write: (s) => out.push(s) });
      p.update(10, 100);
      t += 999;
      p.update(20, 100);
      expect(out).toEqual([]);
      t += 1;
      p.update(30, 100);
      t += 50;
      p.update(40, 100); // within 100 ms of the last redraw
      t += 50;
      p.update(50, 100);
      expect(out).toEqual([`\r${renderProgress(30, 100)}\x1b[K`, `\r${renderProgress(50, 100)}\x1b[K`]);
      p.clear();
      expect(out[2]).toBe('\r\x1b[K');
      p.clear();
      expect(out).toHaveLength(3);
    });

    it('draws nothing when stderr is not a terminal', () => {
      let t = 0;
      const out: string[] = [];
      const p = new Progress({ tty: false, now: () => t, write: (s) => out.push(s) });
      t = 10_000;
      p.update(1, 2);
      p.clear();
      expect(out).toEqual([]);
    });
  });
});
