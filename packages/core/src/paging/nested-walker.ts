import { ACC_WRITE, PFERR_PRESENT, PT_ACCESSED, PT_DIRTY, PT_PAGE_SIZE } from '../arch/constants.js';
import type { PhysicalMemory } from '../memory/physical.js';
import { NESTED_FINAL, NESTED_TABLE, NESTED_W, WalkResult, type PagingContext, type SecondStage } from './types.js';
import {
  generalProtection,
  longRoot,
  nestedFault,
  notPresent,
  pageFault,
  permissionFault,
  reservedFault,
  setAccessedDirty,
  tableAt,
  tableIndex,
} from './walk-common.js';

/*
 * The pte bits of the hot path as module-local constants (SDM Vol. 3A §4.3-4.5: A = bit 5, D = bit 6, PS =
 * bit 7): V8 (Node 20) reads an imported binding through its module cell on every use, where it reads a
 * module-local const as a literal.
 */
const PS = PT_PAGE_SIZE;
const ACCESSED = PT_ACCESSED;
const DIRTY = PT_DIRTY;

/** The second-stage rights of the translation of each guest paging-structure entry's gpa, per level (scratch of walkNested). */
const stageRights = new Int32Array(6);

/**
 * The two-dimensional walk (SDM Vol. 3C §29.3.2-29.3.3 for EPT, AMD APM Vol. 2 §15.25.5-15.25.6 for NPT):
 * the guest's paging structures are walked as in `walk`, but every guest-physical address the processor
 * uses goes through `ctx.nested` first: the address of each guest paging-structure entry (NESTED_TABLE),
 * and the final guest-physical address once the guest's rights allow the access (NESTED_FINAL). The guest
 * entries are read at the host-physical addresses the second stage returns, in `mem` (host memory). A TLB
 * miss with 4-level guest tables and 4-level second-stage tables reads 4 x 4 second-stage entries for the
 * guest tables, 4 guest entries and 4 second-stage entries for the final address: 24 references, counted
 * in `out.refs` (n guest levels over m second-stage levels: n * (m + 1) + m; PAE's PDPTEs are registers).
 *
 * Reserved bits of the guest entries are those of the processor's MAXPHYADDR, the stage's (the guest's
 * CPUID value, `ctx.maxPhyAddr`, does not change what the hardware checks; a gpa beyond the guest's
 * MAXPHYADDR reaches the second stage, which KVM leaves unmapped and then handles, see mmu-tdp's design).
 *
 * A/D updates of guest entries are writes (SDM §29.3.3.2: "Writes by the logical processor to guest paging
 * structures to update accessed and dirty flags are considered to be data writes"), done after the final
 * translation succeeded: an entry that needs one and whose second-stage translation did not allow writes
 * ends the walk with a second-stage fault (a write to a guest paging-structure entry, not final). The
 * stage decides what kind of access a paging-structure read is (EPT: a read, a write with EPTP bit 6; NPT:
 * a user write), so for NPT and A/D-enabled EPT that check never fails.
 *
 * `out` as for `walk`, and `out.entryPa` holds host-physical addresses, `out.entryGpa` the guest-physical
 * ones, `out.pa` the host-physical address; `out.nestedRights`/`nestedDirty` describe the final
 * translation (the TLB caches the combined translation, SDM §29.4.1: its rights are the AND of both).
 */
