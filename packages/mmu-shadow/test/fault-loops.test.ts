import { CR0_PG, CR4_PAE, CR4_PKE, CR4_PSE, GuestAbort, Machine, type Vcpu } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { HOST_GFN_LIMIT } from '../src/context.js';
import { ShadowMmu } from '../src/index.js';
import { A, D, GuestTables, Harness, P, setup, U, W, recordFaults } from './harness.js';

/*
 * The guest accesses that used to fault forever under shadow paging (a MachineError fault-loop: 64 faults in a
 * row) where the native CPU completes the access or faults once. Each scenario states its exits.
 */

const USER = 0x40000000;
/** Protection key 1 in a leaf's high half (bits 62:59 -> bits 30:27). */
const KEY1 = 1 << 27;
/** PKRU bits of key 1 (SDM Vol. 3A §4.6.2: AD = bit 2k, WD = bit 2k + 1). */
const PKRU_AD1 = 1 << 2;
const PKRU_WD1 = 1 << 3;
const PFERR_P = 1;
const PFERR_W = 2;
const PFERR_PK = 0x20;

function userRead(vcpu: Vcpu, va: number): number {
  vcpu.setCpl(3);
  try {
    return vcpu.read(va, 4);
  } finally {
    vcpu.setCpl(0);
  }
}

function tryAccess(f: () => unknown): void {
  try {
    f();
  } catch (e) {
    if (!(e instanceof GuestAbort)) throw e;
  }
}

