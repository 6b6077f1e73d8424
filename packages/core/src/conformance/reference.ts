import { ACC_FETCH, ACC_USER, ACC_WRITE } from '../arch/constants.js';
import type { AccessOutcome, VectorMachine, VectorMachineFactory } from './machine.js';
import type { ConformanceVector } from './vector.js';

/*
 * A second, independent reading of SDM Vol. 3A ch. 4 ("Paging"), as the oracle of generated vectors: the
 * architectural walker (paging/walker.ts) is the model under test, so a generated vector's expectation must
 * not come from it (a vector whose `expect` is the walker's own outcome passes whatever the walker does).
 *
 * It shares no code with the walker and is written for reading, not speed: BigInt entries, one loop over the
 * levels of a table of level descriptors, and the access-rights rules of §4.6.1 spelt out case by case as the
 * SDM lists them (supervisor/user access x supervisor-mode/user-mode address x read/write/fetch). What it
 * models, and the walker must match:
 * - §4.3 32-bit paging (4 KiB pages; 4 MiB pages with CR4.PSE, PSE-36 with M = min(MAXPHYADDR, 40));
 *   §4.4 PAE paging (PDPTE registers, loaded at CR3 load; a present PDPTE with a reserved bit makes the load
 *   a #GP); §4.5 4-level and 5-level paging (1 GiB and 2 MiB pages, canonical addresses).
 * - Reserved bits (§4.3 Table 4-4, §4.4.2 Tables 4-8..4-11, §4.5.4 Tables 4-14..4-20).
 * - Access rights (§4.6.1) with CR0.WP, CR4.SMEP, CR4.SMAP with EFLAGS.AC (explicit accesses: FORMAT.md),
 *   EFER.NXE; protection keys (§4.6.2: IA-32e paging, CR4.PKE, user-mode addresses, data accesses).
 * - The error code (§4.7: P, W/R, U/S, RSVD, I/D, PK).
 * - A/D bits (§4.8): on a successful access, A in every paging-structure entry used (not the PAE PDPTE
 *   registers) and D in the entry that maps the page for a write; on a fault, no change (the SDM lets a
 *   processor set upper-level A bits of a faulting walk; vectors mark those bits don't-care when they need to).
 * No TLB: every access walks the tables, as the native vector machine does (§4.10 lets a processor cache,
 * but a vector changes no entry between its accesses except through the processor's own A/D updates).
 */

const MASK64 = (1n << 64n) - 1n;
const bits = (hi: number, lo: number): bigint => (hi < lo ? 0n : ((1n << BigInt(hi - lo + 1)) - 1n) << BigInt(lo));
const bit = (n: number): bigint => 1n << BigInt(n);

const P = bit(0);
const RW = bit(1);
const US = bit(2);
const A = bit(5);
const D = bit(6);
const PS = bit(7);
const XD = bit(63);

/** §4.7 Figure 4-12. */
const EC_P = 1;
const EC_WR = 2;
const EC_US = 4;
const EC_RSVD = 8;
const EC_ID = 16;
const EC_PK = 32;

/** One paging-structure entry the walk used: where it is, its size, and whether it is in memory (not a PDPTE register). */
interface Used {
  pa: bigint;
  size: 4 | 8;
  value: bigint;
}

type Walk = { kind: 'gp' } | { kind: 'pf'; ec: number } | { kind: 'ok'; pa: bigint; used: Used[]; leaf: bigint };

/** The sparse physical memory of FORMAT.md: every byte not written reads as zero; kept as 32-bit words. */
class Memory {
  private readonly words = new Map<bigint, bigint>();
  read(pa: bigint, size: 4 | 8): bigint {
    const lo = this.words.get(pa) ?? 0n;
    return size === 4 ? lo : lo | ((this.words.get(pa + 4n) ?? 0n) << 32n);
  }
  write(pa: bigint, size: 4 | 8, value: bigint): void {
    this.words.set(pa, value & 0xffffffffn);
    if (size === 8) this.words.set(pa + 4n, (value >> 32n) & 0xffffffffn);
  }
}

/** The reference machine of a vector: the `VectorMachine` whose outcomes are this file's reading of the SDM. */
export const createReferenceVectorMachine: VectorMachineFactory = (vector) => referenceMachine(vector);

