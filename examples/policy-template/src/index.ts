import { PF_VECTOR, TYPES, WALK_PAGE_FAULT, WalkResult, resolveExits, walk, type FaultPolicy } from '@vmexit/core';
import { ContainerModule } from 'inversify';
import { z } from 'zod';

/** The options: validated by `optionsSchema` when a variant names the policy (unknown keys are errors). */
export const reflectRangeOptions = z.strictObject({
  /** The guest linear addresses [from, to) whose #PFs are reflected into the guest at once. */
  from: z.number().int().min(0).default(0),
  /** Default: all of user space under 4-level paging (the canonical low half, SDM Vol. 3A §4.5). */
  to: z
    .number()
    .int()
    .min(0)
    .default(2 ** 47),
});
export type ReflectRangeOptions = z.output<typeof reflectRangeOptions>;

/**
 * `reflect-range`: a #PF exit at an address in [from, to) that the guest's own page tables do not allow (its
 * walk of them faults) is injected back into the guest at once, with the error code of that walk, without
 * asking the MMU, and counted as `reflect_range.injected`. This is what the shadow MMU would do with it too
 * (KVM FNAME(page_fault): a fault the guest walk finds to be the guest's own is injected), so the guest sees
 * exactly what it sees natively, with the same exits; only who resolved them changes (the MMU's `pf_guest`
 * drops by as many). A fault the guest tables allow (a shadow pte not built yet) is passed on: injecting it
 * would show the guest a fault it cannot fix, again and again. An example of a policy that resolves exits;
 * replace it with yours.
 *
 * @example
 * { "backend": "vmx", "mmu": "shadow", "policies": [{ "use": "vmexit-policy-template", "options": { "from": 0, "to": 4096 } }] }
 */
export const reflectRange: FaultPolicy<ReflectRangeOptions> = {
  name: 'reflect-range',
  description: "inject the #PF exits of a guest address range that the guest's own tables do not allow, without asking the MMU",
  needs: [],
  optionsSchema: reflectRangeOptions,
  // The counters that show what it did, under their --json names: `vmexit run` prints the nonzero ones in its
  // `policies` row (`vmexit-policy-template: reflect_range.injected 64`).
  counters: ['reflect_range.injected'],
  exits: (ctx) => {
    const r = new WalkResult(); // one per vCPU, reused: the exit path allocates nothing
    return resolveExits('reflect-range', (e) => {
      if (e.kind !== 'exception' || e.vector !== PF_VECTOR || e.address < ctx.options.from || e.address >= ctx.options.to) return null;
      // The guest's own walk, without side effects (no A/D bits set): SDM Vol. 3A §4.7 error code if it faults.
      if (walk(ctx.vcpu.ctx, ctx.vcpu.memory, e.address, e.access, 0, r) !== WALK_PAGE_FAULT) return null;
      ctx.count('reflect_range.injected');
      return { kind: 'inject', vector: PF_VECTOR, errorCode: r.errorCode };
    });
  },
};

/** What vmexit loads when a variant names this package: a ContainerModule that binds the policy. */
export const containerModule = new ContainerModule(({ bind }) => {
  bind<FaultPolicy<ReflectRangeOptions>>(TYPES.FaultPolicy).toConstantValue(reflectRange);
});

export default containerModule;
