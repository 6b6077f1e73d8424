import {
  ACC_WRITE,
  PFERR_DEFINED,
  PFERR_FETCH,
  PFERR_PK,
  PFERR_PRESENT,
  PFERR_RSVD,
  PFERR_SGX,
  PFERR_SS,
  PFERR_USER,
  PFERR_WRITE,
  PF_VECTOR,
  WalkResult,
} from '@vmexit/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { VmxBackend } from '../src/backend.js';
import {
  CPU_BASED_CR3_LOAD_EXITING,
  CPU_BASED_CR3_STORE_EXITING,
  CPU_BASED_INVLPG_EXITING,
  EXIT_REASON_CR_ACCESS,
  EXIT_REASON_EPT_MISCONFIG,
  EXIT_REASON_EPT_VIOLATION,
  EXIT_REASON_EXCEPTION_NMI,
  EXIT_REASON_INVLPG,
  EXIT_REASON_MSR_WRITE,
  exitReasonName,
  VMX_EXIT_REASON_NAMES,
  MSR_EFER,
  SECONDARY_EXEC_ENABLE_EPT,
} from '../src/constants.js';
import { createVmcs, Vmcs } from '../src/state.js';

const vmx = new VmxBackend();

/**
 * The SDM's sentence, written out as a case analysis (independently of the XOR in the backend). PFEC,
 * PFEC_MASK and PFEC_MATCH are 32-bit fields: compared as unsigned (a JS `&` gives a signed int32, so with
 * bit 31 set it would never equal a match of 0x80000000 or more).
 */
function sdmRule(eb14: boolean, pfec: number, mask: number, match: number): boolean {
  if ((pfec & mask) >>> 0 === match >>> 0) return eb14; // "the specification of bit 14 in the exception bitmap is followed"
  return !eb14; // "the meaning of that bit is reversed"
}

/** The error-code bits the SDM defines (§4.7), in order: P, W/R, U/S, RSVD, I/D, PK, SS, SGX. */
const PFEC_BITS = [PFERR_PRESENT, PFERR_WRITE, PFERR_USER, PFERR_RSVD, PFERR_FETCH, PFERR_PK, PFERR_SS, PFERR_SGX];

/** Spreads the 8 bits of `i` onto the defined error-code bits (bit k of `i` -> PFEC_BITS[k]). */
function spread(i: number): number {
  let v = 0;
  for (let k = 0; k < PFEC_BITS.length; k++) if ((i >>> k) & 1) v |= PFEC_BITS[k]!;
  return v;
}

function vmcsWith(eb14: boolean, mask: number, match: number): Vmcs {
  const v = new Vmcs();
  v.exceptionBitmap = eb14 ? 1 << PF_VECTOR : 0;
  vmx.setPfecMaskMatch(v, mask, match);
  return v;
}

