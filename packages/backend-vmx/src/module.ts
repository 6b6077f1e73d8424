import { TYPES, type Backend, type PageFaultFilter, type PageModificationLogging } from '@vmexit/core';
import { ContainerModule } from 'inversify';
import { VmxBackend } from './backend.js';

/** Binds the VMX backend and the capabilities only VMX has: `PageFaultFilter` (PFEC_MASK/PFEC_MATCH) and `PageModificationLogging` (PML). */
export const vmxModule = new ContainerModule(({ bind }) => {
  const backend = new VmxBackend();
  bind<Backend>(TYPES.Backend).toConstantValue(backend as Backend);
  bind<PageFaultFilter>(TYPES.PageFaultFilter).toConstantValue(backend);
  bind<PageModificationLogging>(TYPES.PageModificationLogging).toConstantValue(backend as PageModificationLogging);
});

export default vmxModule;
