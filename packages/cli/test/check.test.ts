import type { FaultKindName, GuestFaultEvent } from '@vmexit/guest';
import { describe, expect, it } from 'vitest';
import { ALLOWED_DIFFERENCES, checkFailure, compareGuestViews, type GuestView } from '@vmexit/lab';

type Ev = [address: number, errorCode: number, kind: FaultKindName, vcpu?: number, pid?: number];

/** A guest view from a list of events and a small memory (words by index, guest-physical = 4 * index + 0x1000). */
function view(events: Ev[], words: number[] = [0, 0, 0, 0], extra: Partial<GuestView> = {}): GuestView {
  const evs: GuestFaultEvent[] = events.map(([address, errorCode, kind, vcpu = 0, pid = 1], seq) => ({ seq, vcpu, pid, address, errorCode, kind }));
  const u32 = Uint32Array.from(words);
  return {
    events: { length: evs.length, at: (i) => evs[i]! },
    sigsegv: evs.filter((e) => e.kind === 'sigsegv').length,
    memory: { size: 0x2000, read32: (pa) => (pa >= 0x1000 && pa < 0x1000 + 4 * u32.length ? u32[(pa - 0x1000) / 4]! : 0), backedGfns: () => [1] },
    memoryDigest: Array.from(u32, (w) => w.toString(16)).join('.'),
    ...extra,
  };
}

const RUN: Ev[] = [
  [0x400000, 6, 'demand-zero'],
  [0x401000, 4, 'zero-page'],
  [0x401000, 7, 'cow'],
  [0x7000, 4, 'sigsegv'],
];