export function walkNested(ctx: PagingContext, mem: PhysicalMemory, va: number, access: number, flags: number, out: WalkResult): number {
  const stage = ctx.nested!;
  out.errorCode = 0;
  out.global = false;
  out.pkey = 0;
  out.refs = 0;
  const mode = ctx.mode;
  if (mode === 2 /* MODE_LONG4 */ && !(va >= -140737488355328 && va < 140737488355328)) return generalProtection(out);
  if (mode === 3 /* MODE_LONG5 */ && !(va >= -72057594037927936 && va < 72057594037927936)) return generalProtection(out);
  const lo = va | 0;
  if (mode === 0 /* MODE_LEGACY32 */) return walkNested32(ctx, stage, mem, lo, access, flags, out);
  const hi = Math.floor(va * 2.3283064365386963e-10) | 0;
  const ePa = out.entryPa;
  const eLo = out.entryLo;
  const eHi = out.entryHi;
  const eGpa = out.entryGpa;
  const m = stage.maxPhyAddr - 32; // first reserved address bit, in the high half (the processor's MAXPHYADDR)
  const nx = ctx.eferNxe ? 0 : 0x80000000; // XD is reserved without NXE
  let level: number;
  let base: number;
  let rsvdHi: number;
  if (mode === 1 /* MODE_PAE */) {
    // §4.4.1: the PDPTE registers (loaded at CR3 load, through the second stage: loadPdptes).
    const i = lo >>> 30;
    const plo = ctx.pdpteLo[i]!;
    const phi = ctx.pdpteHi[i]!;
    out.topLevel = 3;
    eGpa[3] = ePa[3] = (((ctx.cr3 >>> 0) & 0xffffffe0) >>> 0) + i * 8;
    eLo[3] = plo;
    eHi[3] = phi;
    if ((plo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 3);
    rsvdHi = ((0x7fffffff >>> m) << m) | nx; // bits 62:M (§4.4.2)
    level = 2;
    base = tableAt(plo, phi);
  } else {
    rsvdHi = ((0xfffff >>> m) << m) | nx; // bits 51:M (§4.5.4)
    level = mode === 3 ? 5 : 4;
    out.topLevel = level;
    base = longRoot(ctx.cr3, m);
  }
  let acc = -1;
  let xd = 0;
  let elo: number;
  let ehi: number;
  let pageSize = 4096;
  for (;;) {
    const index = tableIndex(level, lo, hi);
    const gpa = base + index * 8;
    const hpa = stage.translate(gpa, access, NESTED_TABLE, flags, out);
    if (hpa < 0) return nestedFault(out);
    stageRights[level] = out.nestedRights;
    elo = mem.read32(hpa);
    ehi = mem.read32(hpa + 4);
    out.refs++;
    ePa[level] = hpa;
    eGpa[level] = gpa;
    eLo[level] = elo;
    eHi[level] = ehi;
    if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, level);
    let rsvdLo = 0;
    let isLeaf = level === 1;
    if ((elo & PS) !== 0) {
      if (level === 2) {
        isLeaf = true;
        rsvdLo = 0x001fe000; // bits 20:13
        pageSize = 2097152;
      } else if (level === 3 && mode !== 1) {
        isLeaf = true;
        rsvdLo = 0x3fffe000; // bits 29:13
        pageSize = 1073741824;
      } else if (level >= 4) {
        rsvdLo = PS; // PS is reserved in a PML4E and a PML5E
      }
    }
    if ((elo & rsvdLo) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, level);
    acc &= elo;
    xd |= ehi;
    if (isLeaf) break;
    base = tableAt(elo, ehi);
    level--;
  }
  const offsetMask = pageSize - 1;
  out.leafLevel = level;
  out.pageSize = pageSize;
  out.writable = (acc & 0x2) /* R/W */ !== 0;
  out.user = (acc & 0x4) /* U/S */ !== 0;
  out.executable = (xd & 0x80000000) /* XD */ === 0;
  out.global = ctx.cr4Pge && (elo & 0x100) /* G */ !== 0;
  out.pkey = mode === 1 ? 0 : (ehi >>> 27) & 15;
  out.pa = ((elo & ~offsetMask) >>> 0) + (ehi & 0xfffff) * 4294967296 + (lo & offsetMask);
  return finishNested(ctx, stage, mem, access, flags, out, mode === 1 ? 2 : out.topLevel, acc, xd, elo);
}

