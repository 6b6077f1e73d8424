import { TYPES, type Backend } from '@vmexit/core';
import { ContainerModule } from 'inversify';
import { SvmBackend } from './backend.js';

/** Binds the SVM backend. No `PageFaultFilter`: SVM cannot filter #PF intercepts by error code. */
export const svmModule = new ContainerModule(({ bind }) => {
  bind<Backend>(TYPES.Backend).toConstantValue(new SvmBackend() as Backend);
});

export default svmModule;
