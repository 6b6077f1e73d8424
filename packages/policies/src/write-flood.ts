import { decideMmuEvents, type FaultPolicy } from '@vmexit/core';
import { z } from 'zod';

/**
 * The options of the `write-flood` policy: `threshold` (emulated writes before a page counts as flooded,
 * 1-512, default 3) and `count` (`per-page` or `per-vcpu`), validated with their paths on error.
 */
export const writeFloodOptions = z.strictObject({
  /** Emulated writes that make a page flooded (KVM: 3). */
  threshold: z.number().int().min(1).max(512).default(3),
  /**
   * `per-page` (today's KVM `detect_write_flooding`): `sp->write_flooding_count`, reset whenever a fault's
   * walk uses the page, level-1 pages exempt (they go unsync instead). `per-vcpu` (KVM 86a5ba025d0a, 2007):
   * consecutive emulated writes of one vCPU to one gfn, reset by any fault that is not a page-table write,
   * at every level.
   */
  count: z.enum(['per-page', 'per-vcpu']).default('per-page'),
});
/** The options `write-flood` runs with, defaults applied (see `writeFloodOptions`). */
export type WriteFloodOptions = z.output<typeof writeFloodOptions>;

/**
 * `write-flood` (KVM 86a5ba025d0a, "Page table write flood protection"; today arch/x86/kvm/mmu/mmu.c detect_write_flooding): a shadow page
 * that takes `threshold` emulated writes in a row is zapped (`mmu_flooded`), which drops the write protection
 * of a guest page that is no longer used as a page table (a page directory recycled into a data page and
 * memset: ~4 exits instead of 512 emulated writes).
 *
 * @example
 * { "policies": [{ "use": "write-flood", "options": { "threshold": 3, "count": "per-vcpu" } }] }
 */
export const writeFlood: FaultPolicy<WriteFloodOptions> = {
  name: 'write-flood',
  description: 'zap a shadow page after 3 consecutive emulated writes (options: threshold; count per-page as today or per-vcpu as in 2007)',
  needs: ['ShadowPageTables'],
  optionsSchema: writeFloodOptions,
  counters: ['mmu_flooded', 'mmu_events.flood'],
  mmuEvents: ({ options }) =>
    decideMmuEvents(
      'write-flood',
      (ev) => {
        if (ev.kind !== 'flood') return null;
        if (options.count === 'per-vcpu') return ev.vcpuWriteCount >= options.threshold ? true : null;
        return ev.level > 1 && ev.writeCount >= options.threshold ? true : null;
      },
      ['flood'],
    ),
};
