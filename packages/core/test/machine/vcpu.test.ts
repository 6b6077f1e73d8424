import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  CR0_PG,
  CR4_PAE,
  CR4_PCIDE,
  CR4_PGE,
  ACC_WRITE,
  FAULT_DELIVER,
  FAULT_RETRY,
  GuestAbort,
  Machine,
  MachineError,
  PFERR_USER,
  PFERR_WRITE,
  PF_VECTOR,
  GP_VECTOR,
  PT_ACCESSED,
  PT_DIRTY,
  type FaultAction,
  type MemslotSpec,
  type Vcpu,
} from '../../src/index.js';
import { NativeHooks } from '../../src/machine/hooks.js';
import { createEmulationOutcome, emulatePendingAccess } from '../../src/machine/emulate.js';
import { long4Machine, TestTables } from './tables.js';

describe('Vcpu', () => {
  describe('.write/.read', () => {
    it('stores and loads through the guest tables, then hits the TLB', () => {
      const { t, v, m } = long4Machine();
      t.map(0x400000, 0x200000);
      v.write(0x400010, 8, 0xdeadbeef, 0x1234);
      expect(m.memory.read32(0x200010)).toBe(0xdeadbeef);
      expect(v.read(0x400010, 8)).toBe(0xdeadbeef);
      expect(v.valueHi).toBe(0x1234);
      expect(v.read(0x400012, 2)).toBe(0xdead);
      // One walk for the write (it set D), then every access hit the TLB.
      expect(v.tlb.misses).toBe(1);
      expect(v.tlb.hits).toBe(2);
    });

    it('re-walks a write through an entry filled by a read, and sets D then (SDM Vol. 3A §4.8)', () => {
      const { t, v } = long4Machine();
      t.map(0x400000, 0x200000);
      v.read(0x400000, 4);
      const pte = t.pteAddr(0x400000);
      expect(t.get(pte) & PT_DIRTY).toBe(0);
      v.write(0x400000, 4, 1);
      expect(t.get(pte) & PT_DIRTY).toBe(PT_DIRTY);
      expect(v.tlb.misses).toBe(2);
    });

    it('refuses a load or store of 16 bytes (its value is at most 8 bytes; a vector store is a rep stos element) and one that crosses a page', () => {
      const { t, v, m } = long4Machine();
      t.map(0x400000, 0x200000);
      expect(() => v.write(0x400010, 16, 1, 2)).toThrow('an access of 16 bytes at 0x400010 crosses a page boundary or has an unsupported size');
      expect(() => v.read(0x400010, 16)).toThrow(RangeError);
      expect(() => v.write(0x400ffc, 8, 1, 2)).toThrow('an access of 8 bytes at 0x400ffc crosses a page boundary or has an unsupported size');
      expect(m.memory.read32(0x200010)).toBe(0); // nothing was stored
      v.repStos(0x400010, 1, 16, 1, 2); // rep stos takes 16-byte elements
      expect([m.memory.read32(0x200010), m.memory.read32(0x200014), m.memory.read32(0x200018), m.memory.read32(0x20001c)]).toEqual([1, 2, 1, 2]);
    });
  });

  describe('memslots (RAM, read-only RAM, holes)', () => {
    // RAM [0, 1 MiB) holds the tables; ROM [2 MiB, 2 MiB + 64 KiB); RAM [4 MiB, 5 MiB); the rest is holes
    // (MMIO). The RAM buffer holds the slots back to back: ROM at offset 1 MiB, the second RAM at 1 MiB + 64 KiB.
    const ROM = 0x200000;
    const HOLE = 0x300000;
    const RAM2 = 0x400000;
    const layout: MemslotSpec[] = [
      { base: 0, size: 0x100000 },
      { base: ROM, size: 0x10000, readonly: true },
      { base: RAM2, size: 0x100000 },
    ];
    /** A vCPU whose hooks record every MMIO access (gpa, access) and answer as native hardware does. */
    function slotMachine() {
      const r = long4Machine({ memslots: layout });
      const mmio: [number, number][] = [];
      r.v.hooks = new (class extends NativeHooks {
        override mmio(vc: Vcpu, gpa: number, access: number): FaultAction {
          mmio.push([gpa, access]);
          return super.mmio(vc, gpa, access);
        }
      })();
      return { ...r, mmio };
    }
    const VA_ROM = 0x600000;
    const VA_HOLE = 0x700000;
    const VA_RAM2 = 0x800000;

    it('places each slot at its own buffer offset', () => {
      const { t, v, m } = slotMachine();
      // Pages are backed on first write, each at its own RAM offset: the offset of a slot's page leads back to it.
      const offs = [m.memory.gpaToOffset(ROM), m.memory.gpaToOffset(RAM2 + 0x1234), m.memory.gpaToOffset(HOLE)];
      expect([m.memory.offsetToGpa(offs[0]!), m.memory.offsetToGpa(offs[1]!), offs[2]]).toEqual([ROM, RAM2 + 0x1234, -1]);
      t.map(VA_RAM2, RAM2 + 0x1000, 0x3);
      v.write(VA_RAM2 + 8, 8, 0xcafef00d, 0x5a5a5a5a);
      expect(m.memory.read32(RAM2 + 0x1008)).toBe(0xcafef00d);
      expect(m.memory.read32(RAM2 + 0x100c)).toBe(0x5a5a5a5a);
      expect(v.read(VA_RAM2 + 8, 4)).toBe(0xcafef00d);
    });

    it('reads ROM, and never lets a store into it, even after a read filled the TLB from a writable dirty pte', () => {
      const { t, v, m, mmio } = slotMachine();
      m.memory.write32(ROM + 0x10, 0x0badc0de);
      t.map(VA_ROM, ROM, 0x3 | PT_DIRTY); // P|W|D: the pte allows the store; the slot does not
      expect(v.read(VA_ROM + 0x10, 4)).toBe(0x0badc0de);
      // The read's TLB entry serves reads, not writes (KVM_MEM_READONLY: a write is MMIO, never RAM).
      expect(v.tlb.lookup(VA_ROM + 0x10, 0, 0)).toBeGreaterThanOrEqual(0);
      expect(v.tlb.lookup(VA_ROM + 0x10, ACC_WRITE, 0)).toBe(-1);
      v.write(VA_ROM + 0x10, 4, 0x11111111);
      v.write(VA_ROM + 0x10, 4, 0x22222222); // again: still no write permission cached
      v.repStos(VA_ROM + 0x20, 4, 8, 0x33333333, 0x44444444);
      expect(v.read(VA_ROM + 0x10, 4)).toBe(0x0badc0de);
      expect(m.memory.read32(ROM + 0x20)).toBe(0);
      // Each store went the MMIO way: 2 stores + 4 rep stos elements, all at the ROM's gpas, as writes.
      expect(mmio).toEqual([
        [ROM + 0x10, ACC_WRITE],
        [ROM + 0x10, ACC_WRITE],
        [ROM + 0x20, ACC_WRITE],
        [ROM + 0x28, ACC_WRITE],
        [ROM + 0x30, ACC_WRITE],
        [ROM + 0x38, ACC_WRITE],
      ]);
      // rep movs into ROM: each element is dropped too, its source read from RAM.
      t.map(VA_RAM2, RAM2, 0x3 | PT_DIRTY);
      v.write(VA_RAM2, 8, 0x55555555, 0x66666666);
      v.repMovs(VA_ROM + 0x40, VA_RAM2, 2, 4);
      expect(m.memory.read32(ROM + 0x40)).toBe(0);
      expect(mmio.length).toBe(8);
    });

    it("leaves the A and D flags of a page table in ROM as they are: the walk's flag updates go nowhere", () => {
      const { t, v, m } = slotMachine();
      const VA = 0xa00000;
      const idx = (level: number): number => Math.floor(VA / 2 ** (12 + 9 * (level - 1))) % 512;
      t.pteAddr(VA); // the PML4E, PDPTE and PDE for VA, in RAM
      let table = t.root;
      for (let l = 4; l > 2; l--) table = t.get(table + idx(l) * 8) & ~0xfff;
      const pde = table + idx(2) * 8;
      t.set(pde, ROM | 0x7, 0); // the page table is the ROM's first page
      const pte = ROM + idx(1) * 8;
      m.memory.write32(pte, (RAM2 | 0x7) >>> 0); // P|W|U, A = D = 0 (written as the ROM's contents)
      v.write(VA + 8, 4, 0x1234);
      expect(v.read(VA + 8, 4)).toBe(0x1234); // the store went to RAM2 through the ROM pte
      expect(m.memory.read32(RAM2 + 8)).toBe(0x1234);
      expect(t.get(pte)).toBe((RAM2 | 0x7) >>> 0); // neither A nor D in the ROM pte
      expect(t.get(pde) & PT_ACCESSED).toBe(PT_ACCESSED); // the PDE, in RAM, got its A
    });

    it('reads a hole as all ones and drops stores to it', () => {
      const { t, v, mmio } = slotMachine();
      t.map(VA_HOLE, HOLE, 0x3 | PT_DIRTY);
      expect(v.read(VA_HOLE + 4, 4)).toBe(0xffffffff);
      expect(v.read(VA_HOLE + 8, 8)).toBe(0xffffffff);
      expect(v.valueHi).toBe(0xffffffff);
      expect(v.read(VA_HOLE + 1, 1)).toBe(0xff);
      expect(v.read(VA_HOLE + 2, 2)).toBe(0xffff);
      v.write(VA_HOLE, 4, 7);
      expect(v.read(VA_HOLE, 4)).toBe(0xffffffff);
      // Nothing was cached for the hole: every access asked the hooks.
      expect(mmio).toEqual([
        [HOLE + 4, 0],
        [HOLE + 8, 0],
        [HOLE + 1, 0],
        [HOLE + 2, 0],
        [HOLE, ACC_WRITE],
        [HOLE, 0],
      ]);
    });
  });

  describe('exception delivery', () => {
    it('delivers #PF with CR2 and the error code at CPL 0, restores CPL, and re-executes the access', () => {
      const { t, v } = long4Machine();
      const seen: [number, number, number][] = [];
      v.setExceptionHandler(PF_VECTOR, (vc, vector, ec, cr2) => {
        seen.push([vector, ec, vc.cpl]);
        expect(cr2).toBe(0x400008);
        t.map(0x400000, 0x200000);
      });
      v.setCpl(3);
      v.write(0x400008, 4, 7);
      // A user write to an unmapped page: P=0, W=1, U=1 (SDM Vol. 3A §4.7).
      expect(seen).toEqual([[PF_VECTOR, PFERR_WRITE | PFERR_USER, 0]]);
      expect(v.cpl).toBe(3);
      expect(v.cr2).toBe(0x400008);
      expect(v.pageFaultsDelivered).toBe(1);
      expect(v.read(0x400008, 4)).toBe(7);
    });

    it('lets a handler abandon the access with GuestAbort', () => {
      const { v } = long4Machine();
      v.setExceptionHandler(PF_VECTOR, () => {
        throw new GuestAbort('SIGSEGV');
      });
      v.setCpl(3);
      expect(() => v.read(0x400000, 4)).toThrow(GuestAbort);
      expect(v.cpl).toBe(3);
    });

    it('is a triple fault when the guest has no handler', () => {
      const { v } = long4Machine();
      expect(() => v.read(0x400000, 4)).toThrow(MachineError);
    });

    it('raises #GP for a non-canonical address in 4-level paging (SDM Vol. 3A §3.3.7.1)', () => {
      const { v } = long4Machine();
      const gp: number[] = [];
      v.setExceptionHandler(GP_VECTOR, (_v, vec) => {
        gp.push(vec);
        throw new GuestAbort('SIGSEGV');
      });
      expect(() => v.read(2 ** 47, 4)).toThrow(GuestAbort);
      expect(gp).toEqual([GP_VECTOR]);
    });

    it('reports a fault loop instead of hanging when the hypervisor keeps answering retry', () => {
      const { v } = long4Machine();
      v.hooks = new (class extends NativeHooks {
        override exception(): FaultAction {
          return FAULT_RETRY;
        }
      })();
      expect(() => v.read(0x400000, 4)).toThrow(/fault loop/);
    });
  });

  describe('.movToCr3', () => {
    it('flushes non-global entries and keeps global ones with CR4.PGE (SDM Vol. 3A §4.10.4.1)', () => {
      const { t, v } = long4Machine();
      t.map(0x400000, 0x200000, 0x3 | 0x100); // global
      t.map(0x401000, 0x201000, 0x3);
      v.read(0x400000, 4);
      v.read(0x401000, 4);
      v.movToCr3(t.root);
      const misses = v.tlb.misses;
      v.read(0x400000, 4);
      expect(v.tlb.misses).toBe(misses);
      v.read(0x401000, 4);
      expect(v.tlb.misses).toBe(misses + 1);
    });

    it('keeps the entries of a PCID when bit 63 (no-flush) is set (SDM Vol. 3A §4.10.4.1)', () => {
      const { t, v } = long4Machine();
      v.movToCr4(CR4_PAE | CR4_PGE | CR4_PCIDE);
      v.movToCr3(t.root + 1);
      t.map(0x400000, 0x200000, 0x3);
      v.read(0x400000, 4);
      v.movToCr3(t.root + 2); // another PCID: its entries are flushed, PCID 1's stay
      v.movToCr3(t.root + 1, true);
      const misses = v.tlb.misses;
      v.read(0x400000, 4);
      expect(v.tlb.misses).toBe(misses);
      v.movToCr3(t.root + 1); // without no-flush: PCID 1's entries go
      v.read(0x400000, 4);
      expect(v.tlb.misses).toBe(misses + 1);
    });

    /** A PAE guest with paging on, and a PDPT page `bad` whose first PDPTE is present with bit 5 (reserved) set. */
    function paeWithBadPdpt(): { m: Machine; t: TestTables; v: Vcpu; bad: number } {
      const m = new Machine({ memoryBytes: 1024 * 1024 });
      const t = new TestTables(m.memory, 'pae');
      const v = m.vcpus[0]!;
      v.movToCr4(CR4_PAE);
      v.movToCr3(t.root);
      v.movToCr0(CR0_PG | 1);
      const bad = t.alloc();
      m.memory.write32(bad, 0x5000 | 1 | (1 << 5)); // bit 5 is reserved in a PDPTE
      return { m, t, v, bad };
    }

    it('raises #GP and leaves CR3 unchanged when a present PAE PDPTE has a reserved bit (SDM Vol. 3A §4.4.1)', () => {
      const { t, v, bad } = paeWithBadPdpt();
      const gp: number[] = [];
      v.setExceptionHandler(GP_VECTOR, (_v, vec) => gp.push(vec));
      v.movToCr3(bad);
      expect(gp).toEqual([GP_VECTOR]);
      expect(v.cr3).toBe(t.root);
    });

    it('asks the hooks first: a write that exits gets its #GP from the hypervisor, not from the hardware', () => {
      const { m, t, v, bad } = paeWithBadPdpt();
      const seen: [number, number, number][] = [];
      let answer: FaultAction = FAULT_DELIVER;
      v.hooks = new (class extends NativeHooks {
        override crWriteFault(vc: Vcpu, cr: number, value: number): FaultAction {
          seen.push([cr, value, vc.cr3]); // the register is already back to its old value
          if (answer === FAULT_RETRY) vc.raise(GP_VECTOR, 0, 0); // a hypervisor that injected the #GP itself
          return answer;
        }
      })();
      const gp: number[] = [];
      v.setExceptionHandler(GP_VECTOR, (_v, _vec, ec) => gp.push(ec));
      v.movToCr3(bad);
      answer = FAULT_RETRY;
      v.movToCr3(bad);
      expect(seen).toEqual([
        [3, bad, t.root],
        [3, bad, t.root],
      ]);
      expect(gp).toEqual([0, 0]); // one #GP(0) each time: delivered by the vCPU, then by the "hypervisor"
      expect(v.cr3).toBe(t.root);
      // MOV to CR4 that reloads the PDPTEs (PGE changes in PAE mode) from a bad table faults the same way.
      v.hooks = new NativeHooks();
      m.memory.write32(t.root, 0x5000 | 1 | (1 << 6));
      v.movToCr4(CR4_PAE | CR4_PGE);
      expect(gp).toEqual([0, 0, 0]);
      expect(v.cr4).toBe(CR4_PAE);
    });
  });

  describe(".noteGuestWalk / .takeGuestWalk (the emulator folds the hypervisor's guest walk)", () => {
    /** A vCPU with a store of 8 bytes to 0x400010 in flight, as a write-protect exit leaves it. */
    function inFlight() {
      const { t, v, m } = long4Machine();
      t.map(0x400000, 0x200000);
      v.pendingVa = 0x400010;
      v.pendingAccess = ACC_WRITE;
      v.pendingSize = 8;
      v.pendingLo = 0x11223344;
      v.pendingHi = 0x55667788;
      return { t, v, m };
    }

    it('gives the noted gpa once, for exactly the access in flight', () => {
      const { v } = inFlight();
      expect(v.takeGuestWalk()).toBe(-1);
      v.noteGuestWalk(0x400010, ACC_WRITE, 0x200010);
      expect(v.takeGuestWalk()).toBe(0x200010);
      expect(v.takeGuestWalk()).toBe(-1); // taken
      v.noteGuestWalk(0x400010, ACC_WRITE | PFERR_USER, 0x200010); // another access kind
      expect(v.takeGuestWalk()).toBe(-1);
      v.noteGuestWalk(0x400018, ACC_WRITE, 0x200018); // another address
      expect(v.takeGuestWalk()).toBe(-1);
      v.noteGuestWalk(0x400010, ACC_WRITE, 0x200010);
      v.clearGuestWalk(); // an exit started
      expect(v.takeGuestWalk()).toBe(-1);
    });

    it('lets the emulator store where the noted walk ended, with the same bytes and A/D bits as its own walk', () => {
      // Emulated twice on two machines alike: once with its own walk, once folded into a noted walk (made by
      // the walker here, as the MMU makes it, so that A/D are already set when the emulator runs).
      const own = inFlight();
      const folded = inFlight();
      const outOwn = emulatePendingAccess(own.v, null, createEmulationOutcome());
      expect(outOwn.folded).toBe(false);
      folded.v.read(0x400010, 8); // fills A on every level (a read leaves D clear)
      const pte = folded.t.pteAddr(0x400000);
      folded.m.memory.write32(pte, folded.m.memory.read32(pte) | PT_DIRTY); // what the MMU's write walk sets
      folded.v.pendingVa = 0x400010;
      folded.v.pendingAccess = ACC_WRITE;
      folded.v.pendingSize = 8;
      folded.v.pendingLo = 0x11223344;
      folded.v.pendingHi = 0x55667788;
      folded.v.noteGuestWalk(0x400010, ACC_WRITE, 0x200010);
      const outFolded = emulatePendingAccess(folded.v, null, createEmulationOutcome());
      expect(outFolded.folded).toBe(true);
      expect(outFolded.gpa).toBe(outOwn.gpa);
      expect(outFolded.action).toBe(outOwn.action);
      expect(folded.m.memory.read32(0x200010)).toBe(0x11223344);
      expect(folded.m.memory.read32(0x200014)).toBe(0x55667788);
      expect(folded.m.memory.read32(pte)).toBe(own.m.memory.read32(own.t.pteAddr(0x400000)));
    });
  });

  describe('.repStos', () => {
    it('translates once per page', () => {
      const { t, v, m } = long4Machine();
      for (let i = 0; i < 4; i++) t.map(0x400000 + i * 4096, 0x200000 + i * 4096, 0x3 | PT_DIRTY);
      v.repStos(0x400000, 2048, 8, 0x11111111, 0x22222222);
      expect(v.tlb.misses).toBe(4);
      expect(m.memory.read32(0x200000 + 3 * 4096 + 4088)).toBe(0x11111111);
      expect(m.memory.read32(0x200000 + 3 * 4096 + 4092)).toBe(0x22222222);
      expect(v.accesses).toBe(2048);
    });
  });

  describe('.repMovs', () => {
    it('copies across pages with one translation per page on each side', () => {
      const { t, v, m } = long4Machine();
      for (let i = 0; i < 2; i++) {
        t.map(0x400000 + i * 4096, 0x200000 + i * 4096, 0x3 | PT_DIRTY);
        t.map(0x600000 + i * 4096, 0x300000 + i * 4096, 0x3 | PT_DIRTY);
      }
      for (let i = 0; i < 2048; i++) m.memory.write32(0x200000 + i * 4, i);
      v.repMovs(0x600000, 0x400000, 2048, 4);
      for (let i = 0; i < 2048; i += 97) expect(m.memory.read32(0x300000 + i * 4)).toBe(i);
      expect(v.tlb.misses).toBe(4);
    });
  });

  describe('TLB independence (property)', () => {
    // The TLB is a cache: whatever it holds, the guest must see the same results. Run the same random
    // sequence twice, once with a normal TLB and once flushing it before every access, and compare every
    // value read, every fault delivered and the final memory.
    it('gives the same loads, faults and memory whether or not the TLB holds entries', () => {
      const op = fc.record({
        page: fc.integer({ min: 0, max: 15 }),
        off: fc.integer({ min: 0, max: 511 }),
        kind: fc.constantFrom('read', 'write', 'unmap', 'protect', 'cr3', 'user', 'kernel'),
        value: fc.integer({ min: 0, max: 0xffffffff }),
      });
      fc.assert(
        fc.property(fc.array(op, { minLength: 1, maxLength: 60 }), (ops) => {
          const run = (flushEveryAccess: boolean) => {
            const { t, v, m } = long4Machine();
            const log: number[] = [];
            for (let p = 0; p < 16; p += 2) t.map(0x400000 + p * 4096, 0x200000 + p * 4096, 0x7);
            v.setExceptionHandler(PF_VECTOR, (_vc: Vcpu, _vec, ec, cr2) => {
              log.push(-1, ec, cr2);
              const page = Math.floor((cr2 - 0x400000) / 4096);
              // The guest maps the page writable for everyone, then re-executes.
              t.map(0x400000 + page * 4096, 0x200000 + page * 4096, 0x7);
              v.invlpg(cr2);
            });
            for (const o of ops) {
              const va = 0x400000 + o.page * 4096 + o.off * 8;
              if (flushEveryAccess) v.tlb.flushAll(false);
              switch (o.kind) {
                case 'read':
                  log.push(v.read(va, 8), v.valueHi);
                  break;
                case 'write':
                  v.write(va, 8, o.value, o.page);
                  break;
                case 'unmap': // the guest clears the PTE and flushes, as an OS must
                  t.set(t.pteAddr(va), 0, 0);
                  v.invlpg(va);
                  break;
                case 'protect':
                  t.set(t.pteAddr(va), (0x200000 + o.page * 4096) | 0x5, 0);
                  v.invlpg(va);
                  break;
                case 'cr3':
                  v.movToCr3(t.root);
                  break;
                case 'user':
                  v.setCpl(3);
                  break;
                case 'kernel':
                  v.setCpl(0);
                  break;
              }
            }
            return { log, digest: m.memory.digest() };
          };
          expect(run(true)).toEqual(run(false));
        }),
        { numRuns: 150 },
      );
    });
  });
});
