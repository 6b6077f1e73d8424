/**
 * @vmexit/lab: running experiments (one run, comparisons, sweeps, reports) on variants of the VM.
 *
 * Public: `runVariant`, `compareVariants`, `sweep` with its executors and cells, `reportHtml`/`reportCharts`, the
 * result store's reader, summaries, trace statistics, and reading a variant from a spec or from flags as the
 * CLI does. `@vmexit/lab/queue` runs sweeps across machines (BullMQ on Redis).
 *
 * @module
 */
export { deterministicPart, type LabRunResult, type RunOptions, runVariant } from './run.js';
export {
  compareVariants,
  type ComparisonDocument,
  comparisonLabel,
  comparisonMetrics,
  checkCounterPatterns,
  type ComparisonInput,
  type ComparisonMetricOptions,
  type ExitReasonCost,
  type LabelledVariant,
  unmatchedCounters,
  type ComparisonOptions,
  type ComparisonResult,
  type ComparisonRow,
  comparisonTable,
  EXIT_KIND_NAMES,
  type Metric,
  variantLabel,
} from './compare.js';
export { type CellExecutor, InProcessExecutor, sweep, type SweepOptions, type SweepOutcome, ThreadPoolExecutor } from './sweep.js';
export { renderSweepProgress, type SweepProgressInfo } from './progress.js';
export {
  type Cell,
  cellInputFiles,
  type CellInput,
  cellKey,
  type CellOutcome,
  type CellRecord,
  checkCellInputs,
  expandGrid,
  runCell,
  type RunCell,
  type SweepGrid,
  withInputDigests,
  withParams,
} from './cell.js';
export { CellTraceLoader, type CellTraceLoaderOptions } from './cell-traces.js';
export { createFileDigests, type FileDigests, type FileDigestsOptions } from './file-digests.js';
export { readResults } from './store.js';
export { spread, type Spread, summarize, summaryCsv, type SummaryGroup } from './summary.js';
export { provenance, type Provenance } from './provenance.js';
export {
  absoluteSpec,
  checkGuestMemory,
  checkHostPages,
  checkModeMemory,
  checkVariantFlags,
  memoryLimitText,
  parseSize,
  parseVariantSpec,
  rawVariant,
  readConfig,
  readCostModel,
  type VariantContext,
  variantFromOptions,
  variantInputError,
  variantInputFiles,
  type VariantOptions,
  type VariantOverrides,
} from './variant-spec.js';
export {
  ALLOWED_DIFFERENCES,
  type AllowedDifference,
  type AllowedDifferenceId,
  type CheckDifference,
  checkFailure,
  type CheckReport,
  compareGuestViews,
  type GuestView,
  type MemoryDifference,
  type PolicyCounters,
  runChecked,
  runOnVariant,
  type VariantRunOptions,
  type VariantRunOutcome,
  type VariantRunResult,
  withPmlPolicy,
} from './run-variant.js';
export { InputError, RunFailure } from './errors.js';
export { readReportData, type ReportChart, reportCharts, type ReportData, reportHtml, type ReportInput } from './report.js';
export { exitCycles, formatTraceStats, type ReasonStats, traceStats, type TraceStats, type TraceStatsOptions } from './trace-stats.js';
export { parseTraceFilter, parseTraceSample, SelectingTracer, traceSelectionLine, type TraceSelection } from './trace-select.js';
export {
  DEFAULT_DIRTY_RING_ENTRIES,
  DIRTY_LOG_MODES,
  type DirtyLogMode,
  formatMigrate,
  migrate,
  type MigrateOptions,
  type MigrateResult,
  type MigrateRound,
} from './migrate.js';
export { GUEST_ACCESS_CYCLES, guestProgress, timeMmuLock, vcpuClock } from './lock-time.js';
export { type ExploreDocument, exploreScenario, exploreScenarios, type ExploreTarget, formatExplore } from './explore.js';
