import { TYPES, type FaultPolicy } from '@vmexit/core';
import { ContainerModule } from 'inversify';
import { bypassGuestPf } from './bypass-guest-pf.js';
import { fastPageFault } from './fast-page-fault.js';
import { misalignedWrite } from './misaligned-write.js';
import { pml } from './pml.js';
import { prefetch } from './prefetch.js';
import { pteUpdate } from './pte-update.js';
import { unsync } from './unsync.js';
import { userWriteHint } from './user-write-hint.js';
import { writeFlood } from './write-flood.js';

/** Every built-in policy, in the order `vmexit policies` lists them. */
export const BUILT_IN_POLICIES: readonly FaultPolicy<unknown>[] = [
  bypassGuestPf,
  pteUpdate,
  unsync,
  writeFlood,
  misalignedWrite,
  prefetch,
  userWriteHint,
  fastPageFault,
  pml,
] as readonly unknown[] as readonly FaultPolicy<unknown>[];

/** Multi-binds every built-in policy to `TYPES.FaultPolicy`; a variant then names them in `policies[].use`. */
export const policiesModule = new ContainerModule(({ bind }) => {
  for (const p of BUILT_IN_POLICIES) bind<FaultPolicy<unknown>>(TYPES.FaultPolicy).toConstantValue(p);
});

export default policiesModule;
