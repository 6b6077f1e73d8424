import type { CpuDirtyLogControl, DirtyLogMmu, FastPageFaultControl, Mmu } from '@vmexit/core';
import { ContainerModule } from 'inversify';
import { TdpMmu, type TdpMmuOptions } from './mmu.js';

/** core's `TYPES.Mmu` (a `Symbol.for` token, so it is the same symbol whichever copy of core defines it). */
export const MMU_TOKEN: symbol = Symbol.for('vmexit.Mmu');

/** core's `TYPES.FastPageFault` and `TYPES.DirtyLogMmu` capabilities. */
export const FAST_PAGE_FAULT_TOKEN: symbol = Symbol.for('vmexit.FastPageFault');
export const DIRTY_LOG_MMU_TOKEN: symbol = Symbol.for('vmexit.DirtyLogMmu');
/** core's `TYPES.CpuDirtyLogging` capability (the `pml` policy). */
export const CPU_DIRTY_LOGGING_TOKEN: symbol = Symbol.for('vmexit.CpuDirtyLogging');

/** The module's own token for its one TdpMmu (Mmu and the capabilities all resolve to it). */
const TDP_MMU: symbol = Symbol('vmexit.mmu-tdp.TdpMmu');

/**
 * A ContainerModule binding a TDP MMU with `options` to `TYPES.Mmu`, and the same MMU as the `FastPageFault`,
 * `DirtyLogMmu` and `CpuDirtyLogging` capabilities. Policies that need `NonPresentSpteEncoding` or `ShadowPageTables`
 * (shadow-paging ideas) are refused when the variant is composed, with the capability's name. Each container
 * that loads the module (each VM) gets its own MMU.
 */
export function tdpMmuModule(options: TdpMmuOptions = {}): ContainerModule {
  return new ContainerModule(({ bind }) => {
    bind<TdpMmu>(TDP_MMU)
      .toDynamicValue(() => new TdpMmu(options))
      .inSingletonScope();
    bind<Mmu>(MMU_TOKEN).toService(TDP_MMU);
    bind<FastPageFaultControl>(FAST_PAGE_FAULT_TOKEN).toService(TDP_MMU);
    bind<DirtyLogMmu>(DIRTY_LOG_MMU_TOKEN).toService(TDP_MMU);
    bind<CpuDirtyLogControl>(CPU_DIRTY_LOGGING_TOKEN).toService(TDP_MMU);
  });
}

/** The TDP MMU with KVM's defaults (4 KiB host pages). */
export const containerModule = tdpMmuModule();

export default containerModule;
