import { of, lastValueFrom, type MonoTypeOperatorFunction } from 'rxjs';
import { PFERR_PRESENT, PFERR_USER, PFERR_WRITE, type FaultPolicy, type MmuEvent, type PolicySetupContext, type PolicyVcpuContext } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { bypassGuestPf, misalignedWrite, prefetch, pteUpdate, unsync, userWriteHint, writeFlood, SHADOW_TRAP_NONPRESENT_PTE_HI, SHADOW_TRAP_NONPRESENT_PTE_LO } from '../src/index.js';

const base = { vcpu: 0, seq: 1, decidedBy: null, decision: null };
const pteWrite = (level: number, misaligned: boolean): MmuEvent => ({ ...base, kind: 'pte-write', gpa: 0x1000, size: 8, oldLo: 0, oldHi: 0, newLo: 0x2023, newHi: 0, level, misaligned });
const flood = (level: number, writeCount: number, vcpuWriteCount: number): MmuEvent => ({ ...base, kind: 'flood', gfn: 1, level, writeCount, vcpuWriteCount });

function ctx<O>(options: O, extra: Partial<PolicySetupContext<O>> = {}): PolicyVcpuContext<O> {
  return { options, ...extra } as unknown as PolicyVcpuContext<O>;
}

/** The decision a policy's MMU-event operator takes for `ev` (null: passed on). */
async function decide<O>(p: FaultPolicy<O>, ev: MmuEvent, options: O): Promise<unknown> {
  const op = p.mmuEvents!(ctx(options)) as MonoTypeOperatorFunction<MmuEvent>;
  const out = await lastValueFrom(of({ ...ev }).pipe(op));
  return out.decision;
}