/** `walkNested` for 32-bit paging (§4.3): a PDE and a PTE of 4 bytes, or a 4 MiB page with CR4.PSE. */
function walkNested32(ctx: PagingContext, stage: SecondStage, mem: PhysicalMemory, lo: number, access: number, flags: number, out: WalkResult): number {
  out.topLevel = 2;
  const ePa = out.entryPa;
  const eLo = out.entryLo;
  const eHi = out.entryHi;
  const eGpa = out.entryGpa;
  let gpa = (((ctx.cr3 >>> 0) & 0xfffff000) >>> 0) + (lo >>> 22) * 4;
  let hpa = stage.translate(gpa, access, NESTED_TABLE, flags, out);
  if (hpa < 0) return nestedFault(out);
  stageRights[2] = out.nestedRights;
  const pde = mem.read32(hpa);
  out.refs++;
  ePa[2] = hpa;
  eGpa[2] = gpa;
  eLo[2] = pde;
  eHi[2] = 0;
  if ((pde & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 2);
  let leaf = pde;
  let pa: number;
  if (ctx.cr4Pse && (pde & PS) !== 0) {
    const m = stage.maxPhyAddr < 40 ? stage.maxPhyAddr : 40;
    const rsvd = ((0x3fffff >>> (m - 19)) << (m - 19)) >>> 0; // bits 21:(M-19)
    if ((pde & rsvd) !== 0) return reservedFault(ctx, out, access, 2);
    pa = ((pde & 0xffc00000) >>> 0) + ((pde >>> 13) & ((1 << (m - 32)) - 1)) * 4294967296 + (lo & 0x3fffff);
    out.leafLevel = 2;
    out.pageSize = 4194304;
  } else {
    gpa = ((pde & 0xfffff000) >>> 0) + ((lo >>> 12) & 0x3ff) * 4;
    hpa = stage.translate(gpa, access, NESTED_TABLE, flags, out);
    if (hpa < 0) return nestedFault(out);
    stageRights[1] = out.nestedRights;
    leaf = mem.read32(hpa);
    out.refs++;
    ePa[1] = hpa;
    eGpa[1] = gpa;
    eLo[1] = leaf;
    eHi[1] = 0;
    if ((leaf & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 1);
    pa = ((leaf & 0xfffff000) >>> 0) + (lo & 0xfff);
    out.leafLevel = 1;
    out.pageSize = 4096;
  }
  const both = pde & leaf;
  out.writable = (both & 0x2) /* R/W */ !== 0;
  out.user = (both & 0x4) /* U/S */ !== 0;
  out.executable = true;
  out.global = ctx.cr4Pge && (leaf & 0x100) /* G */ !== 0;
  out.pa = pa;
  return finishNested(ctx, stage, mem, access, flags, out, 2, both, 0, leaf);
}

/**
 * The end of a two-dimensional walk whose guest-physical address is in `out.pa`: the guest's rights (§4.6),
 * the second-stage translation of the final address, then the guest's A/D updates (§4.8), each a write to a
 * guest paging-structure entry that its second-stage translation must allow (`stageRights`, per level).
 * Leaves the host-physical address in `out.pa`.
 */
function finishNested(
  ctx: PagingContext,
  stage: SecondStage,
  mem: PhysicalMemory,
  access: number,
  flags: number,
  out: WalkResult,
  fromLevel: number,
  acc: number,
  xd: number,
  leafLo: number,
): number {
  const fault = permissionFault(ctx, access, (acc & 0x6) | (xd & 0x80000000), out.pkey);
  if (fault !== 0) return pageFault(out, fault);
  const hpa = stage.translate(out.pa, access, NESTED_FINAL, flags, out);
  if (hpa < 0) return nestedFault(out);
  const write = (access & 0x2) /* ACC_WRITE */ !== 0;
  const sideEffects = (flags & 1) /* WALK_SIDE_EFFECTS */ !== 0;
  if (sideEffects && ((acc & ACCESSED) === 0 || (write && (leafLo & DIRTY) === 0))) {
    const leafLevel = out.leafLevel;
    for (let l = fromLevel; l >= leafLevel; l--) {
      const want = l === leafLevel && write ? ACCESSED | DIRTY : ACCESSED;
      if ((out.entryLo[l]! & want) !== want && (stageRights[l]! & NESTED_W) === 0) {
        // SDM §29.3.3.2: the flag update is a data write the second stage does not allow.
        out.nestedGpa = out.entryGpa[l]!;
        out.nestedFinal = false;
        out.nestedAccess = ACC_WRITE;
        out.nestedCode = (stageRights[l]! !== 0 ? PFERR_PRESENT : 0) | ACC_WRITE;
        out.nestedRights = stageRights[l]!;
        out.nestedMisconfig = false;
        out.nestedPdpteLoad = false;
        out.nestedPmlFull = false;
        return nestedFault(out);
      }
    }
    setAccessedDirty(mem, out, fromLevel, write);
  }
  out.pa = hpa;
  out.dirty = (leafLo & DIRTY) !== 0 || (sideEffects && write);
  out.status = 0; // WALK_OK
  return 0;
}
