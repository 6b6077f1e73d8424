import type { DirtyLogMmu, FastPageFaultControl, Mmu, NonPresentSpteEncoding } from '@vmexit/core';
import { ContainerModule } from 'inversify';
import { ShadowMmu, type ShadowMmuOptions } from './mmu.js';

/** core's `TYPES.Mmu` (a `Symbol.for` token, so it is the same symbol whichever copy of core defines it). */
export const MMU_TOKEN: symbol = Symbol.for('vmexit.Mmu');

/** core's `TYPES.NonPresentSpteEncoding` capability (the bypass policy's trap / notrap sptes). */
export const NON_PRESENT_SPTE_ENCODING_TOKEN: symbol = Symbol.for('vmexit.NonPresentSpteEncoding');

/** core's `TYPES.ShadowPageTables` capability (the policies that act on guest page-table writes and shadow pages). */
export const SHADOW_PAGE_TABLES_TOKEN: symbol = Symbol.for('vmexit.ShadowPageTables');
/** core's `TYPES.FastPageFault` and `TYPES.DirtyLogMmu` capabilities. */
export const FAST_PAGE_FAULT_TOKEN: symbol = Symbol.for('vmexit.FastPageFault');
export const DIRTY_LOG_MMU_TOKEN: symbol = Symbol.for('vmexit.DirtyLogMmu');

/** The module's own token for its one ShadowMmu (Mmu and NonPresentSpteEncoding both resolve to it). */
const SHADOW_MMU: symbol = Symbol('vmexit.mmu-shadow.ShadowMmu');

/**
 * A ContainerModule binding a shadow MMU with `options` to `TYPES.Mmu`, and the same MMU as the
 * `NonPresentSpteEncoding` and `ShadowPageTables` capabilities. Each container that loads the module (each VM) gets its own MMU.
 */
export function shadowMmuModule(options: ShadowMmuOptions = {}): ContainerModule {
  return new ContainerModule(({ bind }) => {
    bind<ShadowMmu>(SHADOW_MMU)
      .toDynamicValue(() => new ShadowMmu(options))
      .inSingletonScope();
    bind<Mmu>(MMU_TOKEN).toService(SHADOW_MMU);
    bind<NonPresentSpteEncoding>(NON_PRESENT_SPTE_ENCODING_TOKEN).toService(SHADOW_MMU);
    bind<Mmu>(SHADOW_PAGE_TABLES_TOKEN).toService(SHADOW_MMU);
    bind<FastPageFaultControl>(FAST_PAGE_FAULT_TOKEN).toService(SHADOW_MMU);
    bind<DirtyLogMmu>(DIRTY_LOG_MMU_TOKEN).toService(SHADOW_MMU);
  });
}

/** The shadow MMU with KVM's defaults. */
export const containerModule = shadowMmuModule();

export default containerModule;