function parse<O>(p: FaultPolicy<O>, v: unknown): O {
  const r = p.optionsSchema!.safeParse(v);
  if (!r.success) throw new Error(r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
  return r.data;
}

describe('bypassGuestPf', () => {
  describe('.setup', () => {
    it('programs PFEC_MASK = PFEC_MATCH = P on every vCPU and KVM trap / notrap sptes', () => {
      const calls: unknown[][] = [];
      const filter = { setPfecMaskMatch: (...a: unknown[]) => calls.push(['pfec', ...a]) };
      const enc = { setNonPresentSptes: (...a: unknown[]) => calls.push(['spte', ...a]) };
      bypassGuestPf.setup!({ options: {}, mmu: { name: 'shadow' }, backendStates: ['s0', 's1'], capability: (n: string) => (n === 'PageFaultFilter' ? filter : enc) } as never);
      expect(calls).toEqual([
        ['pfec', 's0', PFERR_PRESENT, PFERR_PRESENT],
        ['pfec', 's1', PFERR_PRESENT, PFERR_PRESENT],
        ['spte', SHADOW_TRAP_NONPRESENT_PTE_LO, SHADOW_TRAP_NONPRESENT_PTE_HI, 0, 0],
      ]);
      expect(SHADOW_TRAP_NONPRESENT_PTE_HI * 2 ** 32 + SHADOW_TRAP_NONPRESENT_PTE_LO).toBe(2 ** 64 - 0xfff); // ~0xffe: 0xfffffffffffff001 (rounded as a double)
    });
    it('refuses two-dimensional paging with a message that says why', () => {
      expect(() => bypassGuestPf.setup!({ options: {}, mmu: { name: 'tdp' }, backendStates: [], capability: () => ({}) } as never)).toThrow(/needs shadow paging.*bypass_guest_pf = 0 with EPT/);
    });
    it('needs the VMX filter and the MMU encoding', () => {
      expect([...bypassGuestPf.needs].sort()).toEqual(['NonPresentSpteEncoding', 'PageFaultFilter']);
    });
  });
});

describe('pteUpdate', () => {
  describe('.mmuEvents', () => {
    it('answers update-spte to an aligned level-1 pte write, and passes on upper levels and misaligned writes', async () => {
      expect(await decide(pteUpdate, pteWrite(1, false), {})).toBe('update-spte');
      expect(await decide(pteUpdate, pteWrite(2, false), {})).toBeNull();
      expect(await decide(pteUpdate, pteWrite(1, true), {})).toBeNull();
    });
  });
});

describe('unsync', () => {
  describe('.mmuEvents', () => {
    it('lets level-1 pages go unsync', async () => {
      expect(await decide(unsync, { ...base, kind: 'unsync', gfn: 5 }, {})).toBe(true);
      expect(await decide(unsync, pteWrite(1, false), {})).toBeNull();
    });
  });
  describe('.setup', () => {
    it('refuses a backend state that does not intercept INVLPG', () => {
      const backend = { name: 'vmx', invlpgExits: () => false, crWriteExits: () => true };
      expect(() => unsync.setup!({ options: {}, mmu: { name: 'shadow' }, backend, backendStates: [{}] } as never)).toThrow(/needs INVLPG and CR3 loads to exit.*does not intercept INVLPG/);
    });
  });
});

describe('writeFlood', () => {
  describe('.optionsSchema', () => {
    it('defaults to 3 per page, and rejects a threshold of 0 and unknown keys', () => {
      expect(parse(writeFlood, {})).toEqual({ threshold: 3, count: 'per-page' });
      expect(() => parse(writeFlood, { threshold: 0 })).toThrow(/threshold/);
      expect(() => parse(writeFlood, { count: 'per-cpu' })).toThrow(/count/);
      expect(writeFlood.optionsSchema!.safeParse({ treshold: 3 }).success).toBe(false);
    });
  });
  describe('.mmuEvents', () => {
    it('per page: floods an upper-level page at its 3rd write, never a level-1 page', async () => {
      const o = parse(writeFlood, {});
      expect(await decide(writeFlood, flood(2, 2, 9), o)).toBeNull();
      expect(await decide(writeFlood, flood(2, 3, 0), o)).toBe(true);
      expect(await decide(writeFlood, flood(1, 50, 50), o)).toBeNull();
    });
    it('per vCPU: counts consecutive writes of the vCPU at every level, with the threshold given', async () => {
      const o = parse(writeFlood, { count: 'per-vcpu', threshold: 5 });
      expect(await decide(writeFlood, flood(1, 1, 4), o)).toBeNull();
      expect(await decide(writeFlood, flood(1, 1, 5), o)).toBe(true);
    });
  });
});

describe('misalignedWrite', () => {
  describe('.mmuEvents', () => {
    it('zaps the page on a misaligned write only', async () => {
      expect(await decide(misalignedWrite, pteWrite(1, true), {})).toBe('zap-page');
      expect(await decide(misalignedWrite, pteWrite(2, true), {})).toBe('zap-page');
      expect(await decide(misalignedWrite, pteWrite(1, false), {})).toBeNull();
    });
  });
});

describe('prefetch', () => {
  describe('.mmuEvents', () => {
    it('asks for the prefetch of the group', async () => {
      expect(await decide(prefetch, { ...base, kind: 'prefetch', gfn: 3, address: 0x1000 }, {})).toBe(true);
      expect(await decide(prefetch, pteWrite(1, false), {})).toBeNull();
    });
  });
});

describe('userWriteHint', () => {
  describe('.mmuEvents', () => {
    it('unprotects on a user-mode write fault only', async () => {
      const tw = (errorCode: number): MmuEvent => ({ ...base, kind: 'tracked-write', gfn: 3, address: 0x1000, errorCode });
      expect(await decide(userWriteHint, tw(PFERR_PRESENT | PFERR_WRITE | PFERR_USER), {})).toBe(true);
      expect(await decide(userWriteHint, tw(PFERR_PRESENT | PFERR_WRITE), {})).toBeNull();
    });
  });
});
