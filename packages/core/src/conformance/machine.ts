import { ACC_MASK, TWO_POW_32 } from '../arch/constants.js';
import { pagingModeId } from '../arch/modes.js';
import { hexU64 } from '../arch/hex.js';
import { DensePhysicalMemory } from '../memory/dense.js';
import type { PhysicalMemory } from '../memory/physical.js';
import { SparsePhysicalMemory } from '../memory/sparse.js';
import { createPagingContext, loadPdptes, walk } from '../paging/walker.js';
import { WALK_GP, WALK_OK, WALK_PAGE_FAULT, WALK_SIDE_EFFECTS, WalkResult, type PagingContext } from '../paging/types.js';
import type { ConformanceVector } from './vector.js';

/** What one access of a vector did, as the guest sees it. */
export interface AccessOutcome {
  /** 'ok': the access completed at `pa`; 'pf': a #PF with `errorCode`; 'gp': a #GP (non-canonical address, PDPTE load). */
  result: 'ok' | 'pf' | 'gp';
  errorCode: number | null;
  pa: bigint | null;
}

/**
 * A machine set up in a vector's state, on which the runner performs the vector's accesses and then reads
 * the guest's page-table entries back. The native machine walks the guest's tables directly; a hypervisor
 * variant (the CLI's `vmexit conformance --variant`) builds a VM in the same state and runs the accesses as guest accesses.
 */
export interface VectorMachine {
  /** Performs one access of kind `access` (ACC_* bits) at the vector's linear address. */
  access(access: number): AccessOutcome;
  /** The `size`-byte little-endian value at guest-physical address `pa`. */
  read(pa: bigint, size: 4 | 8): bigint;
}

/** Builds a machine in the state a vector describes. */
export type VectorMachineFactory = (vector: ConformanceVector) => VectorMachine;

/** Writes a vector's `memory` entries into a fresh sparse memory. */
export function vectorMemory(vector: ConformanceVector): SparsePhysicalMemory {
  const mem = new SparsePhysicalMemory();
  for (const e of vector.memory) {
    const pa = Number(e.pa);
    mem.write32(pa, Number(e.value & 0xffffffffn));
    if (e.size === 8) mem.write32(pa + 4, Number(e.value >> 32n));
  }
  return mem;
}

/** The largest dense memory `vectorDenseMemory` allocates (the entries of every bundled vector lie below 64 KiB). */
export const DENSE_VECTOR_MEMORY_LIMIT = 256 * 1024 * 1024;

/**
 * Writes a vector's `memory` entries into a fresh dense memory (one ArrayBuffer from 0, up to the end of the
 * highest entry, rounded up to 4 KiB; every other address reads as zero, as in the sparse one). Throws a
 * RangeError naming the vector when an entry lies at or above DENSE_VECTOR_MEMORY_LIMIT.
 */
export function vectorDenseMemory(vector: ConformanceVector): DensePhysicalMemory {
  let end = 0;
  for (const e of vector.memory) end = Math.max(end, Number(e.pa) + e.size);
  if (end > DENSE_VECTOR_MEMORY_LIMIT) {
    throw new RangeError(
      `vector ${vector.id} (${vector.file}:${vector.line}): memory up to ${hexU64(end)} does not fit a ${DENSE_VECTOR_MEMORY_LIMIT}-byte dense memory`,
    );
  }
  const mem = new DensePhysicalMemory(Math.ceil(end / 4096) * 4096);
  for (const e of vector.memory) {
    const pa = Number(e.pa);
    mem.write32(pa, Number(e.value & 0xffffffffn));
    if (e.size === 8) mem.write32(pa + 4, Number(e.value >> 32n));
  }
  return mem;
}

