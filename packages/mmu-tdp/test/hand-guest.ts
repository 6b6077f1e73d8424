import { CR0_PE, CR0_PG, CR0_WP, CR4_PAE, createVm, EFER_LME, EFER_NXE, GuestAbort, PF_VECTOR, type MemslotSpec, type Vcpu, type Vm } from '@vmexit/core';
import { sources } from './vm.js';
import type { TdpMmu, TdpMmuOptions } from '../src/index.js';

/*
 * A hand-built 4-level guest, for scenario tests whose every exit can be named: its page tables are real
 * bytes in guest RAM at fixed guest-physical addresses,
 *   PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000 (VA 0-2 MiB) and PT 0x6000 (VA 2-4 MiB),
 * and the test maps linear pages to guest-physical ones with `map`. Every #PF the guest takes is counted by
 * its own handler (`guestFaults`), which fixes nothing: it abandons the access (GuestAbort), and
 * `tryRead` / `tryWrite` say whether the access completed.
 */
export const PML4 = 0x1000;
export const PDPT = 0x2000;
export const PD = 0x3000;
export const PT0 = 0x4000;
export const PT1 = 0x6000;

export interface HandGuest {
  readonly vm: Vm;
  readonly v: Vcpu;
  readonly mmu: TdpMmu;
  /** Maps the 4 KiB linear page `va` (below 4 MiB) to `gpa`, writable. */
  map(va: number, gpa: number, writable?: boolean): void;
  /** #PFs the guest's handler took, and the error code of the last. */
  guestFaults: number;
  lastErrorCode: number;
  /** A 4-byte load: its value, or null when the guest's #PF handler abandoned it. */
  tryRead(va: number): number | null;
  /** A 4-byte store: false when the guest's #PF handler abandoned it. */
  tryWrite(va: number, value: number): boolean;
  /** The VM's counters. */
  c(): Record<string, number>;
}

export async function handGuest(
  backend: 'vmx' | 'svm',
  options: { memslots?: MemslotSpec[]; maxPhyAddr?: number; hostMaxPhyAddr?: number; hostPages?: TdpMmuOptions['hostPages'] } = {},
): Promise<HandGuest> {
  const memory = 16 * 1024 * 1024;
  const vm = await createVm(
    { backend, mmu: 'tdp', memory },
    {
      sources: sources({ hostPages: options.hostPages }),
      memslots: options.memslots,
      maxPhyAddr: options.maxPhyAddr,
      hostMaxPhyAddr: options.hostMaxPhyAddr,
      seed: 1,
    },
  );
  const mem = vm.machine.memory;
  const v = vm.vcpus[0]!;
  const P = 1;
  const W = 2;
  mem.write32(PML4, PDPT | P | W);
  mem.write32(PDPT, PD | P | W);
  mem.write32(PD, PT0 | P | W);
  mem.write32(PD + 8, PT1 | P | W);
  const g: HandGuest = {
    vm,
    v,
    mmu: vm.mmu as TdpMmu,
    guestFaults: 0,
    lastErrorCode: -1,
    map(va: number, gpa: number, writable = true) {
      const pt = va < 0x200000 ? PT0 : PT1;
      mem.write32(pt + ((va >>> 12) & 511) * 8, ((gpa % 2 ** 32) | P | (writable ? W : 0)) >>> 0);
      mem.write32(pt + ((va >>> 12) & 511) * 8 + 4, Math.floor(gpa / 2 ** 32));
    },
    c: () => vm.counters().total,
    tryRead(va: number) {
      try {
        return v.read(va, 4);
      } catch (e) {
        if (e instanceof GuestAbort) return null;
        throw e;
      }
    },
    tryWrite(va: number, value: number) {
      try {
        v.write(va, 4, value);
        return true;
      } catch (e) {
        if (e instanceof GuestAbort) return false;
        throw e;
      }
    },
  };
  v.setExceptionHandler(PF_VECTOR, (_v, _vector, errorCode) => {
    g.guestFaults++;
    g.lastErrorCode = errorCode;
    throw new GuestAbort('the test guest fixes no fault');
  });
  // SDM Vol. 3A §9.8.5: PAE, LME, CR3, then PG.
  v.movToCr4(CR4_PAE);
  v.writeEfer(EFER_LME | EFER_NXE);
  v.movToCr3(PML4);
  v.movToCr0(CR0_PG | CR0_WP | CR0_PE);
  return g;
}
