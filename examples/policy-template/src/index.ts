import { PF_VECTOR, TYPES, resolveExits, type FaultPolicy } from '@vmexit/core';
import { ContainerModule } from 'inversify';
import { z } from 'zod';

/** The options: validated by `optionsSchema` when a variant names the policy (unknown keys are errors). */
export const reflectRangeOptions = z.strictObject({
  /** The guest linear addresses [from, to) whose #PFs are reflected into the guest at once. */
  from: z.number().int().default(0),
  to: z.number().int().default(0),
});
export type ReflectRangeOptions = z.output<typeof reflectRangeOptions>;

/**
 * `reflect-range`: a #PF exit at an address in [from, to) is injected back into the guest without asking
 * the MMU (as KVM does with a fault its guest walk finds to be the guest's own), and counted as
 * `reflect_range.injected`. An example of a policy that resolves exits; replace it with yours.
 *
 * @example
 * { "backend": "vmx", "mmu": "shadow", "policies": [{ "use": "vmexit-policy-template", "options": { "from": 0, "to": 4096 } }] }
 */
export const reflectRange: FaultPolicy<ReflectRangeOptions> = {
  name: 'reflect-range',
  description: 'inject the #PF exits of a guest address range into the guest without asking the MMU',
  needs: [],
  optionsSchema: reflectRangeOptions,
  exits: (ctx) =>
    resolveExits('reflect-range', (e) => {
      if (e.kind !== 'exception' || e.vector !== PF_VECTOR || e.address < ctx.options.from || e.address >= ctx.options.to) return null;
      ctx.count('reflect_range.injected');
      return { kind: 'inject', vector: PF_VECTOR, errorCode: e.errorCode };
    }),
};

/** What vmexit loads when a variant names this package: a ContainerModule that binds the policy. */
export const containerModule = new ContainerModule(({ bind }) => {
  bind<FaultPolicy<ReflectRangeOptions>>(TYPES.FaultPolicy).toConstantValue(reflectRange);
});

export default containerModule;
