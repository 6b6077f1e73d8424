import { ACC_WRITE, PFERR_PRESENT, PFERR_RSVD, PFERR_WRITE, PF_VECTOR } from '@vmexit/core';
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
  MSR_EFER,
  SECONDARY_EXEC_ENABLE_EPT,
} from '../src/constants.js';
import { createVmcs, Vmcs } from '../src/state.js';

const vmx = new VmxBackend();

/** The SDM's sentence, written out as a case analysis (independently of the XOR in the backend). */
function sdmRule(eb14: boolean, pfec: number, mask: number, match: number): boolean {
  if ((pfec & mask) === match) return eb14; // "the specification of bit 14 in the exception bitmap is followed"
  return !eb14; // "the meaning of that bit is reversed"
}

function vmcsWith(eb14: boolean, mask: number, match: number): Vmcs {
  const v = new Vmcs();
  v.exceptionBitmap = eb14 ? 1 << PF_VECTOR : 0;
  vmx.setPfecMaskMatch(v, mask, match);
  return v;
}

describe('VmxBackend', () => {
  describe('.exceptionExits', () => {
    it('follows SDM Vol. 3C §25.6.3 for every combination of the six error-code bits, PFEC_MASK, PFEC_MATCH and bit 14', () => {
      // P, W/R, U/S, RSVD, I/D, PK: 64 error codes x 64 masks x 64 matches x 2 = 524,288 cases.
      let exits = 0;
      for (const eb14 of [false, true]) {
        for (let mask = 0; mask < 64; mask++) {
          for (let match = 0; match < 64; match++) {
            const v = vmcsWith(eb14, mask, match);
            for (let pfec = 0; pfec < 64; pfec++) {
              const got = vmx.exceptionExits(v, PF_VECTOR, pfec);
              if (got !== sdmRule(eb14, pfec, mask, match)) throw new Error(`eb14=${eb14} mask=${mask} match=${match} pfec=${pfec}: got ${got}`);
              if (got) exits++;
            }
          }
        }
      }
      // With eb14 = 1 an exit happens iff (pfec & mask) == match; with eb14 = 0 iff not: exactly half of all cases.
      expect(exits).toBe(64 * 64 * 64);
    });

    it('agrees with the rule for arbitrary 32-bit error codes, masks and matches', () => {
      fc.assert(
        fc.property(fc.boolean(), fc.nat({ max: 0xffffffff }), fc.nat({ max: 0xffffffff }), fc.nat({ max: 0xffffffff }), (eb14, pfec, mask, match) => {
          expect(vmx.exceptionExits(vmcsWith(eb14, mask, match), PF_VECTOR, pfec)).toBe(sdmRule(eb14, pfec, mask, match));
        }),
      );
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

  describe('.crReadExits / .invlpgExits', () => {
    it('exit on MOV from CR3 and INVLPG under shadow paging, not under EPT', () => {
      const s = createVmcs('shadow');
      const t = createVmcs('tdp');
      expect([vmx.crReadExits(s, 3), vmx.invlpgExits(s)]).toEqual([true, true]);
      expect([vmx.crReadExits(t, 3), vmx.invlpgExits(t)]).toEqual([false, false]);
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
      expect(vmx.crReadExit(v, 3)).toMatchObject({ code: 28, fields: { exitQualification: 0x13 } });
      expect(vmx.crWriteExit(v, MSR_EFER, 0)).toMatchObject({ code: EXIT_REASON_MSR_WRITE, name: 'MSR_WRITE' });
      expect(vmx.invlpgExit(v, 0x40_0000)).toMatchObject({ code: EXIT_REASON_INVLPG, name: 'INVLPG', fields: { exitQualification: 0x40_0000 } });
    });

    it('describes EPT violations (48) with the qualification bits and misconfigurations (49)', () => {
      const v = createVmcs('tdp');
      // a write to a present, read-only gpa on the final translation: W (bit 1) | R (bit 3) | GVA valid (7) | final (8)
      const hw = vmx.nestedFaultExit(v, 0x1234000, 0x400000, 2 ** 32 + (PFERR_PRESENT | ACC_WRITE));
      expect(hw).toMatchObject({ code: EXIT_REASON_EPT_VIOLATION, name: 'EPT_VIOLATION', fields: { exitQualification: 0x18a, guestPhysicalAddress: 0x1234000 } });
      // a read of a not-present gpa during the guest's walk: R (bit 0) | GVA valid, bit 8 clear
      expect(vmx.nestedFaultExit(v, 0x2000, 0x400000, 2 ** 33).fields.exitQualification).toBe(0x81);
      expect(vmx.nestedFaultExit(v, 0x2000, 0x400000, 2 ** 32 + (PFERR_PRESENT | PFERR_RSVD))).toMatchObject({ code: EXIT_REASON_EPT_MISCONFIG, name: 'EPT_MISCONFIG' });
      expect(vmx.mmioExit(v, 0xfee00000, 0x1000, 0).code).toBe(EXIT_REASON_EPT_MISCONFIG);
      expect(vmx.mmioExit(createVmcs('shadow'), 0xfee00000, 0x1000, ACC_WRITE).fields.vmExitIntrErrorCode).toBe(PFERR_PRESENT | PFERR_RSVD | ACC_WRITE);
    });

    it('names every reason it knows and rejects an unknown one', () => {
      expect([0, 14, 28, 48, 49].map(exitReasonName)).toEqual(['EXCEPTION_NMI', 'INVLPG', 'CR_ACCESS', 'EPT_VIOLATION', 'EPT_MISCONFIG']);
      expect(() => exitReasonName(77)).toThrow(/unknown VMX exit reason 77/);
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
    });
  });
});
