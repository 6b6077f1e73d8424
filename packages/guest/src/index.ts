export * from './trace/index.js';
export * from './os/layout.js';
export * from './os/frames.js';
export { PROT_NONE, VMA_ANON, VMA_FILE_PRIVATE, VMA_FILE_SHARED, VMA_ALIAS, Vma, VmaList, type FileObject } from './os/vma.js';
export * from './os/stats.js';
export {
  Kernel,
  Process,
  KernelPanic,
  GuestConfigError,
  PERSONALITIES,
  TLB_SINGLE_PAGE_FLUSH_CEILING,
  fileWord,
  type Personality,
  type KernelOptions,
  type ImageSpec,
  type AreaSpec,
} from './os/kernel.js';
export * from './os/tasks.js';
export * from './workloads/params.js';
export * from './workloads/synthetic.js';
export * from './replay.js';
export * from './run.js';
export * from './relocate.js';
