import { decideMmuEvents, type FaultPolicy } from '@vmexit/core';
import { z } from 'zod';

/** The options of the `misaligned-write` policy: none (an unknown key is an error naming it). */
export const misalignedWriteOptions = z.strictObject({});
/** The options `misaligned-write` runs with (see `misalignedWriteOptions`). */
export type MisalignedWriteOptions = z.output<typeof misalignedWriteOptions>;

/**
 * `misaligned-write` (KVM 0e7bc4b9610e, "A misaligned write zaps the page"; today arch/x86/kvm/mmu/mmu.c detect_write_misaligned): an emulated
 * write that straddles two guest ptes, or is shorter than 4 bytes except a 1-byte write at a pte's first byte
 * (Linux's `andb` on status bits), zaps the whole shadow page: "since a misaligned access is unlikely to occur
 * on a real page table, just zap the page". The MMU computes `misaligned` as `detect_write_misaligned` does,
 * over the bytes the store wrote (a 4-byte store at offset 4 of a PAE table is not misaligned, an 8-byte
 * store there is, and so is a 4-byte store at offset 6, which KVM, widening it to the aligned 8 bytes first,
 * would take for aligned). Without the policy the MMU clears every spte the write touched.
 *
 * @example
 * { "policies": [{ "use": "misaligned-write" }] }
 */
export const misalignedWrite: FaultPolicy<MisalignedWriteOptions> = {
  name: 'misaligned-write',
  description: 'an emulated write that straddles two guest ptes or is shorter than 4 bytes (but a 1-byte write at a pte start) zaps the shadow page',
  needs: ['ShadowPageTables'],
  optionsSchema: misalignedWriteOptions,
  // Its zap counts as `mmu_flooded`, as KVM's does (mmu.c kvm_mmu_pte_write: "if (detect_write_misaligned(sp, gpa,
  // bytes) || detect_write_flooding(sp)) { ...; ++vcpu->kvm->stat.mmu_flooded; }"): with write-flood, the count is both's.
  counters: ['mmu_flooded', 'mmu_events.pte-write'],
  mmuEvents: () => decideMmuEvents('misaligned-write', (ev) => (ev.kind === 'pte-write' && ev.misaligned ? 'zap-page' : null), ['pte-write']),
};
