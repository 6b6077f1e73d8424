import { TYPES, type Backend, type PageFaultFilter } from '@vmexit/core';
import { ContainerModule } from 'inversify';
import { VmxBackend } from './backend.js';

/** Binds the VMX backend and the capability only VMX has: `PageFaultFilter` (PFEC_MASK/PFEC_MATCH). */
export const vmxModule = new ContainerModule(({ bind }) => {
  const backend = new VmxBackend();
  bind<Backend>(TYPES.Backend).toConstantValue(backend as Backend);
  bind<PageFaultFilter>(TYPES.PageFaultFilter).toConstantValue(backend);
});

export default vmxModule;
