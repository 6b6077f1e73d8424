import { decideMmuEvents, type FaultPolicy } from '@vmexit/core';
import { z } from 'zod';

export const misalignedWriteOptions = z.strictObject({});
export type MisalignedWriteOptions = z.output<typeof misalignedWriteOptions>;

/**
 * `misaligned-write` (KVM 0e7bc4b9610e, "A misaligned write zaps the page"; today arch/x86/kvm/mmu/mmu.c detect_write_misaligned): an emulated
 * write that straddles two guest ptes, or is shorter than 4 bytes except a 1-byte write at a pte's first byte
 * (Linux's `andb` on status bits), zaps the whole shadow page: "since a misaligned access is unlikely to occur
 * on a real page table, just zap the page". The MMU computes `misaligned` exactly as `detect_write_misaligned`,
 * after widening a 4-byte write into an 8-byte gpte (so a 4-byte store at offset 4 of a PAE table is not
 * misaligned, and an 8-byte store there is). Without the policy the MMU clears every spte the write touched.
 *
 * @example
 * { "policies": [{ "use": "misaligned-write" }] }
 */
export const misalignedWrite: FaultPolicy<MisalignedWriteOptions> = {
  name: 'misaligned-write',
  description: 'an emulated write that straddles two guest ptes or is shorter than 4 bytes (but a 1-byte write at a pte start) zaps the shadow page',
  needs: [],
  optionsSchema: misalignedWriteOptions,
  mmuEvents: () => decideMmuEvents('misaligned-write', (ev) => (ev.kind === 'pte-write' && ev.misaligned ? 'zap-page' : null), ['pte-write']),
};
