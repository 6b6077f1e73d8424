import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  CR0_PG,
  CR0_WP,
  CR4_PAE,
  CR4_PCIDE,
  CR4_PGE,
  EFER_LME,
  EFER_NXE,
  FAULT_RETRY,
  GuestAbort,
  Machine,
  MachineError,
  NativeHooks,
  PFERR_USER,
  PFERR_WRITE,
  PF_VECTOR,
  GP_VECTOR,
  PT_DIRTY,
  type FaultAction,
  type Vcpu,
} from '../../src/index.js';
import { TestTables } from './tables.js';

function long4Machine(opts: { tlbEntries?: number } = {}) {
  const m = new Machine({ memoryBytes: 4 * 1024 * 1024, tlbEntries: opts.tlbEntries });
  const t = new TestTables(m.memory, 'long4');
  const v = m.vcpus[0]!;
  v.writeEfer(EFER_LME | EFER_NXE);
  v.movToCr4(CR4_PAE | CR4_PGE);
  v.movToCr3(t.root);
  v.movToCr0(CR0_PG | CR0_WP | 1);
  return { m, t, v };
}

describe('Vcpu', () => {
  describe('.write/.read', () => {
    it('stores and loads through the guest tables, then hits the TLB', () => {
      const { t, v, m } = long4Machine();
      t.map(0x400000, 0x200000);
      v.write(0x400010, 8, 0xdeadbeef, 0x1234);
      expect(m.memory.view.getUint32(0x200010, true)).toBe(0xdeadbeef);
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

    it('raises #GP and leaves CR3 unchanged when a present PAE PDPTE has a reserved bit (SDM Vol. 3A §4.4.1)', () => {
      const m = new Machine({ memoryBytes: 1024 * 1024 });
      const t = new TestTables(m.memory, 'pae');
      const v = m.vcpus[0]!;
      v.movToCr4(CR4_PAE);
      v.movToCr3(t.root);
      v.movToCr0(CR0_PG | 1);
      const bad = t.alloc();
      m.memory.view.setUint32(bad, 0x5000 | 1 | (1 << 5), true); // bit 5 is reserved in a PDPTE
      const gp: number[] = [];
      v.setExceptionHandler(GP_VECTOR, (_v, vec) => gp.push(vec));
      v.movToCr3(bad);
      expect(gp).toEqual([GP_VECTOR]);
      expect(v.cr3).toBe(t.root);
    });
  });

  describe('.repStos', () => {
    it('translates once per page', () => {
      const { t, v, m } = long4Machine();
      for (let i = 0; i < 4; i++) t.map(0x400000 + i * 4096, 0x200000 + i * 4096, 0x3 | PT_DIRTY);
      v.repStos(0x400000, 2048, 8, 0x11111111, 0x22222222);
      expect(v.tlb.misses).toBe(4);
      expect(m.memory.view.getUint32(0x200000 + 3 * 4096 + 4088, true)).toBe(0x11111111);
      expect(m.memory.view.getUint32(0x200000 + 3 * 4096 + 4092, true)).toBe(0x22222222);
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
      for (let i = 0; i < 2048; i++) m.memory.view.setUint32(0x200000 + i * 4, i, true);
      v.repMovs(0x600000, 0x400000, 2048, 4);
      for (let i = 0; i < 2048; i += 97) expect(m.memory.view.getUint32(0x300000 + i * 4, true)).toBe(i);
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