/** The `PagingContext` of a vector's CPU state (PDPTE registers not loaded yet). */
export function vectorPagingContext(vector: ConformanceVector): PagingContext {
  const cpu = vector.cpu;
  return createPagingContext({
    mode: pagingModeId(vector.mode),
    cr3: Number(vector.cr3),
    maxPhyAddr: cpu.maxPhyAddr,
    cr0Wp: cpu.cr0Wp,
    cr4Pse: cpu.cr4Pse,
    cr4Pge: cpu.cr4Pge,
    cr4Smep: cpu.cr4Smep,
    cr4Smap: cpu.cr4Smap,
    cr4Pke: cpu.cr4Pke,
    eferNxe: cpu.eferNxe,
    eflagsAc: cpu.eflagsAc,
    pkru: cpu.pkru,
  });
}

/**
 * A vector's linear address as the walker takes it: 32-bit modes the value itself; IA-32e modes the
 * signed-canonical number (`Number(BigInt.asIntN(64, va))`, see PagingContext). A non-canonical 4-level
 * address stays non-canonical through the conversion (a value of magnitude >= 2^53 rounds to another one);
 * 5-level vectors are limited to magnitudes below 2^53 by `validateVector`.
 */
export function vectorLinearAddress(vector: ConformanceVector): number {
  return vector.mode === 'legacy32' || vector.mode === 'pae' ? Number(vector.va) : Number(BigInt.asIntN(64, vector.va));
}

function joinPa(pa: number): bigint {
  // pa < 2^52: exact as a number; split so the BigInt conversion is exact for any integer value.
  const hi = Math.floor(pa / TWO_POW_32);
  return (BigInt(hi) << 32n) | BigInt(pa - hi * TWO_POW_32);
}

/**
 * The native machine: the architectural walker (SDM Vol. 3A ch. 4) over a copy of the vector's memory made by
 * `memory` (`vectorMemory`, sparse, or `vectorDenseMemory`), each access a walk with side effects (A/D bits).
 * PAE: the PDPTE registers are the vector's `pdptes`, or, without them, loaded from memory at CR3 (§4.4.1; a
 * failed load makes every access a #GP).
 */
export function nativeVectorMachineFactory(memory: (vector: ConformanceVector) => PhysicalMemory = vectorMemory): VectorMachineFactory {
  return (vector) => nativeVectorMachine(vector, memory(vector));
}

/** The native machine over sparse memory (`nativeVectorMachineFactory(vectorMemory)`): what `vmexit conformance` runs by default. */
export const createNativeVectorMachine: VectorMachineFactory = (vector) => nativeVectorMachine(vector, vectorMemory(vector));

function nativeVectorMachine(vector: ConformanceVector, mem: PhysicalMemory): VectorMachine {
  const ctx = vectorPagingContext(vector);
  let pdptesLoaded = true;
  if (vector.mode === 'pae') {
    if (vector.pdptes !== null) {
      for (let i = 0; i < 4; i++) {
        ctx.pdpteLo[i] = Number(vector.pdptes[i]! & 0xffffffffn);
        ctx.pdpteHi[i] = Number(vector.pdptes[i]! >> 32n);
      }
    } else {
      pdptesLoaded = loadPdptes(ctx, mem);
    }
  }
  const va = vectorLinearAddress(vector);
  const r = new WalkResult();
  return {
    access(access: number): AccessOutcome {
      if (!pdptesLoaded) return { result: 'gp', errorCode: null, pa: null };
      const status = walk(ctx, mem, va, access & ACC_MASK, WALK_SIDE_EFFECTS, r);
      if (status === WALK_OK) return { result: 'ok', errorCode: null, pa: joinPa(r.pa) };
      if (status === WALK_PAGE_FAULT) return { result: 'pf', errorCode: r.errorCode, pa: null };
      if (status === WALK_GP) return { result: 'gp', errorCode: null, pa: null };
      throw new Error(`conformance: unexpected walk status ${status} without a second stage`);
    },
    read(pa: bigint, size: 4 | 8): bigint {
      const p = Number(pa);
      const lo = BigInt(mem.read32(p));
      return size === 4 ? lo : (BigInt(mem.read32(p + 4)) << 32n) | lo;
    },
  };
}