describe('VmxBackend', () => {
  describe('.exceptionExits', () => {
    it('follows SDM Vol. 3C §25.6.3 for every combination of the defined error-code bits, PFEC_MASK, PFEC_MATCH and bit 14', () => {
      // P, W/R, U/S, RSVD, I/D, PK, SS, SGX (bits 0-6 and 15): 256 error codes x 256 masks x 256 matches x 2
      // = 33,554,432 cases, each mask and match also over exactly those bits.
      expect(PFEC_BITS.reduce((a, b) => a | b, 0)).toBe(PFERR_DEFINED);
      expect([PFERR_FETCH, PFERR_PK, PFERR_SS, PFERR_SGX, PFERR_USER]).toEqual([1 << 4, 1 << 5, 1 << 6, 1 << 15, 1 << 2]);
      const codes = Array.from({ length: 256 }, (_, i) => spread(i));
      const pf = PF_VECTOR; // read once: the test runner's imports are getters, 33M reads cost seconds
      let exits = 0;
      for (const eb14 of [false, true]) {
        for (const mask of codes) {
          for (const match of codes) {
            const v = vmcsWith(eb14, mask, match);
            for (const pfec of codes) {
              const got = vmx.exceptionExits(v, pf, pfec);
              if (got !== sdmRule(eb14, pfec, mask, match)) throw new Error(`eb14=${eb14} mask=${mask} match=${match} pfec=${pfec}: got ${got}`);
              if (got) exits++;
            }
          }
        }
      }
      // With eb14 = 1 an exit happens iff (pfec & mask) == match; with eb14 = 0 iff not: exactly half of all cases.
      expect(exits).toBe(256 * 256 * 256);
    });

    it('gives each defined bit its own say: a mask of one bit exits (bit 14 = 1) iff that bit matches', () => {
      for (const bit of PFEC_BITS) {
        for (const match of [0, bit]) {
          const v = vmcsWith(true, bit, match);
          for (const pfec of [0, bit, PFERR_DEFINED, PFERR_DEFINED & ~bit])
            expect(vmx.exceptionExits(v, PF_VECTOR, pfec), `bit ${bit} match ${match} pfec ${pfec}`).toBe((pfec & bit) === match);
        }
      }
    });

    it('agrees with the rule for arbitrary 32-bit error codes, masks and matches', () => {
      fc.assert(
        fc.property(fc.boolean(), fc.nat({ max: 0xffffffff }), fc.nat({ max: 0xffffffff }), fc.nat({ max: 0xffffffff }), (eb14, pfec, mask, match) => {
          expect(vmx.exceptionExits(vmcsWith(eb14, mask, match), PF_VECTOR, pfec)).toBe(sdmRule(eb14, pfec, mask, match));
        }),
      );
    });

    it('compares the 32-bit fields unsigned (bit 31 in the error code, the mask and the match)', () => {
      // The counterexample that made a signed comparison flaky: (pfec & mask) = 0xffffffe0 = match.
      expect(sdmRule(false, 0xffffffe0, 0xffffffe0, 0xffffffe0)).toBe(false);
      expect(vmx.exceptionExits(vmcsWith(false, 0xffffffe0, 0xffffffe0), PF_VECTOR, 0xffffffe0)).toBe(false);
      expect(vmx.exceptionExits(vmcsWith(true, 0x80000000, 0x80000000), PF_VECTOR, 0x80000001)).toBe(true);
      expect(vmx.exceptionExits(vmcsWith(true, 0x80000000, 0x80000000), PF_VECTOR, 1)).toBe(false);
      // Negative (int32) inputs are the same 32-bit values.
      expect(vmx.exceptionExits(vmcsWith(true, -1, -32), PF_VECTOR, 0xffffffe0)).toBe(true);
    });

    it('with KVM bypass_guest_pf (bit 14 = 1, mask = match = P) lets P=0 faults through and exits on P=1', () => {
      const v = vmcsWith(true, PFERR_PRESENT, PFERR_PRESENT);
      expect(vmx.exceptionExits(v, PF_VECTOR, PFERR_WRITE)).toBe(false);
      expect(vmx.exceptionExits(v, PF_VECTOR, PFERR_PRESENT | PFERR_WRITE)).toBe(true);
      expect(vmx.exceptionExits(v, PF_VECTOR, PFERR_PRESENT | PFERR_RSVD)).toBe(true);
    });

    it('uses the plain bitmap for vectors other than 14, ignoring PFEC_MASK/MATCH', () => {
      const v = vmcsWith(false, 0, 1);
      v.exceptionBitmap |= 1 << 13;
      expect(vmx.exceptionExits(v, 13, 0)).toBe(true);
      expect(vmx.exceptionExits(v, 6, 0)).toBe(false);
    });
  });

  describe('.crWriteExits', () => {
    it('exits on MOV to CR3 unless the value is one of the first CR3-target-count target values', () => {
      const v = createVmcs('shadow');
      v.cr3TargetValues[0] = 0x1000;
      v.cr3TargetValues[1] = 0x2000;
      expect(vmx.crWriteExits(v, 3, 0x1000)).toBe(true); // count 0: every load exits
      v.cr3TargetCount = 1;
      expect(vmx.crWriteExits(v, 3, 0x1000)).toBe(false);
      expect(vmx.crWriteExits(v, 3, 0x2000)).toBe(true); // only the first `count` values count
      v.cr3TargetCount = 2;
      expect(vmx.crWriteExits(v, 3, 0x2000)).toBe(false);
      expect(vmx.crWriteExits(v, 3, 0x3000)).toBe(true);
      v.cpuBasedVmExecControl &= ~CPU_BASED_CR3_LOAD_EXITING;
      expect(vmx.crWriteExits(v, 3, 0x3000)).toBe(false);
    });

    it('exits on MOV to CR0/CR4 iff a host-owned bit differs from the read shadow, and follows the shadow after handling', () => {
      const v = createVmcs('shadow');
      expect(vmx.crWriteExits(v, 0, 0x80000011)).toBe(true); // PG|ET|PE vs shadow 0
      vmx.crWriteHandled(v, 0, 0x80000011);
      expect(vmx.crWriteExits(v, 0, 0x80000011 | 8)).toBe(false); // TS is guest-owned
      expect(vmx.crWriteExits(v, 0, 0x80010011)).toBe(true); // WP is host-owned
      expect(vmx.crWriteExits(v, 4, 1 << 5)).toBe(true); // PAE
    });

    it('exits on WRMSR EFER through the MSR bitmap', () => {
      const v = createVmcs('tdp');
      expect(vmx.crWriteExits(v, MSR_EFER, 0xd01)).toBe(true);
      v.msrWriteIntercepts.clear();
      expect(vmx.crWriteExits(v, MSR_EFER, 0xd01)).toBe(false);
    });
  });

  describe('.invlpgExits', () => {
    it('exit on INVLPG under shadow paging, not under EPT', () => {
      const s = createVmcs('shadow');
      const t = createVmcs('tdp');
      expect(vmx.invlpgExits(s)).toBe(true);
      expect(vmx.invlpgExits(t)).toBe(false);
      expect(s.cpuBasedVmExecControl & (CPU_BASED_CR3_STORE_EXITING | CPU_BASED_INVLPG_EXITING)).not.toBe(0);
      expect(t.secondaryVmExecControl & SECONDARY_EXEC_ENABLE_EPT).not.toBe(0);
      expect(vmx.exceptionExits(t, PF_VECTOR, 0)).toBe(false); // EPT: #PF not intercepted
    });
  });

  describe('exit construction', () => {
    it('describes a #PF exit: reason 0, qualification = linear address, interruption info and error code', () => {
      const v = createVmcs('shadow');
      const hw = vmx.exceptionExit(v, PF_VECTOR, 0x7, -0x7780_0000_0000);
      expect(hw).toEqual({
        backend: 'vmx',
        code: EXIT_REASON_EXCEPTION_NMI,
        name: 'EXCEPTION_NMI',
        fields: { exitQualification: -0x7780_0000_0000, vmExitIntrInfo: 0x80000b0e, vmExitIntrErrorCode: 7 },
      });
    });

    it('describes CR_ACCESS (28), MSR_WRITE (32), INVLPG (14) exits', () => {
      const v = createVmcs('shadow');
      expect(vmx.crWriteExit(v, 3, 0x5000)).toMatchObject({ code: EXIT_REASON_CR_ACCESS, name: 'CR_ACCESS', fields: { exitQualification: 3 } });
      expect(vmx.crWriteExit(v, MSR_EFER, 0)).toMatchObject({ code: EXIT_REASON_MSR_WRITE, name: 'MSR_WRITE' });
      expect(vmx.invlpgExit(v, 0x40_0000)).toMatchObject({ code: EXIT_REASON_INVLPG, name: 'INVLPG', fields: { exitQualification: 0x40_0000 } });
    });

    it('describes EPT violations (48) with the qualification bits and misconfigurations (49)', () => {
      const v = createVmcs('tdp');
      const f = new WalkResult();
      // a supervisor write to a present, read-only (R only) gpa on the final translation, through a writable
      // guest translation: W (bit 1) | R (bit 3) | GVA valid (7) | final (8) | linear writable (10)
      Object.assign(f, {
        nestedGpa: 0x1234000,
        nestedFinal: true,
        nestedAccess: ACC_WRITE,
        nestedRights: 1,
        nestedMisconfig: false,
        user: false,
        writable: true,
        executable: true,
      });
      const hw = vmx.nestedFaultExit(v, f, 0x400000);
      expect(hw).toMatchObject({
        code: EXIT_REASON_EPT_VIOLATION,
        name: 'EPT_VIOLATION',
        fields: { exitQualification: 0x58a, guestPhysicalAddress: 0x1234000, guestLinearAddress: 0x400000 },
      });
      expect(vmx.nestedFaultErrorCode(v)).toBe(2 ** 32 + (PFERR_PRESENT | PFERR_WRITE));
      // a read of a not-present gpa during the guest's walk: R (bit 0) | GVA valid, bit 8 clear
      Object.assign(f, { nestedGpa: 0x2000, nestedFinal: false, nestedAccess: 0, nestedRights: 0 });
      expect(vmx.nestedFaultExit(v, f, 0x400000).fields.exitQualification).toBe(0x81);
      expect(vmx.nestedFaultErrorCode(v)).toBe(2 ** 33 + PFERR_USER); // KVM reports a read as PFERR_USER
      f.nestedMisconfig = true;
      expect(vmx.nestedFaultExit(v, f, 0x400000)).toMatchObject({
        code: EXIT_REASON_EPT_MISCONFIG,
        name: 'EPT_MISCONFIG',
        fields: { guestPhysicalAddress: 0x2000 },
      });
      expect(vmx.nestedFaultErrorCode(v)).toBe(PFERR_RSVD);
      expect(vmx.mmioExit(v, 0xfee00000, 0x1000, 0).code).toBe(EXIT_REASON_EPT_MISCONFIG);
      expect(vmx.mmioExit(createVmcs('shadow'), 0xfee00000, 0x1000, ACC_WRITE).fields.vmExitIntrErrorCode).toBe(PFERR_PRESENT | PFERR_RSVD | ACC_WRITE);
    });

    it('names every reason it knows and rejects an unknown one', () => {
      expect([0, 14, 28, 48, 49].map(exitReasonName)).toEqual(['EXCEPTION_NMI', 'INVLPG', 'CR_ACCESS', 'EPT_VIOLATION', 'EPT_MISCONFIG']);
      expect(() => exitReasonName(77)).toThrow(/unknown VMX exit reason 77/);
    });

    it('lists in VMX_EXIT_REASON_NAMES every name that exitReasonName gives, once', () => {
      const named = Array.from({ length: 128 }, (_, r) => r).flatMap((r) => {
        try {
          return [exitReasonName(r)];
        } catch {
          return [];
        }
      });
      expect(VMX_EXIT_REASON_NAMES).toEqual(named);
    });
  });

  describe('.injectException / .vmEntry', () => {
    it('delivers the injected #PF with its error code once, then nothing', () => {
      const v = createVmcs('shadow');
      vmx.injectException(v, PF_VECTOR, 6);
      expect(v.vmEntryIntrInfoField).toBe(0x80000b0e);
      const out = { errorCode: 0 };
      expect(vmx.vmEntry(v, out)).toBe(14);
      expect(out.errorCode).toBe(6);
      expect(vmx.vmEntry(v, out)).toBe(-1);
    });

    it('injects a vector without an error code with deliver-error-code clear', () => {
      const v = createVmcs('shadow');
      vmx.injectException(v, 6, 99);
      const out = { errorCode: 5 };
      expect(vmx.vmEntry(v, out)).toBe(6);
      expect(out.errorCode).toBe(0);
    });
  });

  describe('.setNestedRoot', () => {
    it('writes an EPTP with WB memory type and a 4-level walk', () => {
      const v = createVmcs('tdp');
      vmx.setNestedRoot(v, 0x12345000);
      expect(v.eptPointer).toBe(0x12345000 + 0x18 + 6);
      vmx.setNestedRoot(v, 0x12345000, { levels: 5, accessedDirty: true });
      expect(v.eptPointer).toBe(0x12345000 + 0x40 + 0x20 + 6);
    });
  });
});
