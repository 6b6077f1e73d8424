import { CR0_PG, CR0_WP, CR4_PAE, CR4_PGE, EFER_LME, EFER_NXE, GuestMemory, Machine, PAGE_SIZE, type MemslotSpec } from '../../src/index.js';

/**
 * A tiny page-table builder for tests: 4-level (long4), PAE or 32-bit tables in guest memory, built with
 * plain stores into RAM (not through a vCPU). Frames come from a bump allocator from `firstFrame`.
 */
export class TestTables {
  next: number;
  readonly root: number;
  constructor(
    readonly mem: GuestMemory,
    readonly mode: 'legacy32' | 'pae' | 'long4',
    firstFrame = 0x1000,
  ) {
    this.next = firstFrame;
    this.root = this.alloc();
    if (mode === 'pae') {
      // The root is the 32-byte PDPT; give it four page directories.
      for (let i = 0; i < 4; i++) this.set(this.root + i * 8, this.alloc() | 1, 0);
    }
  }

  alloc(): number {
    const f = this.next;
    this.next += PAGE_SIZE;
    for (let a = f; a < f + PAGE_SIZE; a += 4) this.mem.write32(a, 0);
    return f;
  }

  set(pa: number, lo: number, hi: number): void {
    this.mem.write32(pa, lo >>> 0);
    if (this.mode !== 'legacy32') this.mem.write32(pa + 4, hi >>> 0);
  }

  get(pa: number): number {
    return this.mem.read32(pa);
  }

  /** The physical address of the level-1 entry for `va`, creating intermediate tables with `upper` flags. */
  pteAddr(va: number, upper = 0x7): number {
    const esz = this.mode === 'legacy32' ? 4 : 8;
    const idx = (level: number): number => {
      if (this.mode === 'legacy32') return level === 2 ? Math.floor(va / 2 ** 22) % 1024 : Math.floor(va / PAGE_SIZE) % 1024;
      return Math.floor(va / 2 ** (12 + 9 * (level - 1))) % 512;
    };
    let table = this.root;
    const top = this.mode === 'legacy32' ? 2 : this.mode === 'pae' ? 3 : 4;
    for (let level = top; level > 1; level--) {
      const ea = table + idx(level) * esz;
      if (this.mode === 'pae' && level === 3) {
        table = this.get(ea) & ~0xfff;
        continue;
      }
      let e = this.get(ea);
      if ((e & 1) === 0) {
        e = this.alloc() | upper;
        this.set(ea, e, 0);
      }
      table = e & ~0xfff;
    }
    return table + idx(1) * esz;
  }

  map(va: number, pa: number, flags = 0x7): void {
    this.set(this.pteAddr(va), (pa | flags) >>> 0, 0);
  }
}

/** Guest-physical 32-bit loads and stores on `mem` (the DataView calls tests used on the flat RAM buffer; little-endian only). */
export function ramView(mem: GuestMemory): { getUint32(pa: number, le: true): number; setUint32(pa: number, value: number, le: true): void } {
  return {
    getUint32: (pa) => mem.read32(pa),
    setUint32: (pa, value) => mem.write32(pa, value >>> 0),
  };
}

/** Writes `bytes` (whole pages) into guest RAM from guest-physical 0. */
export function loadRam(mem: GuestMemory, bytes: Uint8Array): void {
  for (let a = 0; a < bytes.byteLength; a += PAGE_SIZE) {
    const page = bytes.subarray(a, a + PAGE_SIZE);
    if (page.every((b) => b === 0)) continue; // a page never written reads as zeros already
    const off = mem.gpaToOffset(a);
    mem.u8.set(page, off);
  }
}

/** The contents of guest RAM, slot by slot in guest-physical order (pages never written read as zeros). */
export function ramBytes(mem: GuestMemory): Buffer {
  const out = Buffer.alloc(mem.size);
  let at = 0;
  for (const s of mem.slots) {
    for (let a = s.baseGfn * PAGE_SIZE, end = a + s.pages * PAGE_SIZE; a < end; a += PAGE_SIZE, at += PAGE_SIZE) {
      const off = mem.readOffset(a);
      out.set(mem.u8.subarray(off, off + PAGE_SIZE), at);
    }
  }
  return out;
}

/** A machine whose vCPU 0 runs 4-level paging (NXE, PGE, CR0.WP) on a fresh TestTables root. */
export function long4Machine(opts: { tlbEntries?: number; memslots?: MemslotSpec[] } = {}) {
  const m = new Machine({ memoryBytes: 4 * 1024 * 1024, tlbEntries: opts.tlbEntries, memslots: opts.memslots });
  const t = new TestTables(m.memory, 'long4');
  const v = m.vcpus[0]!;
  v.writeEfer(EFER_LME | EFER_NXE);
  v.movToCr4(CR4_PAE | CR4_PGE);
  v.movToCr3(t.root);
  v.movToCr0(CR0_PG | CR0_WP | 1);
  return { m, t, v };
}
