import { DEFAULT_MODULE_SOURCES, type Memslot, type ModuleSources } from '@vmexit/core';
import { ShadowMmu } from '@vmexit/mmu-shadow';
import { ContainerModule } from 'inversify';

/**
 * A shadow MMU whose harvest forgets to write-protect again (its re-protection does nothing): pages written
 * after a harvest go unlogged, which the dirty-log checks and migration's digest comparison must catch.
 */
export class ForgetfulShadowMmu extends ShadowMmu {
  override writeProtectMasked(_slot: Memslot, _offset: number, _mask: number): boolean {
    return false;
  }
}

/** The module that binds a ForgetfulShadowMmu as the VM's MMU, dirty-log MMU and fast page fault handler. */
export const forgetful = new ContainerModule(({ bind }) => {
  const S = Symbol('forgetful');
  bind(S)
    .toDynamicValue(() => new ForgetfulShadowMmu())
    .inSingletonScope();
  bind(Symbol.for('vmexit.Mmu')).toService(S);
  bind(Symbol.for('vmexit.DirtyLogMmu')).toService(S);
  bind(Symbol.for('vmexit.FastPageFault')).toService(S);
});

/** The built-in module sources with the forgetful MMU as `shadow`. */
export const forgetfulSources: ModuleSources = { ...DEFAULT_MODULE_SOURCES, mmus: { shadow: forgetful } };
