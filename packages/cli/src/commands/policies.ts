import { capabilityProviders, composeVariant, DEFAULT_MODULE_SOURCES, listPolicies, type AvailablePolicy, type ModuleSources } from '@vmexit/core';
import type { Command } from 'commander';
import { addVariantOptions, checkGuestMemory, rawVariant, variantInputError, type VariantOptions } from '../variant-options.js';

/**
 * `vmexit policies [--json] [variant flags]`: lists the built-in policies and those named by the variant's
 * `--policy` / `--config` (third-party packages and paths), with what each needs and who provides it. With
 * `--backend`, `--policy` or `--config`, it also checks that variant and fails (exit 2) on any problem, such as
 * a policy whose capability the backend lacks.
 */
export function registerPolicies(program: Command, sources: ModuleSources = DEFAULT_MODULE_SOURCES): void {
  const cmd = program
    .command('policies')
    .description('list the fault policies available, with the capabilities each needs')
    .option('--json', 'print JSON instead of a table');
  addVariantOptions(cmd).action(async (opts: VariantOptions & { json?: boolean }) => {
    const cwd = process.cwd();
    // Any variant flag makes it a check of that variant: `--mmu tdp` or `--vcpus abc` alone must not list and exit 0.
    const checking = [opts.backend, opts.mmu, opts.policy, opts.config, opts.costModel, opts.vcpus, opts.memory, opts.hostPages].some((v) => v !== undefined);
    const raw = await rawVariant(opts, cwd);
    const from = typeof raw.resolveFrom === 'string' ? raw.resolveFrom : cwd;
    const extra: string[] = [];
    if (Array.isArray(raw.policies)) {
      for (const p of raw.policies as { use?: unknown }[]) if (typeof p?.use === 'string') extra.push(p.use.replace(/#[^/]*$/, ''));
    }
    if (checking) {
      const comp = await composeVariant(raw, sources);
      if (comp.problems.length > 0 || comp.variant === null) throw variantInputError(comp.problems, opts.config);
      checkGuestMemory(comp.variant.memory, opts.memory !== undefined ? '--memory' : `--config ${opts.config}: memory`);
    }
    const { policies: builtIn, errors } = await listPolicies(sources, from);
    const names = new Set(builtIn.map((p) => p.policy.name));
    const third = await listPolicies(
      { ...sources, policies: [] },
      from,
      extra.filter((e) => !names.has(e)),
    );
    const all: AvailablePolicy[] = [...builtIn, ...third.policies];
    const prov = await capabilityProviders(sources, from);
    const rows = all.map(({ policy, source }) => ({
      name: policy.name,
      source,
      needs: policy.needs.map((n) => ({ capability: n, providedBy: prov.get(n) ?? [] })),
      description: policy.description,
    }));
    if (opts.json === true) {
      process.stdout.write(`${JSON.stringify({ policies: rows, errors }, null, 2)}\n`);
      return;
    }
    if (rows.length === 0) process.stdout.write('no policies available\n');
    for (const r of rows) {
      const needs =
        r.needs.length === 0
          ? 'nothing'
          : r.needs.map((n) => `${n.capability} (${n.providedBy.length > 0 ? n.providedBy.join(', ') : 'no provider'})`).join(', ');
      process.stdout.write(`${r.name}\n  from:  ${r.source}\n  needs: ${needs}\n  ${r.description}\n`);
    }
    for (const e of errors) process.stderr.write(`vmexit: warning: ${e}\n`);
  });
}