describe('ShadowMmu fault path: no fault loops', () => {
  describe('protection keys with CR0.WP=0 (SDM Vol. 3A §4.6.2)', () => {
    for (const level of [1, 2] as const) {
      it(`lets a supervisor write to a user page whose key has PKRU.WD set complete (${level === 1 ? '4 KiB' : '2 MiB'} page), by emulation`, () => {
        const { h, pt, vcpu } = setup('long4', { wp: false });
        vcpu.movToCr4(CR4_PAE | CR4_PKE);
        vcpu.wrpkru(PKRU_WD1);
        pt.map(USER, level === 1 ? 0x900000 : 0xa00000, P | W | U | A | D, level, KEY1);
        h.reset();
        const faults = recordFaults(vcpu);
        // 1. Supervisor store, no spte yet: #PF exit 1. The guest walk allows it (WP=0: WD does not stop
        //    supervisor writes), but a user spte would take P|W|PK under the hardware's WP=1 and a kernel-only
        //    one would escape PKRU.AD: emulated, no spte.
        vcpu.write(USER + 8, 4, 5);
        // 2. The same again: exit 2, emulated.
        vcpu.write(USER + 12, 4, 6);
        // 3. A user read (keys' WD does not stop reads): exit 3, the spte is built (U=1, W=1, key 1).
        expect(userRead(vcpu, USER + 8)).toBe(5);
        // 4. The supervisor store now hits that spte: the hardware (WP=1) faults P|W|PK, exit 4, emulated.
        vcpu.write(USER + 8, 4, 7);
        expect(vcpu.memory.read32((level === 1 ? 0x900000 : 0xa00000) + 8)).toBe(7);
        expect(vcpu.memory.read32((level === 1 ? 0x900000 : 0xa00000) + 12)).toBe(6);
        expect(faults).toEqual([]);
        expect(h.e('pf')).toBe(4);
        expect(h.c('pf_emulate')).toBe(3);
        expect(h.c('pf_fixed')).toBe(1);
      });
    }

    it('still faults once (P|W|PK) when CR0.WP=1, as the native CPU does', () => {
      const { h, pt, vcpu } = setup('long4');
      vcpu.movToCr4(CR4_PAE | CR4_PKE);
      vcpu.wrpkru(PKRU_WD1);
      pt.map(USER, 0x900000, P | W | U | A | D, 1, KEY1);
      h.reset();
      const faults = recordFaults(vcpu);
      // Exit 1: the guest walk faults too (WD with WP=1): injected, the guest sees it once.
      tryAccess(() => vcpu.write(USER, 4, 5));
      expect(faults).toEqual([PFERR_P | PFERR_W | PFERR_PK]);
      expect(h.e('pf')).toBe(1);
      expect(h.c('pf_guest')).toBe(1);
    });

    it('emulates a WP=0 supervisor write to a read-only user page under CR4.PKE, so that a later PKRU.AD still stops supervisor reads', () => {
      const { h, pt, vcpu } = setup('long4', { wp: false });
      vcpu.movToCr4(CR4_PAE | CR4_PKE);
      pt.map(USER, 0x900000, P | U | A | D, 1, KEY1);
      h.reset();
      const faults = recordFaults(vcpu);
      // Exit 1: allowed by the guest (WP=0); a kernel-only writable spte (the CR0.WP trick) would ignore keys.
      vcpu.write(USER, 4, 5);
      expect(vcpu.memory.read32(0x900000)).toBe(5);
      // WRPKRU sets AD for key 1 (no exit). A supervisor read of the user page must now fault with P|PK:
      // exit 2, the guest walk faults, injected.
      vcpu.wrpkru(PKRU_AD1);
      tryAccess(() => vcpu.read(USER, 4));
      expect(faults).toEqual([PFERR_P | PFERR_PK]);
      expect(h.e('pf')).toBe(2);
      expect(h.c('pf_emulate')).toBe(1);
      expect(h.c('pf_guest')).toBe(1);
    });
  });

  describe('guest-physical addresses beyond the host MAXPHYADDR', () => {
    /** A PAE guest with MAXPHYADDR 52, RAM at 0..16 MiB and `extra` memslots; tables from 1 MiB. */
    function paeGuest(extra: { base: number; size: number }[]) {
      const machine = new Machine({ memoryBytes: 16 << 20, memslots: [{ base: 0, size: 16 << 20 }, ...extra], vcpus: 1, maxPhyAddr: 52 });
      const mmu = new ShadowMmu();
      const h = new Harness(machine, mmu);
      mmu.init(h);
      const pt = new GuestTables(machine, 'pae');
      for (let va = 0; va < 0x400000; va += 4096) pt.map(va, va, P | W);
      const vcpu = machine.vcpus[0]!;
      mmu.attachVcpu(vcpu);
      vcpu.hooks = h;
      vcpu.movToCr4(CR4_PAE | CR4_PSE);
      vcpu.movToCr3(pt.root);
      vcpu.movToCr0(CR0_PG | 1);
      h.reset();
      return { machine, mmu, h, pt, vcpu };
    }
    const BIT51_HI = 1 << 19; // bit 51 in the high half

    it('sends an access to a gpa with bit 51 set and no memslot to user space as MMIO (open bus), once per access', () => {
      const { h, pt, vcpu } = paeGuest([]);
      pt.map(USER, 0x5000, P | W | U | A | D, 1, BIT51_HI); // gpa 2^51 + 0x5000: outside every memslot
      const faults = recordFaults(vcpu);
      // Each access: a #PF exit (the spte is not present), the guest walk succeeds, no memslot: MMIO, no spte.
      expect(userRead(vcpu, USER)).toBe(0xffffffff);
      expect(userRead(vcpu, USER + 4)).toBe(0xffffffff);
      vcpu.write(USER, 4, 1);
      expect(faults).toEqual([]);
      expect(h.e('pf')).toBe(3);
      expect(h.e('mmio')).toBe(3);
      expect(h.c('pf_fixed')).toBe(0);
    });

    it('emulates accesses to RAM the host cannot map (a memslot at 2^51), never building an spte with reserved address bits', () => {
      const base = 2 ** 51;
      expect(base / 4096).toBeGreaterThanOrEqual(HOST_GFN_LIMIT);
      const { h, pt, vcpu, machine } = paeGuest([{ base, size: 4096 }]);
      pt.map(USER, 0, P | W | U | A | D, 1, BIT51_HI);
      // The first 8 gptes around it are present and accessed too: the prefetch would map them if it could.
      for (let i = 1; i < 8; i++) pt.map(USER + i * 4096, 0x600000 + i * 4096, P | W | U | A | D);
      const faults = recordFaults(vcpu);
      // Store then load: two #PF exits, both emulated on guest RAM at 2^51 (the emulator walks the guest's tables).
      vcpu.setCpl(3);
      vcpu.write(USER + 16, 4, 0x1234);
      vcpu.setCpl(0);
      expect(userRead(vcpu, USER + 16)).toBe(0x1234);
      expect(machine.memory.read32(base + 16)).toBe(0x1234);
      expect(faults).toEqual([]);
      expect(h.e('pf')).toBe(2);
      expect(h.c('pf_emulate')).toBe(2);
      expect(h.c('pf_fixed')).toBe(0);
    });
  });
});
