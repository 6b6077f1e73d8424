/** @vmexit/backend-vmx: Intel VMX (SDM Vol. 3C) for vmexit. */
export * from './constants.js';
export * from './state.js';
export * from './backend.js';
export { vmxModule, vmxModule as default } from './module.js';
