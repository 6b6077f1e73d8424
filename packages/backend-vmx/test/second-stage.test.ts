import {
  ACC_READ,
  ACC_WRITE,
  createPagingContext,
  MODE_LONG4,
  PFERR_PRESENT,
  PFERR_USER,
  PFERR_WRITE,
  SparsePhysicalMemory,
  walk,
  WALK_NESTED_FAULT,
  WALK_OK,
  WALK_SIDE_EFFECTS,
  WalkResult,
} from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { VmxBackend } from '../src/backend.js';
import { EXIT_REASON_EPT_MISCONFIG, EXIT_REASON_EPT_VIOLATION } from '../src/constants.js';
import { BackendError } from '../src/errors.js';
import { createVmcs } from '../src/state.js';

/*
 * EPT exits from real walks: a 4-level guest (tables at gpa 0x1000-0x4000, data at 0x200000, va 0x400abc)
 * over 4-level EPT tables at host-physical 0x100000 that map every guest page at gpa + 0x10000000.
 */
const OFF = 0x1000_0000;
const EPT = 0x10_0000;
const VA = 0x40_0abc;

function setup(dataLeaf = 7 | (6 << 3)) {
  const host = new SparsePhysicalMemory();
  // Guest tables (as the guest wrote them, at their host-physical addresses).
  host.set64(0x1000 + OFF, 0x2000 | 0x27, 0);
  host.set64(0x2000 + OFF, 0x3000 | 0x27, 0);
  host.set64(0x3000 + 2 * 8 + OFF, 0x4000 | 0x27, 0);
  host.set64(0x4000 + OFF, 0x20_0000 | 0x67, 0);
  // EPT: PML4 at EPT, PDPT EPT+0x1000, PD EPT+0x2000, PTs EPT+0x3000 (gpa 0..2M) and EPT+0x4000 (2M..4M).
  host.set64(EPT, (EPT + 0x1000) | 7, 0);
  host.set64(EPT + 0x1000, (EPT + 0x2000) | 7, 0);
  host.set64(EPT + 0x2000, (EPT + 0x3000) | 7, 0);
  host.set64(EPT + 0x2000 + 8, (EPT + 0x4000) | 7, 0);
  for (const g of [0x1000, 0x2000, 0x3000, 0x4000]) host.set64(EPT + 0x3000 + (g >>> 12) * 8, (g + OFF) | 7 | (6 << 3), 0);
  host.set64(EPT + 0x4000, (0x20_0000 + OFF) | dataLeaf, 0);
  const vmx = new VmxBackend();
  const v = createVmcs('tdp');
  vmx.setNestedRoot(v, EPT);
  const stage = vmx.createSecondStage(v, host, 46);
  const ctx = createPagingContext({ mode: MODE_LONG4, cr3: 0x1000, nested: stage });
  const r = new WalkResult();
  return { host, vmx, v, ctx, r };
}

describe('VmxBackend', () => {
  describe('.createSecondStage / .nestedFaultExit on real EPT walks (SDM Vol. 3C §29.3.3, Table 28-7)', () => {
    it('walks 24 references and exits with nothing when EPT allows the access', () => {
      const { host, ctx, r } = setup();
      expect(walk(ctx, host, VA, ACC_WRITE, WALK_SIDE_EFFECTS, r)).toBe(WALK_OK);
      expect([r.pa, r.refs]).toEqual([0x20_0abc + OFF, 24]);
    });

    it('a write to a read/execute-only data page: exit 48, qualification W | R X | GVA valid | final | linear R/W, KVM PRESENT|WRITE|FINAL', () => {
      const { host, vmx, v, ctx, r } = setup(5 | (6 << 3));
      expect(walk(ctx, host, VA, ACC_WRITE, WALK_SIDE_EFFECTS, r)).toBe(WALK_NESTED_FAULT);
      const hw = vmx.nestedFaultExit(v, r, VA);
      // bits: 1 (write) | 3, 5 (R, X of the entries) | 7 | 8 | 9 (user linear address: the guest ptes have U) | 10 (writable)
      expect(hw).toEqual({
        backend: 'vmx',
        code: EXIT_REASON_EPT_VIOLATION,
        name: 'EPT_VIOLATION',
        fields: { exitQualification: 0x2 | 0x28 | 0x80 | 0x100 | 0x200 | 0x400, guestPhysicalAddress: 0x20_0abc, guestLinearAddress: VA },
      });
      expect(vmx.nestedFaultErrorCode(v)).toBe(2 ** 32 + (PFERR_PRESENT | PFERR_WRITE));
    });

    it('a not-present EPT entry for a guest page table: a read of a paging structure, bit 8 clear, no rights', () => {
      const { host, vmx, v, ctx, r } = setup();
      host.set64(EPT + 0x3000 + 3 * 8, 0, 0); // the guest PD page (gpa 0x3000) unmapped
      expect(walk(ctx, host, VA, ACC_READ, WALK_SIDE_EFFECTS, r)).toBe(WALK_NESTED_FAULT);
      expect(vmx.nestedFaultExit(v, r, VA).fields).toEqual({ exitQualification: 0x81, guestPhysicalAddress: 0x3010, guestLinearAddress: VA });
      expect(vmx.nestedFaultErrorCode(v)).toBe(2 ** 33 + PFERR_USER);
    });

    it('a misconfigured EPT entry (W without R): exit 49 with the gpa, KVM error code RSVD', () => {
      const { host, vmx, v, ctx, r } = setup(2 | (6 << 3));
      expect(walk(ctx, host, VA, ACC_READ, WALK_SIDE_EFFECTS, r)).toBe(WALK_NESTED_FAULT);
      expect(vmx.nestedFaultExit(v, r, VA)).toMatchObject({ code: EXIT_REASON_EPT_MISCONFIG, fields: { guestPhysicalAddress: 0x20_0abc } });
      expect(vmx.nestedFaultErrorCode(v)).toBe(8);
    });

    it('gives no second-stage error code for an exit that is not an EPT exit (BackendError E_BACKEND_STATE)', () => {
      const v = createVmcs('tdp');
      v.vmExitReason = 0; // EXCEPTION_NMI
      expect(() => new VmxBackend().nestedFaultErrorCode(v)).toThrow(BackendError);
      expect(() => new VmxBackend().nestedFaultErrorCode(v)).toThrow(
        expect.objectContaining({ code: 'E_BACKEND_STATE', message: 'VMX: exit reason 0 (EXCEPTION_NMI) is not an EPT exit' }),
      );
    });

    it('refuses to make a second stage with EPT off, or from an invalid EPTP', () => {
      const vmx = new VmxBackend();
      expect(() => vmx.createSecondStage(createVmcs('shadow'), new SparsePhysicalMemory(), 46)).toThrow(/enable EPT/);
      expect(() => vmx.createSecondStage(createVmcs('shadow'), new SparsePhysicalMemory(), 46)).toThrow(
        expect.objectContaining({ name: 'BackendError', code: 'E_BACKEND_STATE' }),
      );
      const v = createVmcs('tdp');
      v.eptPointer = EPT + (2 << 3) + 6; // a 3-level walk
      expect(() => vmx.createSecondStage(v, new SparsePhysicalMemory(), 46)).toThrow(/page-walk length 3/);
    });
  });
});
