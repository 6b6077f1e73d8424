import type { Command } from 'commander';
import { registerConformance } from './conformance.js';
import { registerTrace } from './trace.js';
import { registerPolicies } from './policies.js';
import { registerRun } from './run.js';
import { registerCompare } from './compare.js';
import { registerMain } from './main.js';
import { registerWorkloads } from './workloads.js';
import { registerSweep } from './sweep.js';
import { registerWorker } from './worker.js';
import { registerReport } from './report.js';
import { registerMigrate } from './migrate.js';
import { registerExplore } from './explore.js';

/** A subcommand: adds itself to the program. Each lives in its own file under commands/. */
export type CommandRegistration = (program: Command) => void;

/** The subcommands, in the order `vmexit --help` lists them. */
export const commands: CommandRegistration[] = [
  registerMain,
  registerRun,
  registerCompare,
  registerSweep,
  registerWorker,
  registerReport,
  registerMigrate,
  registerExplore,
  registerConformance,
  registerTrace,
  registerPolicies,
  registerWorkloads,
];