function referenceMachine(vector: ConformanceVector): VectorMachine {
  const mem = new Memory();
  for (const e of vector.memory) mem.write(e.pa, e.size, e.value);
  const cpu = vector.cpu;
  const M = cpu.maxPhyAddr;
  // §4.4.1: the PDPTE registers, as the vector gives them or as MOV CR3 loads them from CR3[31:5].
  let pdptes: bigint[] | null = null;
  let loadFailed = false;
  if (vector.mode === 'pae') {
    pdptes = vector.pdptes ?? [0, 1, 2, 3].map((i) => mem.read((vector.cr3 & 0xffffffe0n) + BigInt(8 * i), 8));
    // Table 4-8: bits 2:1, 8:5 and 63:MAXPHYADDR of a present PDPTE are reserved; the load is then a #GP(0).
    loadFailed = pdptes.some((e) => (e & P) !== 0n && (e & (bits(2, 1) | bits(8, 5) | bits(63, M))) !== 0n);
  }

  function walk(access: number): Walk {
    const va = vector.va;
    const used: Used[] = [];
    const write = (access & ACC_WRITE) !== 0;
    const user = (access & ACC_USER) !== 0;
    const fetch = (access & ACC_FETCH) !== 0;
    // §4.7: I/D is reported for a fetch only with CR4.SMEP, or with CR4.PAE (PAE, 4-/5-level) and EFER.NXE.
    const id = fetch && (cpu.cr4Smep || (vector.mode !== 'legacy32' && cpu.eferNxe)) ? EC_ID : 0;
    const base = (write ? EC_WR : 0) | (user ? EC_US : 0) | id;
    const notPresent: Walk = { kind: 'pf', ec: base };
    const reserved: Walk = { kind: 'pf', ec: base | EC_P | EC_RSVD };

    let table: bigint; // the table the next entry is in; after the leaf, the page frame
    let level: number;
    let leafSize: bigint; // the page size of the leaf, once found
    if (vector.mode === 'legacy32') {
      table = vector.cr3 & bits(31, 12);
      level = 2;
    } else if (vector.mode === 'pae') {
      if (loadFailed) return { kind: 'gp' };
      const pdpte = pdptes![Number((va >> 30n) & 3n)]!;
      if ((pdpte & P) === 0n) return notPresent;
      table = pdpte & bits(M - 1, 12);
      level = 2;
    } else {
      // Vol. 1 §3.3.7.1: a non-canonical address is a #GP. 4-level: bits 63:47 equal; 5-level: bits 63:56.
      const top = vector.mode === 'long4' ? 47 : 56;
      const upper = va >> BigInt(top);
      if (upper !== 0n && upper !== MASK64 >> BigInt(top)) return { kind: 'gp' };
      table = vector.cr3 & bits(M - 1, 12);
      level = vector.mode === 'long4' ? 4 : 5;
    }

    let leaf: bigint;
    for (;;) {
      if (vector.mode === 'legacy32') {
        const index = level === 2 ? (va >> 22n) & 1023n : (va >> 12n) & 1023n;
        const pa = table + index * 4n;
        const e = mem.read(pa, 4);
        if ((e & P) === 0n) return notPresent;
        used.push({ pa, size: 4, value: e });
        if (level === 2 && cpu.cr4Pse && (e & PS) !== 0n) {
          // Table 4-4 (PSE-36): bits (M'-20):13 are PA bits (M'-1):32, bits 21:(M'-19) reserved, M' = min(M, 40).
          const m = Math.min(M, 40);
          if ((e & bits(21, m - 19)) !== 0n) return reserved;
          leaf = e;
          leafSize = 1n << 22n;
          table = (e & bits(31, 22)) | (((e >> 13n) & bits(m - 33, 0)) << 32n);
          break;
        }
        if (level === 1) {
          leaf = e;
          leafSize = 1n << 12n;
          table = e & bits(31, 12);
          break;
        }
        table = e & bits(31, 12);
        level--;
        continue;
      }
      // 8-byte entries: PAE (levels 2, 1) and IA-32e (levels 5..1).
      const pa = table + ((va >> BigInt(12 + 9 * (level - 1))) & 511n) * 8n;
      const e = mem.read(pa, 8);
      if ((e & P) === 0n) return notPresent;
      // PAE reserves bits 62:M (§4.4.2); IA-32e bits 51:M (§4.5.4, 62:52 ignored); both bit 63 without NXE.
      let rsvd = (vector.mode === 'pae' ? bits(62, M) : bits(51, M)) | (cpu.eferNxe ? 0n : XD);
      const large = (e & PS) !== 0n && level > 1;
      if (large && level >= 4) rsvd |= PS; // a PML4E or PML5E cannot map a page (§4.5.4)
      if (large && level === 3) rsvd |= bits(29, 13); // 1 GiB page (Table 4-15)
      if (large && level === 2) rsvd |= bits(20, 13); // 2 MiB page (Tables 4-9, 4-17)
      if ((e & rsvd) !== 0n) return reserved;
      used.push({ pa, size: 8, value: e });
      if (level === 1 || large) {
        leaf = e;
        leafSize = 1n << BigInt(12 + 9 * (level - 1));
        table = e & bits(M - 1, 12) & ~(leafSize - 1n);
        break;
      }
      table = e & bits(M - 1, 12);
      level--;
    }

    // §4.6: the rights of the translation, from every entry used (the PAE PDPTE registers carry none).
    const userAddress = used.every((u) => (u.value & US) !== 0n);
    const writable = used.every((u) => (u.value & RW) !== 0n);
    const executeDisabled = vector.mode !== 'legacy32' && cpu.eferNxe && used.some((u) => (u.value & XD) !== 0n);
    const allowed = rightsAllow({
      write,
      user,
      fetch,
      userAddress,
      writable,
      executeDisabled,
      wp: cpu.cr0Wp,
      smep: cpu.cr4Smep,
      smap: cpu.cr4Smap,
      ac: cpu.eflagsAc,
    });
    // §4.6.2 and §4.7 (PK): IA-32e paging with CR4.PKE, a data access to a user-mode address, key i of the leaf.
    let pk = false;
    if ((vector.mode === 'long4' || vector.mode === 'long5') && cpu.cr4Pke && !fetch && userAddress) {
      const key = Number((leaf >> 59n) & 15n);
      const ad = ((cpu.pkru >>> (2 * key)) & 1) !== 0;
      const wd = ((cpu.pkru >>> (2 * key + 1)) & 1) !== 0;
      pk = ad || (wd && write && (user || cpu.cr0Wp));
    }
    if (!allowed || pk) return { kind: 'pf', ec: base | EC_P | (pk ? EC_PK : 0) };
    return { kind: 'ok', pa: table | (va & (leafSize - 1n)), used, leaf };
  }

  return {
    access(access: number): AccessOutcome {
      const w = walk(access);
      if (w.kind === 'gp') return { result: 'gp', errorCode: null, pa: null };
      if (w.kind === 'pf') return { result: 'pf', errorCode: w.ec, pa: null };
      // §4.8: A in every entry used; D in the one that maps the page, for a write. Re-read each entry so that an
      // entry used at two levels (a recursive mapping) keeps both updates.
      w.used.forEach((u, i) => {
        const set = A | (i === w.used.length - 1 && (access & ACC_WRITE) !== 0 ? D : 0n);
        mem.write(u.pa, u.size, mem.read(u.pa, u.size) | set);
      });
      return { result: 'ok', errorCode: null, pa: w.pa };
    },
    read: (pa, size) => mem.read(pa, size),
  };
}

