import { CR4_PAE, CR4_PKE, CR4_SMAP, DirtyLog, EFER_NXE, GuestAbort, type Vcpu } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { ROLE_PKEYS_ANDNOT_WP } from '../src/roots.js';
import { A, D, P, setup, U, W, recordFaults, asUser } from './harness.js';

/*
 * Guest paging features under shadow paging where the guest's view once differed from the native CPU's: protection
 * keys with CR0.WP = 0, SMAP under the fast page fault, EFER.NXE in the page role. Each scenario states its exits.
 */

const USER = 0x40000000;
/** Protection key 1 in a leaf's high half (bits 62:59 -> bits 30:27). */
const KEY1 = 1 << 27;
/** PKRU.AD of key 1 (SDM Vol. 3A §4.6.2: AD = bit 2k). */
const PKRU_AD1 = 1 << 2;
/** XD, bit 63 of an entry = bit 31 of its high half. */
const XD = 1 << 31;
const PFERR_P = 1;
const PFERR_W = 2;
const PFERR_U = 4;
const PFERR_RSVD = 8;
const PFERR_PK = 0x20;
const PFERR_FETCH = 0x10;

/** `f()`'s value, or null when it took a #PF. */
function attempt(f: () => number | void): number | null {
  try {
    return f() ?? 0;
  } catch (e) {
    if (!(e instanceof GuestAbort)) throw e;
    return null;
  }
}

