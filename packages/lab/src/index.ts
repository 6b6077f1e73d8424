export { runVariant, deterministicPart, type RunOptions, type LabRunResult } from './run.js';
export {
  compareVariants,
  comparisonLabel,
  comparisonMetrics,
  comparisonTable,
  variantLabel,
  EXIT_KIND_NAMES,
  type ComparisonDocument,
  type ComparisonOptions,
  type ComparisonResult,
  type ComparisonRow,
  type Metric,
} from './compare.js';
export {
  sweep,
  renderSweepProgress,
  InProcessExecutor,
  ThreadPoolExecutor,
  type CellExecutor,
  type SweepOptions,
  type SweepOutcome,
  type SweepProgressInfo,
} from './sweep.js';
export { cellKey, expandGrid, runCell, withParams, type Cell, type CellOutcome, type CellRecord, type RunCell, type SweepGrid } from './cell.js';
export { ResultStore, readResults, writeAtomically } from './store.js';
export { summarize, summaryCsv, spread, type Spread, type SummaryGroup } from './summary.js';
export { provenance, packagesOf, packageVersion, type Provenance } from './provenance.js';
export {
  parseVariantSpec,
  absoluteSpec,
  variantFromOptions,
  rawVariant,
  readConfig,
  readCostModel,
  parseSize,
  checkGuestMemory,
  checkVariantFlags,
  memoryLimitText,
  variantInputError,
  type VariantOptions,
  type VariantOverrides,
  type VariantContext,
} from './variant-spec.js';
export {
  runOnVariant,
  runChecked,
  checkFailure,
  compareGuestViews,
  guestViewOf,
  describeVariant,
  ALLOWED_DIFFERENCES,
  JsonLinesTracer,
  nativeCounters,
  type VariantRunOptions,
  type VariantRunResult,
  type VariantRunOutcome,
  type GuestView,
  type CheckReport,
  type CheckDifference,
  type MemoryDifference,
  type AllowedDifference,
  type AllowedDifferenceId,
} from './run-variant.js';
export { InputError, RunFailure } from './errors.js';
export { reportCharts, reportHtml, type ReportChart, type ReportInput } from './report.js';
export { traceStats, formatTraceStats, exitCycles, type TraceStats, type TraceStatsOptions, type ReasonStats } from './trace-stats.js';
export { migrate, formatMigrate, DIRTY_LOG_MODES, type DirtyLogMode, type MigrateOptions, type MigrateResult, type MigrateRound } from './migrate.js';
export { exploreScenario, exploreScenarios, formatExplore, type ExploreDocument } from './explore.js';