describe('compareGuestViews', () => {
  it('passes identical views and says what it compared', () => {
    const r = compareGuestViews(view(RUN), view(RUN));
    expect(r).toEqual({ ok: true, compared: { faults: 4, sigsegv: 1 }, divergence: null, first: null, allowed: [], allowedTotal: 0 });
  });

  it('names the first differing #PF with its index and both sides (error code)', () => {
    const virt: Ev[] = RUN.map((e, i) => (i === 1 ? [e[0], 6, 'demand-zero'] : e));
    const r = compareGuestViews(view(RUN), view(virt));
    expect(r.ok).toBe(false);
    expect(r.first).toMatchObject({
      what: 'event',
      nativeIndex: 1,
      variantIndex: 1,
      native: { address: 0x401000, errorCode: 4 },
      variant: { address: 0x401000, errorCode: 6 },
    });
    expect(r.divergence).toBe(
      'guest event #1: natively #PF at 0x401000 error code 4 on vCPU 0 (pid 1, zero-page), under the variant #PF at 0x401000 error code 6 on vCPU 0 (pid 1, demand-zero)',
    );
    expect(checkFailure(r).exitCode).toBe(1);
    expect(checkFailure(r).message).toBe(`--check: the guest can tell it runs virtualized: ${r.divergence}`);
  });

  it('compares the vCPU and the process of every fault', () => {
    expect(compareGuestViews(view(RUN), view(RUN.map((e, i) => (i === 2 ? [e[0], e[1], e[2], 1] : e)))).divergence).toMatch(
      /^guest event #2: .* on vCPU 0 .* under the variant .* on vCPU 1 /,
    );
    expect(compareGuestViews(view(RUN), view(RUN.map((e, i) => (i === 0 ? [e[0], e[1], e[2], 0, 2] : e)))).divergence).toMatch(
      /^guest event #0: .*\(pid 1, .*\(pid 2, /,
    );
  });

  it('compares SIGSEGVs event by event, not only by count', () => {
    // The same number of SIGSEGVs, at other events: natively #3, under the variant #2.
    const virt: Ev[] = [RUN[0]!, RUN[1]!, [0x401000, 7, 'sigsegv'], [0x7000, 4, 'zero-page']];
    const r = compareGuestViews(view(RUN), view(virt));
    expect(view(virt).sigsegv).toBe(view(RUN).sigsegv);
    expect(r.first).toMatchObject({ what: 'event', nativeIndex: 2, variantIndex: 2 });
    expect(r.divergence).toBe(
      'guest event #2: natively #PF at 0x401000 error code 7 on vCPU 0 (pid 1, cow), under the variant SIGSEGV after #PF at 0x401000 error code 7 on vCPU 0 (pid 1)',
    );
  });

  it('reports a fault one run lacks, at its index, with "nothing" on the other side', () => {
    const r = compareGuestViews(view(RUN), view(RUN.slice(0, 3)));
    expect(r.first).toMatchObject({ what: 'event', nativeIndex: 3, variantIndex: 3, variant: null });
    expect(r.divergence).toBe(
      'guest event #3: natively SIGSEGV after #PF at 0x7000 error code 4 on vCPU 0 (pid 1), under the variant nothing (the guest received 3 events, the last #2)',
    );
  });

  it('reports a SIGSEGV count that differs when the events agree (a SIGSEGV outside the #PF handler)', () => {
    const r = compareGuestViews(view(RUN), view(RUN, undefined, { sigsegv: 2 }));
    expect(r.first).toEqual({ what: 'sigsegv-count', native: 1, variant: 2 });
    expect(r.divergence).toBe('SIGSEGVs: 1 natively, 2 under the variant');
  });

  it('reports the first differing word of final memory with its guest-physical address', () => {
    const r = compareGuestViews(view(RUN, [1, 2, 3, 4]), view(RUN, [1, 2, 5, 6]));
    expect(r.first).toEqual({ what: 'memory', gpa: 0x1008, native: 3, variant: 5 });
    expect(r.divergence).toBe(
      'final guest memory differs: digest 1.2.3.4 natively, 1.2.5.6 under the variant (first at guest-physical 0x1008: 0x3 natively, 0x5 under the variant)',
    );
  });

  describe('the differences the SDM allows (ALLOWED_DIFFERENCES)', () => {
    it('spurious-page-fault (SDM Vol. 3A §4.10.4.3): a #PF in one run only that the guest found spurious is accepted, and named', () => {
      // Under the variant, an extra #PF at event 2 that the guest's handler found already allowed (a stale
      // translation after a rights increase without invalidation); the rest of the sequence is the same.
      const virt: Ev[] = [RUN[0]!, RUN[1]!, [0x401000, 7, 'spurious'], RUN[2]!, RUN[3]!];
      const r = compareGuestViews(view(RUN), view(virt));
      expect(r.ok).toBe(true);
      expect(r.allowed).toEqual([
        {
          id: 'spurious-page-fault',
          rule: 'SDM Vol. 3A §4.10.4.3',
          detail: 'variant guest event #2: #PF at 0x401000 error code 7 on vCPU 0 (pid 1, spurious)',
        },
      ]);
      expect(ALLOWED_DIFFERENCES['spurious-page-fault'].rule).toBe('SDM Vol. 3A §4.10.4.3');
      // The other way round too: natively spurious, not under the variant.
      expect(compareGuestViews(view(virt), view(RUN)).allowed.map((d) => d.detail)).toEqual([
        'native guest event #2: #PF at 0x401000 error code 7 on vCPU 0 (pid 1, spurious)',
      ]);
      // An extra fault of any other kind is a divergence.
      const bad: Ev[] = [RUN[0]!, RUN[1]!, [0x401000, 7, 'cow'], RUN[2]!, RUN[3]!];
      expect(compareGuestViews(view(RUN), view(bad)).first).toMatchObject({ what: 'event', nativeIndex: 3, variantIndex: 3 });
    });

    it('stale-accessed-dirty (SDM Vol. 3A §4.8, §4.10.4.3): an A/D-only difference in an entry the guest cleared without invalidating is accepted, and named', () => {
      const pte = 0x00900027; // P W U A
      const stale = new Set([0x1004]);
      const n = view(RUN, [1, pte, 0, 0], { staleFlagEntries: stale });
      const v = view(RUN, [1, pte & ~0x20, 0, 0], { staleFlagEntries: stale });
      const r = compareGuestViews(n, v);
      expect(r.ok).toBe(true);
      expect(r.allowed).toEqual([
        {
          id: 'stale-accessed-dirty',
          rule: 'SDM Vol. 3A §4.8, §4.10.4.3',
          detail: 'the entry at guest-physical 0x1004: 0x900027 natively, 0x900007 under the variant',
        },
      ]);
      // Without the precondition (the guest never cleared the flag there), the same difference is a divergence:
      // a hypervisor that forgets to set A or D.
      expect(compareGuestViews(view(RUN, [1, pte, 0, 0]), view(RUN, [1, pte & ~0x20, 0, 0])).first).toEqual({
        what: 'memory',
        gpa: 0x1004,
        native: pte,
        variant: pte & ~0x20,
      });
      // And a difference in any other bit of that entry is one too.
      expect(compareGuestViews(n, view(RUN, [1, pte & ~0x2, 0, 0], { staleFlagEntries: stale })).first).toMatchObject({ what: 'memory', gpa: 0x1004 });
    });
  });
});