describe('ShadowMmu guest paging features', () => {
  describe('protection keys with CR0.WP = 0 (role pkeys_andnot_wp)', () => {
    it('does not let a kernel-only spte built while CR4.PKE = 0 escape PKRU.AD once the guest sets CR4.PKE', () => {
      const { h, pt, vcpu, mmu } = setup('long4', { wp: false });
      pt.map(USER, 0x900000, P | U | A | D, 1, KEY1); // a read-only user page with key 1
      h.reset();
      const faults = recordFaults(vcpu);
      // Exit 1: the supervisor store (allowed natively: WP = 0). No keys apply yet, so the CR0.WP trick
      // (paging_tmpl.h FNAME(page_fault)) builds a kernel-only writable spte: pf_fixed.
      vcpu.write(USER, 4, 5);
      // CR4.PKE = 1 (1 exit) and WRPKRU sets AD for key 1 (no exit). Natively a supervisor read of the user page
      // now faults P|PK. The vCPU's role gains pkeys_andnot_wp, so it runs on new roots: exit 2, the guest walk
      // faults, injected. Before the fix the role ignored keys: the read hit the kernel-only spte and returned 5.
      vcpu.movToCr4(CR4_PAE | CR4_PKE);
      vcpu.wrpkru(PKRU_AD1);
      expect(attempt(() => vcpu.read(USER, 4))).toBeNull();
      expect(faults).toEqual([PFERR_P | PFERR_PK]);
      expect(h.e('pf')).toBe(2);
      expect(h.e('cr4')).toBe(1);
      expect(h.c('pf_fixed')).toBe(1);
      expect(h.c('pf_guest')).toBe(1);
      expect(mmu.states[0]!.root!.role & ROLE_PKEYS_ANDNOT_WP).toBe(ROLE_PKEYS_ANDNOT_WP);
    });

    it('keeps a vCPU without CR4.PKE from sharing its kernel-only sptes with a vCPU that has it', () => {
      const { h, pt, machine } = setup('long4', { wp: false, vcpus: 2 });
      const [v0, v1] = machine.vcpus as [Vcpu, Vcpu];
      pt.map(USER, 0x900000, P | U | A | D, 1, KEY1);
      v0.movToCr4(CR4_PAE | CR4_PKE); // exit (cr4): vCPU 0 has keys, vCPU 1 has not
      v0.wrpkru(PKRU_AD1);
      h.reset();
      const faults = recordFaults(v0);
      // Exit 1: vCPU 1's supervisor store, the CR0.WP trick in vCPU 1's pages (no keys there): pf_fixed.
      v1.write(USER, 4, 5);
      // Exit 2: vCPU 0's supervisor read faults natively (PKRU.AD of key 1). Its pages have another role, so no
      // spte of vCPU 1 serves it: the guest walk faults, injected. Before the fix both vCPUs had one role and
      // the read returned 5.
      expect(attempt(() => v0.read(USER, 4))).toBeNull();
      expect(faults).toEqual([PFERR_P | PFERR_PK]);
      expect(h.e('pf')).toBe(2);
      expect(h.c('pf_fixed')).toBe(1);
      expect(h.c('pf_guest')).toBe(1);
      expect(v1.memory.read32(0x900000)).toBe(5);
    });

    it('applies a pte write of one vCPU to the pages of its own role only (update-spte compares pkeys_andnot_wp too)', () => {
      const { h, pt, machine, mmu } = setup('long4', { wp: false, vcpus: 2 });
      const [v0, v1] = machine.vcpus as [Vcpu, Vcpu];
      h.decider = (ev) => (ev.kind === 'pte-write' ? 'update-spte' : null);
      v0.movToCr4(CR4_PAE | CR4_PKE);
      const e = pt.map(USER, 0x900000, P | W | U | A | D);
      asUser(v0, () => v0.read(USER, 4)); // a level-1 page of vCPU 0's role (pkeys_andnot_wp)
      asUser(v1, () => v1.read(USER, 4)); // and one of vCPU 1's
      h.reset();
      // vCPU 1 rewrites the gpte (exit 1, emulated): both level-1 pages of the gfn get their spte cleared, and
      // only the page of vCPU 1's role is updated (mmu_pte_updated 1), as KVM's mmu_base_role_mask would.
      v1.write(e, 8, (0x901000 | P | W | U | A | D) >>> 0, 0);
      expect(h.e('pf')).toBe(1);
      expect(h.c('mmu_pte_write')).toBe(1);
      expect(h.c('mmu_pte_updated')).toBe(1);
      expect(mmu.indirectPagesOf(Math.floor(e / 4096)).length).toBe(2);
    });
  });

  describe('SMAP under the fast page fault (dirty logging)', () => {
    it('injects the SMAP #PF of a supervisor write to a writable user spte instead of calling it spurious (4 KiB page, indirect)', () => {
      const { h, pt, vcpu, mmu, machine } = setup('long4', { fastPageFault: true });
      const log = new DirtyLog(machine.memory);
      mmu.attachDirtyLog(log);
      pt.map(USER, 0x900000, P | W | U | A | D);
      log.enable(0);
      asUser(vcpu, () => vcpu.write(USER, 4, 1)); // the slow path maps USER writable (U=1, W=1)
      vcpu.movToCr4(CR4_PAE | CR4_SMAP);
      h.reset();
      const faults = recordFaults(vcpu);
      // Exit 1: the supervisor store with EFLAGS.AC = 0 faults P|W on the hardware walk of the shadow (SMAP),
      // whatever the spte's W. The fast path once took it for spurious (the spte allows the write) and resumed
      // into the same fault: 64 faults, a fault loop. Now the slow path's guest walk injects P|W, as natively.
      expect(attempt(() => vcpu.write(USER, 4, 2))).toBeNull();
      expect(faults).toEqual([PFERR_P | PFERR_W]);
      expect(h.e('pf')).toBe(1);
      expect(h.c('pf_guest')).toBe(1);
      expect(h.c('pf_spurious')).toBe(0);
      expect(machine.memory.read32(0x900000)).toBe(1);
    });

    it('neither sets W for nor marks dirty a supervisor write that SMAP forbids (2 MiB page, direct), and still fixes it fast with EFLAGS.AC = 1', () => {
      const { h, pt, vcpu, mmu, machine } = setup('long4', { fastPageFault: true });
      const log = new DirtyLog(machine.memory);
      mmu.attachDirtyLog(log);
      pt.map(0x40200000, 0xa00000, P | W | U | A | D, 2);
      log.enable(0);
      asUser(vcpu, () => vcpu.write(0x40200000, 4, 1));
      log.getDirtyLog(0); // harvest: the spte is write-protected again, MMU-writable (a fast-path candidate)
      vcpu.movToCr4(CR4_PAE | CR4_SMAP);
      h.reset();
      const faults = recordFaults(vcpu);
      // Exit 1: the supervisor store faults P|W (SMAP, and W=0). The fast path once set W and marked the page
      // dirty, and the retry faulted again (SMAP) forever. Now: the slow path, injected; nothing marked.
      expect(attempt(() => vcpu.write(0x40200000, 4, 2))).toBeNull();
      expect(faults).toEqual([PFERR_P | PFERR_W]);
      expect(DirtyLog.gfns(log.slotOf(0), log.getDirtyLog(0))).toEqual([]);
      // STAC: the same store is allowed. Exit 2: the fast path sets W (pf_fast) and marks the page dirty.
      vcpu.setAc(true);
      vcpu.write(0x40200000, 4, 3);
      expect(h.e('pf')).toBe(2);
      expect(h.c('pf_fast')).toBe(1);
      expect(h.c('pf_guest')).toBe(1);
      expect(DirtyLog.gfns(log.slotOf(0), log.getDirtyLog(0))).toEqual([0xa00]);
      expect(machine.memory.read32(0xa00000)).toBe(3);
    });
  });

  describe('EFER.NXE in the page role (efer_nx)', () => {
    it("gives no notrap sptes to a guest with EFER.NXE = 0: its fetch #PF has no I/D bit, the hardware's (NXE forced to 1) would", () => {
      const { h, pt, vcpu, mmu } = setup('long4'); // EFER.NXE = 0, CR4.SMEP = 0
      mmu.setNonPresentSptes(0xfffff001, 0xffffffff, 0, 0); // the bypass encoding, VMX's filter: P=0 faults bypass
      h.pfecMask = PFERR_P;
      h.pfecMatch = PFERR_P;
      pt.map(USER + 0x1000, 0x900000, P | W | U | A | D);
      asUser(vcpu, () => vcpu.read(USER + 0x1000, 4)); // exit: the level-1 page of USER's guest table is built
      h.reset();
      const faults = recordFaults(vcpu);
      // A user fetch at USER, whose gpte is not present. Natively the error code is U only: I/D is set only with
      // EFER.NXE = 1 or CR4.SMEP = 1 (SDM Vol. 3A §4.7). The shadow is walked with NXE = 1, so a notrap spte
      // there would fault U|I/D straight into the guest (0 exits). The page's sptes are all trap: exit 1 (P|RSVD),
      // the guest walk faults U, injected. (KVM's 2007 bypass_guest_pf ran the hardware with the host's NX too,
      // vmx.c update_transition_efer "NX is emulated", and would have let U|I/D through.)
      expect(attempt(() => asUser(vcpu, () => vcpu.fetch(USER, 1)))).toBeNull();
      expect(faults).toEqual([PFERR_U]);
      expect(h.e('pf')).toBe(1);
      expect(h.c('pf_bypassed')).toBe(0);
      expect(h.c('pf_guest')).toBe(1);
      // With EFER.NXE = 1 the hardware's error code is the guest's (U|I/D): notrap is allowed again and the
      // same fault bypasses (0 exits; the write to EFER exits, and the first fetch builds the new role's page).
      vcpu.writeEfer(vcpu.efer | EFER_NXE);
      asUser(vcpu, () => vcpu.read(USER + 0x1000, 4)); // exit 2: the level-1 page of the new role (efer_nx = 1)
      expect(attempt(() => asUser(vcpu, () => vcpu.fetch(USER, 1)))).toBeNull();
      expect(faults).toEqual([PFERR_U, PFERR_U | PFERR_FETCH]);
      expect(h.e('pf')).toBe(2);
      expect(h.c('pf_bypassed')).toBe(1);
    });

    it('faults P|U|RSVD on a gpte with XD after the guest clears EFER.NXE, as the SDM says (KVM forces efer_nx = 1 and would reuse the spte)', () => {
      const { h, pt, vcpu } = setup('long4', { nxe: true });
      pt.map(USER, 0x900000, P | W | U | A | D, 1, XD);
      expect(asUser(vcpu, () => vcpu.read(USER, 4))).toBe(0); // exit: the spte is built (NX)
      h.reset();
      const faults = recordFaults(vcpu);
      // EFER.NXE = 0 (1 exit): XD is now a reserved bit (SDM Vol. 3A §4.5.4, Table 4-20), so natively the read
      // faults P|U|RSVD. The role's efer_nx follows the guest, so the vCPU gets new roots: exit 1, the guest
      // walk faults, injected. KVM's kvm_init_shadow_mmu sets root_role.efer_nx = true for every guest and
      // would find the old page, whose spte lets the read through.
      vcpu.writeEfer(vcpu.efer & ~EFER_NXE);
      expect(attempt(() => asUser(vcpu, () => vcpu.read(USER, 4)))).toBeNull();
      expect(faults).toEqual([PFERR_P | PFERR_U | PFERR_RSVD]);
      expect(h.e('pf')).toBe(1);
      expect(h.c('pf_guest')).toBe(1);
    });
  });
});
