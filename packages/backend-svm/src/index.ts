/**
 * @vmexit/backend-svm: AMD SVM (APM Vol. 2 ch. 15) for vmexit. Public: the module, the backend class, its VMCB
 * state, its error class, and the exit codes (APM Vol. 2 Appendix C) with their names; the intercept, EVENTINJ and EXITINFO bits
 * are internal.
 *
 * @module
 */
export {
  exitCodeName,
  SVM_EXIT_CODE_NAMES,
  VMEXIT_CPUID,
  VMEXIT_CR0_READ,
  VMEXIT_CR0_SEL_WRITE,
  VMEXIT_CR0_WRITE,
  VMEXIT_CR2_READ,
  VMEXIT_CR2_WRITE,
  VMEXIT_CR3_READ,
  VMEXIT_CR3_WRITE,
  VMEXIT_CR4_READ,
  VMEXIT_CR4_WRITE,
  VMEXIT_CR8_READ,
  VMEXIT_CR8_WRITE,
  VMEXIT_EXCP_BASE,
  VMEXIT_EXCP_LAST,
  VMEXIT_HLT,
  VMEXIT_INTR,
  VMEXIT_INVALID,
  VMEXIT_INVLPG,
  VMEXIT_INVLPGA,
  VMEXIT_IOIO,
  VMEXIT_MSR,
  VMEXIT_NMI,
  VMEXIT_NPF,
  VMEXIT_SHUTDOWN,
  VMEXIT_TASK_SWITCH,
  VMEXIT_VINTR,
  VMEXIT_VMMCALL,
  VMEXIT_VMRUN,
} from './constants.js';
export { BackendError, type BackendErrorCode } from './errors.js';
export { Vmcb } from './state.js';
export { SvmBackend } from './backend.js';
export { svmModule, svmModule as default } from './module.js';
