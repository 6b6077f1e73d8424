import { SYNTHETIC_WORKLOADS } from '@vmexit/guest';
import type { Command } from 'commander';

/** One workload as `vmexit workloads` lists it: its parameters with their ranges and defaults. */
export interface WorkloadListing {
  readonly name: string;
  readonly kind: 'synthetic' | 'trace';
  readonly doc: string;
  readonly params: readonly { name: string; default: number; min: number; max: number; integer: boolean; doc: string; choices?: string[] }[];
}

/** Every workload `--workload` takes: the synthetic ones of the guest OS model, then the traces. */
export function listWorkloads(): WorkloadListing[] {
  const synthetic: WorkloadListing[] = [...SYNTHETIC_WORKLOADS.values()].map((w) => ({
    name: w.name,
    kind: 'synthetic',
    doc: w.doc,
    params: Object.entries(w.params).map(([name, d]) => ({
      name,
      default: d.default,
      min: d.min,
      max: d.max,
      integer: d.integer,
      doc: d.doc,
      ...(d.choices === undefined ? {} : { choices: [...d.choices] }),
    })),
  }));
  return [
    ...synthetic,
    { name: 'kbuild', kind: 'trace', doc: 'the bundled trace of a kernel-style build (packages/guest/traces/kbuild.vxt); no parameters', params: [] },
    { name: 'FILE.vxt', kind: 'trace', doc: 'a trace file in the vxt format (vmexit trace import makes one); no parameters', params: [] },
  ];
}

/** `vmexit workloads [--json]`: the workloads `--workload` takes, each parameter with its range and default. */
export function registerWorkloads(program: Command): void {
  program
    .command('workloads')
    .description('list the workloads, with their parameters, ranges and defaults')
    .option('--json', 'print JSON instead of a table')
    .action((opts: { json?: boolean }) => {
      const all = listWorkloads();
      if (opts.json === true) {
        process.stdout.write(`${JSON.stringify({ workloads: all }, null, 2)}\n`);
        return;
      }
      for (const w of all) {
        process.stdout.write(
          `${w.name}${w.params.length > 0 ? `:${w.params.map((p) => `${p.name}=${p.choices === undefined ? 'N' : p.choices.join('|')}`).join(',')}` : ''}\n  ${w.doc}\n`,
        );
        for (const p of w.params) {
          if (p.choices !== undefined) {
            process.stdout.write(`  ${p.name.padEnd(12)} one of ${p.choices.join(', ')}, default ${p.choices[p.default]}: ${p.doc}\n`);
            continue;
          }
          const kind = p.integer ? 'integer' : 'number';
          process.stdout.write(`  ${p.name.padEnd(12)} ${kind} ${p.min}..${p.max}, default ${p.default}: ${p.doc}\n`);
        }
      }
    });
}
