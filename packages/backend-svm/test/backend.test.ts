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
import { SvmBackend } from '../src/backend.js';
import {
  exitCodeName,
  SVM_EXIT_CODE_NAMES,
  INTERCEPT_CR0_READ,
  INTERCEPT_CR0_WRITE,
  INTERCEPT_CR3_READ,
  INTERCEPT_CR3_WRITE,
  INTERCEPT_CR4_READ,
  INTERCEPT_CR4_WRITE,
  INTERCEPT_INVLPG,
  MSR_EFER,
  VMEXIT_CR3_WRITE,
  VMEXIT_EXCP_BASE,
  VMEXIT_INVALID,
  VMEXIT_INVLPG,
  VMEXIT_MSR,
  VMEXIT_NPF,
} from '../src/constants.js';
import { createVmcb, Vmcb } from '../src/state.js';

const svm = new SvmBackend();

describe('SvmBackend', () => {
  describe('.exceptionExits', () => {
    it('intercepts #PF all or nothing: the same answer for every combination of the defined error-code bits (APM §15.12)', () => {
      // P, W/R, U/S, RSVD, I/D, PK, SS, SGX (bits 0-6 and 15): all 256 error codes, with the intercept off and on.
      const bits = [PFERR_PRESENT, PFERR_WRITE, PFERR_USER, PFERR_RSVD, PFERR_FETCH, PFERR_PK, PFERR_SS, PFERR_SGX];
      expect(bits.reduce((a, b) => a | b, 0)).toBe(PFERR_DEFINED);
      for (const on of [false, true]) {
        const v = new Vmcb();
        v.interceptExceptions = on ? 1 << PF_VECTOR : 0;
        const answers = new Set<boolean>();
        let codes = 0;
        for (let i = 0; i < 256; i++) {
          let pfec = 0;
          for (let k = 0; k < 8; k++) if ((i >>> k) & 1) pfec |= bits[k]!;
          answers.add(svm.exceptionExits(v, PF_VECTOR, pfec));
          codes++;
        }
        for (const pfec of [0xffffffff, 0x8000, 0x10000, 0x80000000]) answers.add(svm.exceptionExits(v, PF_VECTOR, pfec));
        expect(codes).toBe(256);
        expect([...answers]).toEqual([on]);
      }
    });

    it('ignores the error code for any 32-bit value and any intercept vector (property)', () => {
      fc.assert(
        fc.property(fc.nat({ max: 0xffffffff }), fc.nat({ max: 0xffffffff }), fc.integer({ min: 0, max: 31 }), (pfec, intercepts, vector) => {
          const v = new Vmcb();
          v.interceptExceptions = intercepts;
          expect(svm.exceptionExits(v, vector, pfec)).toBe(svm.exceptionExits(v, vector, 0));
          expect(svm.exceptionExits(v, vector, pfec)).toBe(Math.floor(intercepts / 2 ** vector) % 2 === 1);
        }),
      );
    });

    it('intercepts #PF under shadow paging and not under NPT', () => {
      expect(svm.exceptionExits(createVmcb('shadow'), PF_VECTOR, 0)).toBe(true);
      expect(svm.exceptionExits(createVmcb('tdp'), PF_VECTOR, PFERR_PRESENT)).toBe(false);
    });

    it('has no PageFaultFilter', () => {
      expect('setPfecMaskMatch' in svm).toBe(false);
    });
  });

  describe('.crWriteExits / .invlpgExits', () => {
    it('intercepts CR3 writes and INVLPG under shadow paging only; CR0/CR4 writes and EFER under both', () => {
      const s = createVmcb('shadow');
      const t = createVmcb('tdp');
      expect([svm.crWriteExits(s, 3, 0x1000), svm.invlpgExits(s)]).toEqual([true, true]);
      expect([svm.crWriteExits(t, 3, 0x1000), svm.invlpgExits(t)]).toEqual([false, false]);
      for (const v of [s, t]) expect([svm.crWriteExits(v, 0, 0), svm.crWriteExits(v, 4, 0), svm.crWriteExits(v, MSR_EFER, 0)]).toEqual([true, true, true]);
      s.interceptMisc1 &= ~INTERCEPT_INVLPG;
      expect(svm.invlpgExits(s)).toBe(false);
    });

    it('reads each CR intercept from its own bit of the CR intercept vector (APM §15.9)', () => {
      const v = new Vmcb();
      const cases: [number, number, number][] = [
        [0, INTERCEPT_CR0_READ, INTERCEPT_CR0_WRITE],
        [3, INTERCEPT_CR3_READ, INTERCEPT_CR3_WRITE],
        [4, INTERCEPT_CR4_READ, INTERCEPT_CR4_WRITE],
      ];
      for (const [cr, read, write] of cases) {
        expect([read, write]).toEqual([1 << cr, 1 << (16 + cr)]);
        v.interceptCr = write;
        expect(svm.crWriteExits(v, cr, 0)).toBe(true);
        v.interceptCr = read;
        expect(svm.crWriteExits(v, cr, 0)).toBe(false);
        v.interceptCr = ~(read | write);
        expect(svm.crWriteExits(v, cr, 0)).toBe(false);
      }
    });

    it('rejects a control register it has no rule for', () => {
      const v = createVmcb('shadow');
      expect(() => svm.crWriteExits(v, 8, 0)).toThrow(/SVM: no write-intercept rule for control register 8/);
    });
  });

  describe('exit construction', () => {
    it('reports a #PF as VMEXIT_EXCP_BASE+14 = 0x4E with the error code in EXITINFO1 and the address in EXITINFO2', () => {
      const hw = svm.exceptionExit(createVmcb('shadow'), PF_VECTOR, 0x6, 0x7fff_f000);
      expect(hw).toEqual({ backend: 'svm', code: 0x4e, name: 'VMEXIT_EXCP14', fields: { exitInfo1: 6, exitInfo2: 0x7fff_f000 } });
      expect(VMEXIT_EXCP_BASE + PF_VECTOR).toBe(0x4e);
    });

    it('reports VMEXIT_CR3_WRITE, VMEXIT_MSR (WRMSR) and VMEXIT_INVLPG (linear address in EXITINFO1)', () => {
      const v = createVmcb('shadow');
      expect(svm.crWriteExit(v, 3, 0x2000)).toMatchObject({ code: VMEXIT_CR3_WRITE, name: 'VMEXIT_CR3_WRITE', fields: { exitInfo1: 2 ** 63 } });
      expect(svm.crWriteExit(v, MSR_EFER, 0)).toMatchObject({ code: VMEXIT_MSR, name: 'VMEXIT_MSR', fields: { exitInfo1: 1 } });
      expect(svm.invlpgExit(v, 0x40_1000)).toMatchObject({ code: VMEXIT_INVLPG, name: 'VMEXIT_INVLPG', fields: { exitInfo1: 0x40_1000 } });
    });

    it('reports VMEXIT_NPF = 0x400 with the EXITINFO1 values that kvm-unit-tests x86/svm_npt.c expects', () => {
      const v = createVmcb('tdp');
      const f = new WalkResult();
      // write to a data page whose NPT pte is read-only: P|W|U|FINAL = 0x1_0000_0007
      Object.assign(f, { nestedGpa: 0x5000, nestedFinal: true, nestedCode: 7 });
      expect(svm.nestedFaultExit(v, f, 0x400000)).toEqual({
        backend: 'svm',
        code: VMEXIT_NPF,
        name: 'VMEXIT_NPF',
        fields: { exitInfo1: 0x1_0000_0007, exitInfo2: 0x5000 },
      });
      expect(svm.nestedFaultErrorCode(v)).toBe(0x1_0000_0007);
      // the guest page-table page made read-only: P|W|U|GUEST_PAGE = 0x2_0000_0007
      Object.assign(f, { nestedGpa: 0x3000, nestedFinal: false, nestedCode: 7 });
      expect(svm.nestedFaultExit(v, f, 0x400000).fields.exitInfo1).toBe(0x2_0000_0007);
      expect(svm.mmioExit(v, 0xfee00000, 0, ACC_WRITE).fields.exitInfo1).toBe(2 ** 32 + (PFERR_PRESENT | PFERR_RSVD | ACC_WRITE));
      expect(svm.mmioExit(createVmcb('shadow'), 0xfee00000, 0x1000, 0).code).toBe(0x4e);
    });

    it('lists in SVM_EXIT_CODE_NAMES every name that exitCodeName gives, once', () => {
      const named = Array.from({ length: 0x402 }, (_, c) => c - 1).flatMap((c) => {
        try {
          return [exitCodeName(c)];
        } catch {
          return [];
        }
      });
      expect([...SVM_EXIT_CODE_NAMES].sort()).toEqual(named.sort());
      expect(new Set(SVM_EXIT_CODE_NAMES).size).toBe(SVM_EXIT_CODE_NAMES.length);
    });

    it('names exit codes and rejects an unknown one', () => {
      expect([0x4e, 0x13, 0x79, 0x400].map(exitCodeName)).toEqual(['VMEXIT_EXCP14', 'VMEXIT_CR3_WRITE', 'VMEXIT_INVLPG', 'VMEXIT_NPF']);
      expect([0x00, 0x03, 0x04, 0x08, 0x10, 0x14, 0x18].map(exitCodeName)).toEqual([
        'VMEXIT_CR0_READ',
        'VMEXIT_CR3_READ',
        'VMEXIT_CR4_READ',
        'VMEXIT_CR8_READ',
        'VMEXIT_CR0_WRITE',
        'VMEXIT_CR4_WRITE',
        'VMEXIT_CR8_WRITE',
      ]);
      expect([0x40, 0x5f, 0x7c, VMEXIT_INVALID].map(exitCodeName)).toEqual(['VMEXIT_EXCP0', 'VMEXIT_EXCP31', 'VMEXIT_MSR', 'VMEXIT_INVALID']);
      expect(() => exitCodeName(0x3ff)).toThrow(/unknown SVM exit code 0x3ff/);
      expect(() => exitCodeName(0x3f)).toThrow(/unknown SVM exit code 0x3f/); // just below the exception family
      expect(() => exitCodeName(0x05)).toThrow(/unknown SVM exit code 0x5/); // CR5 does not exist
      expect(() => exitCodeName(-2)).toThrow(/unknown SVM exit code 0xfffffffffffffffe/); // EXITCODE is a 64-bit field (APM Vol. 2 §15.6);
    });
  });

  describe('.injectException / .vmEntry', () => {
    it('delivers EVENTINJ once, with the error code for #PF', () => {
      const v = createVmcb('shadow');
      svm.injectException(v, PF_VECTOR, 4);
      expect(v.eventInj).toBe(0x80000b0e);
      const out = { errorCode: 0 };
      expect(svm.vmEntry(v, out)).toBe(14);
      expect(out.errorCode).toBe(4);
      expect(svm.vmEntry(v, out)).toBe(-1);
    });
  });

  describe('.setNestedRoot', () => {
    it('sets nCR3 and NP_ENABLE', () => {
      const v = createVmcb('shadow');
      svm.setNestedRoot(v, 0x9000);
      expect([v.nCr3, v.npEnable, v.nptLevels]).toEqual([0x9000, true, 4]);
      svm.setNestedRoot(v, 0x9000, { levels: 5 });
      expect(v.nptLevels).toBe(5);
    });
  });
});
