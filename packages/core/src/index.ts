/**
 * @vmexit/core: the x86 paging model, guest-physical memory, the vCPU and its TLB, the exit pipeline and
 * the composition of a VM. See DESIGN.md for the contracts the leaf packages implement.
 *
 * Public: what a user composes (`createVm`, variants, cost models), the contracts a plugin implements
 * (`Backend`, `Mmu`, `FaultPolicy` and the capability interfaces, with the exit and MMU-event types they
 * see), the architecture's names (control-register, pte and error-code bits, paging modes), the machine a
 * guest model drives (`Machine`, `Vcpu`, `GuestMemory`), the observers, and the conformance runner. The
 * mechanisms an MMU is built from are `@vmexit/core/mmu`; test helpers for policies are
 * `@vmexit/core/testing`. Everything else (the exit pipeline's channels, the TLB, the VM's hooks, the
 * nested walker) is internal and may change in any release.
 *
 * @module
 */

// The architecture: names from the Intel SDM Vol. 3A (control registers, pte bits, #PF error code, paging modes).
export {
  ACC_FETCH,
  ACC_MASK,
  ACC_READ,
  ACC_USER,
  ACC_WRITE,
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_LA57,
  CR4_PAE,
  CR4_PCIDE,
  CR4_PGE,
  CR4_PKE,
  CR4_PSE,
  CR4_SMAP,
  CR4_SMEP,
  DE_VECTOR,
  DF_VECTOR,
  EFER_LMA,
  EFER_LME,
  EFER_NXE,
  GP_VECTOR,
  PAGE_MASK,
  PAGE_SHIFT,
  PAGE_SIZE,
  pageNumber,
  PF_VECTOR,
  PFERR_DEFINED,
  PFERR_FETCH,
  PFERR_PK,
  PFERR_PRESENT,
  PFERR_RSVD,
  PFERR_SGX,
  PFERR_SS,
  PFERR_USER,
  PFERR_WRITE,
  PT_ACCESSED,
  PT_DIRTY,
  PT_GLOBAL,
  PT_HI_PKEY_SHIFT,
  PT_HI_XD,
  PT_PAGE_SIZE,
  PT_PAT_LARGE,
  PT_PCD,
  PT_PRESENT,
  PT_PWT,
  PT_USER,
  PT_WRITABLE,
  RFLAGS_AC,
  SIZE_1G,
  SIZE_2M,
  SIZE_4M,
  TWO_POW_32,
  UD_VECTOR,
} from './arch/constants.js';
export {
  MODE_LEGACY32,
  MODE_LONG4,
  MODE_LONG5,
  MODE_PAE,
  PAGING_MODE_NAMES,
  pagingModeId,
  type PagingModeId,
  pagingModeName,
  type PagingModeName,
} from './arch/modes.js';
export { hexHiLo, hexU64 } from './arch/hex.js';

// Guest-physical memory.
export { type DirectWords, type PhysicalMemory } from './memory/physical.js';
export { SparsePhysicalMemory } from './memory/sparse.js';

// The architectural page walker (SDM Vol. 3A ch. 4) and the second stage (EPT, NPT).
export { type PagingContext, type SecondStage, WALK_GP, WALK_NESTED_FAULT, WALK_OK, WALK_PAGE_FAULT, WALK_SIDE_EFFECTS, WalkResult } from './paging/types.js';
export { createPagingContext, type PagingContextInit, walk } from './paging/walker.js';
export { type EptOptions, EptStage } from './paging/ept.js';
export { PML_ENTRIES, PML_HEAD_INDEX, PmlLog } from './paging/pml.js';
export { type NptOptions, NptStage } from './paging/npt.js';

// The machine a guest model drives: vCPUs, guest memory and memslots, the hooks below a vCPU.
export { GuestAbort, MachineError, type MachineErrorCode } from './machine/errors.js';
export { FAULT_DELIVER, FAULT_DONE, FAULT_RETRY, type FaultAction, type VcpuHooks } from './machine/hooks.js';
export {
  defaultMemslots,
  DIGEST_FORMAT,
  GuestMemory,
  guestPhysicalEnd,
  HIGH_RAM_START,
  MAX_GUEST_RAM,
  type Memslot,
  type MemslotSpec,
  MMIO_HOLE_START,
} from './machine/guest-memory.js';
export { Machine, type MachineOptions } from './machine/machine.js';
// The V8 flags the simulator runs with (the CLI and the benchmarks set them as they start).
export { tuneV8, V8_FLAGS } from './engine.js';
export { Rng } from './machine/rng.js';
export { type ExceptionHandler, MSR_EFER, Vcpu } from './machine/vcpu.js';

// Exits, MMU events, the policy API and the observers.
export {
  type CrWriteExit,
  EMULATE,
  type ExceptionExit,
  type ExitResolution,
  type HardwareExit,
  type HardwareExitBuffer,
  type InvlpgExit,
  type MmioExit,
  type NestedFaultExit,
  RESUME,
  VM_EXIT_KINDS,
  type VmExit,
  type VmExitKind,
} from './exits/vm-exit.js';
export { ExitError, type ExitErrorCode } from './exits/errors.js';
export { resolveExits } from './exits/policy.js';
export { type FaultPolicy, type OptionsSchema, type PolicySetupContext, type PolicyVcpuContext } from './vm/policy.js';
export {
  decideMmuEvents,
  type FloodEvent,
  type MmuAnswerOf,
  type MmuDecisionOf,
  type MmuEvent,
  type MmuEventKind,
  type MmuEventOf,
  type MmuEventOperator,
  type PrefetchEvent,
  type PteWriteDecision,
  type PteWriteEvent,
  type TrackedWriteEvent,
  type UnsyncEvent,
} from './exits/mmu-events.js';
export { keyCache, type StatCell } from './exits/stats.js';
export { ArrayRecorder, type ExitRecorder, type ExitTracer, JsonLinesTracer, NoopRecorder, NoopTracer } from './exits/observers.js';

