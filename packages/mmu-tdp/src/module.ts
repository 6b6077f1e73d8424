import type { Mmu } from '@vmexit/core';
import { ContainerModule } from 'inversify';
import { TdpMmu, type TdpMmuOptions } from './mmu.js';

/** core's `TYPES.Mmu` (a `Symbol.for` token, so it is the same symbol whichever copy of core defines it). */
export const MMU_TOKEN: symbol = Symbol.for('vmexit.Mmu');

/**
 * A ContainerModule binding a TDP MMU with `options` to `TYPES.Mmu`. It binds no capability: policies that
 * need `NonPresentSpteEncoding` or `ShadowPageTables` (shadow-paging ideas) are refused when the variant is
 * composed, with the capability's name. Each container that loads the module (each VM) gets its own MMU.
 */
export function tdpMmuModule(options: TdpMmuOptions = {}): ContainerModule {
  return new ContainerModule(({ bind }) => {
    bind<Mmu>(MMU_TOKEN)
      .toDynamicValue(() => new TdpMmu(options))
      .inSingletonScope();
  });
}

/** The TDP MMU with KVM's defaults (4 KiB host pages). */
export const containerModule = tdpMmuModule();

export default containerModule;
