import type { Mmu } from '@vmexit/core';
import { ContainerModule } from 'inversify';
import { ShadowMmu, type ShadowMmuOptions } from './mmu.js';

/** core's `TYPES.Mmu` (a `Symbol.for` token, so it is the same symbol whichever copy of core defines it). */
export const MMU_TOKEN: symbol = Symbol.for('vmexit.Mmu');

/** A ContainerModule binding a shadow MMU with `options` to `TYPES.Mmu` (one instance per container, i.e. per VM). */
export function shadowMmuModule(options: ShadowMmuOptions = {}): ContainerModule {
  return new ContainerModule(({ bind }) => {
    bind<Mmu>(MMU_TOKEN).toConstantValue(new ShadowMmu(options));
  });
}

/** The shadow MMU with KVM's defaults. */
export const containerModule = shadowMmuModule();

export default containerModule;
