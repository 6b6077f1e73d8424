import type { CpuDirtyLogControl, FaultPolicy, PageModificationLogging } from '@vmexit/core';
import { z } from 'zod';

/** The `pml` policy's options: none. */
export const pmlOptions = z.strictObject({});
/** The `pml` policy's options, parsed. */
export type PmlOptions = z.output<typeof pmlOptions>;

/**
 * `pml`: page-modification logging (Intel SDM Vol. 3C §29.3.6; KVM vmx.c `enable_pml`, `vmx_flush_pml_buffer`,
 * `handle_pml_full`). With EPT A/D flags on, the processor logs the guest-physical address of each page whose EPT
 * dirty flag it sets into a 512-entry buffer and exits (reason 62, PML full) only when the buffer is full; the
 * TDP MMU then clears D flags for dirty logging instead of write-protecting, so a logged write costs no exit.
 * It needs the backend's `PageModificationLogging` (VMX only: SVM has no PML) and the MMU's `CpuDirtyLogging`
 * (TDP only: the log holds guest-physical addresses of EPT dirty flags), and changes nothing while no memslot
 * logs dirty pages. `vmexit migrate --dirty-log pml` and `dirty-log-test:harvest=pml` compose it.
 *
 * @example
 * // vmexit.config.json
 * { "backend": "vmx", "mmu": "tdp", "policies": [{ "use": "pml" }] }
 */
export const pml: FaultPolicy<PmlOptions> = {
  name: 'pml',
  description: 'page-modification logging: the CPU logs dirty gpas in a 512-entry buffer, one exit per full buffer (VMX with TDP)',
  needs: ['PageModificationLogging', 'CpuDirtyLogging'],
  optionsSchema: pmlOptions,
  // It programs the hardware and counts nothing of its own: its effect is in the exits (PML-full exits instead of
  // write-protect faults).
  counters: [],
  setup(ctx) {
    ctx.capability<CpuDirtyLogControl>('CpuDirtyLogging').enableCpuDirtyLog(ctx.capability<PageModificationLogging>('PageModificationLogging'));
  },
};