// Composing a VM: the contracts of backends and MMUs, DI tokens, variants, module loading.
export {
  type Backend,
  CAPABILITIES,
  type CapabilityInfo,
  type CapabilityProvider,
  type FastPageFaultControl,
  type PageModificationLogging,
  type CpuDirtyLogControl,
  type MmuMode,
  type NestedRootOptions,
  type NonPresentSpteEncoding,
  type PageFaultFilter,
} from './vm/backend.js';
export { type Mmu, type MmuHost } from './vm/mmu.js';
export { DirtyLog, DirtyLogError, type DirtyLogMmu, type DirtyLogSlotOptions } from './mmu/dirty-log.js';
export {
  checkDirtyRingEntries,
  DirtyRing,
  DirtyRingError,
  KVM_DIRTY_GFN_BYTES,
  KVM_DIRTY_GFN_F_DIRTY,
  KVM_DIRTY_GFN_F_RESET,
  KVM_DIRTY_RING_MAX_ENTRIES,
  KVM_DIRTY_RING_RSVD_ENTRIES,
} from './mmu/dirty-ring.js';
export { TYPES } from './vm/tokens.js';
export {
  HOST_PAGE_SIZES,
  type HostPages,
  parseVariant,
  type PolicyUse,
  type Variant,
  VariantError,
  type VariantInput,
  type VariantProblem,
} from './vm/variant.js';
export { DEFAULT_MODULE_SOURCES, isPathSpecifier, ModuleLoadError, resolveSpecifier, type ModuleSource, type ModuleSources } from './vm/modules.js';
export { type AvailablePolicy, capabilityProviders, composeVariant, type Composition, listPolicies } from './vm/compose.js';
export { createVm, type CreateVmOptions, Vm, type VmCounters } from './vm/vm.js';

// Cost models: pricing counters in modelled cycles.
export { COST_HANDLER_COUNTERS, type CostFigure, type CostProfile, type CostReport, modelCycles, pricedCounters } from './cost/model.js';
export { builtInCostProfile, COST_PROFILES, DEFAULT_COST_PROFILE, PROFILE_2007, PROFILE_CLOUD_VM, PROFILE_SERVER } from './cost/profiles.js';
export { type CostModelInput, costProfileSchema, MAX_FIGURE_CYCLES, parseCostProfile, resolveCostProfile } from './cost/schema.js';
// The files users write (variant files, cost models) are read as I-JSON: no member name twice in an object.
export { type DuplicateJsonKey, findDuplicateJsonKey, JsonDuplicateKeyError, parseJsonStrict } from './json-strict.js';

// The conformance runner: test vectors run on the native machine (and on a variant by the CLI).
export {
  type ConformanceVector,
  type VectorCpu,
  type VectorDontCare,
  VectorError,
  type VectorExpect,
  type VectorMemoryEntry,
  type VectorOutcome,
  vectorToJson,
} from './conformance/vector.js';
export { createReferenceVectorMachine } from './conformance/reference.js';
export { EXTENDED_CASES, type ExtendedCase, extendedCaseVector, extendedCaseVectors } from './conformance/extended.js';
export { loadVectorFile } from './conformance/load.js';
export {
  ACCESS_CASE_FLAGS,
  ACCESS_CASE_MAXPHYADDRS,
  type AccessCase,
  type AccessCaseFlag,
  accessCaseId,
  accessCaseSpace,
  accessCaseVector,
  accessFlagsLegal,
  canonicalAccessFlags,
  sweepCase,
} from './conformance/generate.js';
export {
  type AccessOutcome,
  createNativeVectorMachine,
  nativeVectorMachineFactory,
  vectorLinearAddress,
  type VectorMachine,
  type VectorMachineFactory,
} from './conformance/machine.js';
export {
  type ConformanceReport,
  formatFailure,
  formatSummary,
  type Mismatch,
  reportToJson,
  runConformance,
  runVector,
  type VectorObservation,
  type VectorResult,
} from './conformance/runner.js';

// Racing vCPUs: scenarios of threads that interleave at the MMU's points of contention, and the explorer that runs every interleaving.
export { type RaceInstance, type RaceScenario, type RaceThread } from './race/thread.js';
export {
  Harvester,
  type HarvestWorld,
  RACE_RING_ENTRIES,
  RaceHost,
  RingHarvester,
  type RingHarvestWorld,
  type RingMutation,
  sequentialDigests,
} from './race/harvest.js';
export { GuestWriter, type GuestWrite, type GuestWriterMmu, type SteppedFastFault } from './race/writer.js';
export { type UnmapMmu, Unmapper } from './race/unmapper.js';
export {
  type MigrationGuest,
  type MigrationMmu,
  type MigrationMutation,
  migrationScenario,
  type MigrationScenarioSpec,
  MigrationWorld,
  type MigrationWorldOptions,
} from './race/world.js';
export { explore, type ExploreOptions, type ExploreResult, type RaceViolation, replaySchedule, runSequential, type ScheduleStep } from './race/explore.js';
