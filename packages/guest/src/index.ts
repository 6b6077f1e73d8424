/**
 * @vmexit/guest: the guest OS model, its synthetic workloads and the .vxt trace format.
 *
 * Public: running a workload (`runWorkload`), the workloads and their parameters (`SYNTHETIC_WORKLOADS`,
 * `SyntheticWorkload` to write one), the trace API (`.vxt` encode/decode/read, `describeVxt`, `importLackey`),
 * and the OS model's surface that workloads and the CLI drive (`Kernel`, `Process`, tasks, VMAs, the fault log).
 * The frame allocator, the page-table layout, the replay engine and trace relocation are internal.
 *
 * @module
 */
export { nativeCounters, type RunCounters, type RunOptions, type RunOutcome, type RunResult, runWorkload } from './run.js';
export { type ParamDef, parseWorkloadRef, resolveParams, WorkloadError, type WorkloadRef } from './workloads/params.js';
export {
  type DirtyLogCheck,
  HARVEST_MODES,
  MAX_WORKLOAD_WORK,
  type MeasureWindow,
  SYNTHETIC_WORKLOADS,
  type SyntheticWorkload,
  type WorkloadContext,
} from './workloads/synthetic.js';
export {
  type AccessKind,
  KIND_FETCH,
  KIND_LOAD,
  KIND_MODIFY,
  KIND_NAMES,
  KIND_STORE,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_EXEC,
  PROT_READ,
  PROT_WRITE,
  type VxtAccesses,
  type VxtBrkEvent,
  type VxtCollapse,
  type VxtEvent,
  type VxtExecEvent,
  type VxtExitEvent,
  type VxtForkEvent,
  type VxtMapping,
  type VxtMmapEvent,
  type VxtMprotectEvent,
  type VxtMunmapEvent,
  type VxtProcess,
  type VxtTrace,
} from './trace/types.js';
export { decodeVxt, encodeVxt, type EncodeVxtOptions, readVxtFile, readVxtHeader, VXT_MAGIC, VXT_VERSION, type VxtHeader } from './trace/vxt.js';
export { describeVxt, type VxtDescription } from './trace/describe.js';
export { importLackey, type ImportLackeyOptions } from './trace/lackey.js';
export { TraceError } from './trace/errors.js';
export { type RelocationGroup, type RelocationMisfit, type TraceFit, traceFit } from './relocate.js';
export { createTraceLoader, KBUILD_TRACE_PATH, type TraceLoader } from './replay.js';
export { Kernel } from './os/kernel.js';
export { type AreaSpec, type ImageSpec, Process } from './os/process.js';
export { type KernelOptions, PERSONALITIES, type Personality } from './os/state.js';
export { GuestConfigError, KernelPanic } from './os/errors.js';
export { type Program, type ProgramFactory, Task, TaskRunner, type TaskRunnerOptions } from './os/tasks.js';
export {
  FAULT_COW,
  FAULT_DEMAND_ZERO,
  FAULT_FILE,
  FAULT_KIND_NAMES,
  FAULT_SIGSEGV,
  FAULT_SPURIOUS,
  FAULT_WP_REUSE,
  FAULT_ZERO_PAGE,
  type FaultKindName,
  GuestEventLog,
  type GuestFaultEvent,
  KernelStats,
} from './os/stats.js';
export { type FileObject, PROT_NONE, Vma, VMA_ALIAS, VMA_ANON, VMA_FILE_PRIVATE, VMA_FILE_SHARED, VmaList } from './os/vma.js';
