import {
  ACC_FETCH,
  ACC_READ,
  ACC_WRITE,
  createPagingContext,
  MODE_LONG4,
  SparsePhysicalMemory,
  walk,
  WALK_NESTED_FAULT,
  WALK_OK,
  WALK_SIDE_EFFECTS,
  WalkResult,
} from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { SvmBackend } from '../src/backend.js';
import { VMEXIT_NPF } from '../src/constants.js';
import { BackendError } from '../src/errors.js';
import { createVmcb } from '../src/state.js';

/*
 * NPF exits from real walks: a 4-level guest (tables at gpa 0x1000-0x4000, data at 0x200000, va 0x400abc)
 * over 4-level nested tables at host-physical 0x100000 that map every guest page at gpa + 0x10000000
 * (the twin of backend-vmx's test/second-stage.test.ts).
 */
const OFF = 0x1000_0000;
const NPT = 0x10_0000;
const VA = 0x40_0abc;
const PWU = 7;

function setup(dataLeaf = PWU, dataHi = 0) {
  const host = new SparsePhysicalMemory();
  host.set64(0x1000 + OFF, 0x2000 | 0x27, 0);
  host.set64(0x2000 + OFF, 0x3000 | 0x27, 0);
  host.set64(0x3000 + 2 * 8 + OFF, 0x4000 | 0x27, 0);
  host.set64(0x4000 + OFF, 0x20_0000 | 0x67, 0);
  host.set64(NPT, (NPT + 0x1000) | PWU, 0);
  host.set64(NPT + 0x1000, (NPT + 0x2000) | PWU, 0);
  host.set64(NPT + 0x2000, (NPT + 0x3000) | PWU, 0);
  host.set64(NPT + 0x2000 + 8, (NPT + 0x4000) | PWU, 0);
  for (const g of [0x1000, 0x2000, 0x3000, 0x4000]) host.set64(NPT + 0x3000 + (g >>> 12) * 8, (g + OFF) | PWU, 0);
  host.set64(NPT + 0x4000, (0x20_0000 + OFF) | dataLeaf, dataHi);
  const svm = new SvmBackend();
  const v = createVmcb('tdp');
  svm.setNestedRoot(v, NPT);
  const stage = svm.createSecondStage(v, host, 46);
  const ctx = createPagingContext({ mode: MODE_LONG4, cr3: 0x1000, eferNxe: true, nested: stage });
  const r = new WalkResult();
  return { host, svm, v, ctx, r };
}

describe('SvmBackend', () => {
  describe('.createSecondStage / .nestedFaultExit on real NPT walks (APM Vol. 2 §15.25.6)', () => {
    it('walks 24 references and sets nested A/D when NPT allows the access', () => {
      const { host, ctx, r } = setup();
      expect(walk(ctx, host, VA, ACC_WRITE, WALK_SIDE_EFFECTS, r)).toBe(WALK_OK);
      expect([r.pa, r.refs]).toEqual([0x20_0abc + OFF, 24]);
      expect(host.read32(NPT + 0x4000) & 0x60).toBe(0x60);
    });

    it('a write to a read-only data page: VMEXIT_NPF, EXITINFO1 = P|W|U + bit 32 (0x1_0000_0007), EXITINFO2 = the gpa', () => {
      const { host, svm, v, ctx, r } = setup(0x5);
      expect(walk(ctx, host, VA, ACC_WRITE, WALK_SIDE_EFFECTS, r)).toBe(WALK_NESTED_FAULT);
      expect(svm.nestedFaultExit(v, r, VA)).toEqual({
        backend: 'svm',
        code: VMEXIT_NPF,
        name: 'VMEXIT_NPF',
        fields: { exitInfo1: 0x1_0000_0007, exitInfo2: 0x20_0abc },
      });
      expect(svm.nestedFaultErrorCode(v)).toBe(0x1_0000_0007);
    });

    it("the guest's CR3 page read-only in NPT: even a read faults on the table access, 0x2_0000_0007 (kvm-unit-tests npt_rw_pfwalk)", () => {
      const { host, svm, v, ctx, r } = setup();
      host.set64(NPT + 0x3000 + 8, (0x1000 + OFF) | 0x5, 0);
      expect(walk(ctx, host, VA, ACC_READ, WALK_SIDE_EFFECTS, r)).toBe(WALK_NESTED_FAULT);
      expect(svm.nestedFaultExit(v, r, VA).fields).toEqual({ exitInfo1: 0x2_0000_0007, exitInfo2: 0x1000 });
    });

    it('a fetch from an NX page: P|U|ID on the final translation; a not-present page: U only', () => {
      const { host, svm, v, ctx, r } = setup(PWU, 0x8000_0000);
      expect(walk(ctx, host, VA, ACC_FETCH, WALK_SIDE_EFFECTS, r)).toBe(WALK_NESTED_FAULT);
      expect(svm.nestedFaultExit(v, r, VA).fields.exitInfo1).toBe(2 ** 32 + 0x15);
      host.set64(NPT + 0x4000, 0, 0);
      expect(walk(ctx, host, VA, ACC_READ, WALK_SIDE_EFFECTS, r)).toBe(WALK_NESTED_FAULT);
      expect(svm.nestedFaultExit(v, r, VA).fields.exitInfo1).toBe(2 ** 32 + 0x4);
    });

    it('refuses to make a second stage with NP_ENABLE clear', () => {
      expect(() => new SvmBackend().createSecondStage(createVmcb('shadow'), new SparsePhysicalMemory(), 46)).toThrow(/NP_ENABLE/);
      expect(() => new SvmBackend().createSecondStage(createVmcb('shadow'), new SparsePhysicalMemory(), 46)).toThrow(
        expect.objectContaining({ name: 'BackendError', code: 'E_BACKEND_STATE' }),
      );
    });

    it('gives no NPF error code for an exit that is not VMEXIT_NPF (BackendError E_BACKEND_STATE)', () => {
      const v = createVmcb('tdp');
      v.exitCode = 0x4e; // VMEXIT_EXCP_PF
      expect(() => new SvmBackend().nestedFaultErrorCode(v)).toThrow(BackendError);
      expect(() => new SvmBackend().nestedFaultErrorCode(v)).toThrow(
        expect.objectContaining({ code: 'E_BACKEND_STATE', message: expect.stringMatching(/is not VMEXIT_NPF$/) }),
      );
    });
  });
});
