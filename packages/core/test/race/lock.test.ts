import { describe, expect, it } from 'vitest';
import { LockTimeline, MmuLock } from '../../src/race/lock.js';

describe('LockTimeline', () => {
  describe('.acquire', () => {
    it('spins for the overlap with the critical section of another vCPU, and never against its own', () => {
      // Two vCPUs, critical sections of 100 cycles; the clocks are set by hand.
      const clock = [0, 0];
      const t = new LockTimeline(2, 100, (v) => clock[v]!);
      // vCPU 0 at 1000: the lock is free, its section is [1000, 1100).
      clock[0] = 1000;
      expect(t.acquire(0)).toBe(0);
      // vCPU 0 again at 1050: its own section is not a contention; it starts after its own end, [1100, 1200).
      clock[0] = 1050;
      expect(t.acquire(0)).toBe(0);
      // vCPU 1 at 1130 (simulated later, on its own clock): inside vCPU 0's [1100, 1200), so it spins until
      // 1200, the overlap of [1130, 1230) with [1100, 1200): 70 cycles; its section is [1200, 1300).
      clock[1] = 1130;
      expect(t.acquire(1)).toBe(70);
      // vCPU 1 at 2000 (its clock includes the 70 it spun): nothing of vCPU 0 there.
      clock[1] = 2000;
      expect(t.acquire(1)).toBe(0);
      // vCPU 1 at 950: earlier than its own last section, so it starts at 2100 after it; nothing of vCPU 0.
      clock[1] = 950;
      expect(t.acquire(1)).toBe(0);
      expect([...t.spun]).toEqual([0, 70]);
    });

    it('charges the later-simulated vCPU the overlap when it arrived first, and chains through several holders', () => {
      const clock = [0, 0, 0];
      const t = new LockTimeline(3, 100, (v) => clock[v]!);
      clock[0] = 500; // [500, 600)
      t.acquire(0);
      clock[1] = 600; // [600, 700): touches vCPU 0's end, no overlap
      expect(t.acquire(1)).toBe(0);
      // vCPU 2 at 450: [450, 550) overlaps vCPU 0's [500, 600) by 50 (vCPU 0 would have waited those 50 in
      // parallel; the vCPU simulated second is charged): it moves to [500, 600), which overlaps [500, 600) by 100
      // and vCPU 1's [600, 700) by 0 -> [600, 700), then vCPU 1's by 100 -> [700, 800). 50 + 100 + 100 = 250.
      clock[2] = 450;
      expect(t.acquire(2)).toBe(250);
    });

    it('remembers the last 65,536 sections of a vCPU: a vCPU far behind meets the old ones, not the forgotten', () => {
      const clock = [0, 0];
      const t = new LockTimeline(2, 100, (v) => clock[v]!);
      // vCPU 0 runs far ahead: 70,000 sections [200k, 200k + 100).
      for (let k = 0; k < 70_000; k++) {
        clock[0] = 200 * k;
        t.acquire(0);
      }
      // Sections 0..4,463 are forgotten (70,000 - 65,536 = 4,464): vCPU 1 at 50 meets nothing.
      clock[1] = 50;
      expect(t.acquire(1)).toBe(0);
      // Section 4,464 = [892,800, 892,900) is remembered: vCPU 1 at 892,850 spins 50.
      clock[1] = 892_850;
      expect(t.acquire(1)).toBe(50);
      // And the last one, [13,999,800, 13,999,900): at 13,999,820, 80.
      clock[1] = 13_999_820;
      expect(t.acquire(1)).toBe(80);
    });

    it('never spins with one vCPU', () => {
      let c = 0;
      const t = new LockTimeline(1, 100, () => c);
      for (let i = 0; i < 10; i++) {
        c += 10;
        expect(t.acquire(0)).toBe(0);
      }
    });
  });
});

describe('MmuLock', () => {
  describe('.acquire', () => {
    it('counts an acquisition that spun on its timeline as contended; the host thread is never timed', () => {
      const lock = new MmuLock();
      const clock = [100, 150];
      lock.timeline = new LockTimeline(2, 100, (v) => clock[v]!);
      expect(lock.acquire(0)).toBe(0);
      lock.release(0);
      expect(lock.acquire(1)).toBe(50); // [150, 250) against [100, 200)
      lock.release(1);
      expect(lock.acquire(-2)).toBe(0);
      lock.release(-2);
      expect([lock.acquired, lock.contended]).toEqual([3, 1]);
    });
  });
});
