import { lastValueFrom, of } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { PFERR_PRESENT, PFERR_USER, PFERR_WRITE, resolveExits, walk, WALK_OK, WALK_PAGE_FAULT, WalkResult } from '../../src/index.js';
import { pagedVcpu, pageFaultExit, policyVcpuContext } from '../../src/testing/index.js';

describe('policyVcpuContext', () => {
  it('gives the options, a real vCPU, and counts what the policy counts', async () => {
    const ctx = policyVcpuContext({ limit: 2 });
    expect(ctx.options.limit).toBe(2);
    expect(ctx.vcpu.id).toBe(0);
    ctx.count('a');
    ctx.count('a', 2);
    ctx.count('b');
    expect(ctx.counts).toEqual({ a: 3, b: 1 });
    const op = resolveExits('t', () => {
      ctx.count('t.taken');
      return { kind: 'resume' };
    });
    const out = await lastValueFrom(of(pageFaultExit({ address: 0x1000 })).pipe(op));
    expect(out.resolvedBy).toBe('t');
    expect(ctx.counts['t.taken']).toBe(1);
  });

  it('throws a clear error for a part the test did not give (backend, MMU, capability)', () => {
    const ctx = policyVcpuContext({});
    expect(() => ctx.backend.name).toThrow("the test context has no backend (read of 'name'): pass one to policyVcpuContext");
    expect(() => ctx.mmu.name).toThrow('the test context has no MMU');
    expect(() => ctx.capability('PageFaultFilter')).toThrow("no capability 'PageFaultFilter'");
    const filter = { set: () => undefined };
    expect(policyVcpuContext({}, { capabilities: { PageFaultFilter: filter } }).capability('PageFaultFilter')).toBe(filter);
  });
});

describe('pageFaultExit', () => {
  it('is an unresolved #PF exit as each backend reports it', () => {
    const e = pageFaultExit({ address: 0x2800 });
    expect(e).toMatchObject({ kind: 'exception', vector: 14, address: 0x2800, errorCode: PFERR_USER | PFERR_WRITE, resolution: null, resolvedBy: null });
    expect(e.hw).toEqual({ backend: 'vmx', code: 0, name: 'EXCEPTION_NMI', fields: { exitQualification: 0x2800 } });
    expect(pageFaultExit({ address: 0x10, errorCode: PFERR_PRESENT, backend: 'svm' }).hw).toEqual({
      backend: 'svm',
      code: 0x4e,
      name: 'VMEXIT_EXCP14',
      fields: { exitInfo1: PFERR_PRESENT, exitInfo2: 0x10 },
    });
  });
});

describe('pagedVcpu', () => {
  it('maps exactly the pages it is given, with the rights given', () => {
    const v = pagedVcpu([
      { va: 0x1000, gpa: 0x20000 },
      { va: 0x5000, gpa: 0x21000, writable: false },
    ]);
    const r = new WalkResult();
    expect(walk(v.ctx, v.memory, 0x1abc, PFERR_USER | PFERR_WRITE, 0, r)).toBe(WALK_OK);
    expect(walk(v.ctx, v.memory, 0x5000, PFERR_USER, 0, r)).toBe(WALK_OK);
    // A user write to a read-only page: #PF with P, W, U (SDM Vol. 3A §4.7).
    expect(walk(v.ctx, v.memory, 0x5000, PFERR_USER | PFERR_WRITE, 0, r)).toBe(WALK_PAGE_FAULT);
    expect(r.errorCode).toBe(PFERR_PRESENT | PFERR_USER | PFERR_WRITE);
    // Anything else is not present.
    expect(walk(v.ctx, v.memory, 0x2000, PFERR_USER, 0, r)).toBe(WALK_PAGE_FAULT);
    expect(r.errorCode).toBe(PFERR_USER);
    expect(() => pagedVcpu([{ va: 0x1001, gpa: 0 }])).toThrow('va 0x1001 is not a 4 KiB page below 2 MiB');
  });
});