interface Rights {
  write: boolean;
  user: boolean;
  fetch: boolean;
  /** U/S = 1 in every paging-structure entry used (§4.6: a user-mode address). */
  userAddress: boolean;
  /** R/W = 1 in every entry used. */
  writable: boolean;
  /** EFER.NXE = 1 and XD = 1 in some entry used. */
  executeDisabled: boolean;
  wp: boolean;
  smep: boolean;
  smap: boolean;
  ac: boolean;
}

/** SDM Vol. 3A §4.6.1, item by item ("Supervisor-mode access" / "User-mode access", each kind of address). */
function rightsAllow(r: Rights): boolean {
  if (r.user) {
    // User-mode accesses: only user-mode addresses; writes need R/W = 1 everywhere, fetches XD = 0.
    if (!r.userAddress) return false;
    if (r.write) return r.writable;
    if (r.fetch) return !r.executeDisabled;
    return true;
  }
  if (r.fetch) {
    // Supervisor fetches: from a user-mode address never with CR4.SMEP; otherwise as XD says.
    if (r.userAddress && r.smep) return false;
    return !r.executeDisabled;
  }
  // Explicit supervisor data accesses. To a user-mode address with CR4.SMAP = 1 and EFLAGS.AC = 0: none.
  if (r.userAddress && r.smap && !r.ac) return false;
  // Writes (to either kind of address, SMAP passed): with CR0.WP = 0 any; with CR0.WP = 1 only R/W = 1.
  if (r.write) return !r.wp || r.writable;
  return true;
}
