import { closeSync, fstatSync, openSync, readSync, statSync } from 'node:fs';
import { dirname, extname, isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  builtInCostProfile,
  COST_PROFILES,
  MAX_GUEST_RAM,
  MMIO_HOLE_START,
  composeVariant,
  guestPhysicalEnd,
  type PagingModeName,
  parseCostProfile,
  type CostProfile,
  DEFAULT_MODULE_SOURCES,
  HOST_PAGE_SIZES,
  type HostPages,
  isPathSpecifier,
  type ModuleSources,
  resolveSpecifier,
  type Variant,
  type VariantProblem,
  parseJsonStrict,
  JsonDuplicateKeyError,
} from '@vmexit/core';
import { InputError } from './errors.js';

/**
 * A variant as the CLI's flags give it (all optional strings: a config file or the schema's defaults fill
 * the rest): `--backend`, `--mmu`, `--policy a,b`, `--config FILE`, `--cost-model NAME|FILE.json`,
 * `--vcpus N`, `--memory SIZE`, `--host-pages 4k|2m|1g`.
 */
export interface VariantOptions {
  backend?: string;
  mmu?: string;
  policy?: string;
  config?: string;
  costModel?: string;
  vcpus?: string;
  memory?: string;
  /** The host page size backing guest RAM, two-dimensional paging only: 4k, 2m or 1g. */
  hostPages?: string;
}

/** What a spec may override in every variant of a comparison or sweep (as flags give them: strings). */
export type VariantOverrides = Pick<VariantOptions, 'vcpus' | 'memory' | 'costModel' | 'hostPages'>;

/** Where the variant's modules come from, and the directory relative names are resolved from (tests pass their own). */
export interface VariantContext {
  readonly cwd?: string;
  readonly sources?: ModuleSources;
}

/**
 * Builds the variant from `--config FILE` (if given) with the flags on top, then checks all of it: the
 * schema (unknown keys, wrong types), that every policy is known or loads from its package or path, its
 * options, and that the backend and MMU provide what each policy needs. Any problem is an InputError
 * (exit 2) with one line per problem, each with the path of the offending field; nothing runs.
 */
export async function variantFromOptions(opts: VariantOptions, context: VariantContext = {}): Promise<Variant> {
  const cwd = context.cwd ?? process.cwd();
  const raw = await rawVariant(opts, cwd);
  const comp = await composeVariant(raw, context.sources ?? DEFAULT_MODULE_SOURCES);
  if (comp.problems.length > 0 || comp.variant === null) throw variantInputError(comp.problems, opts.config);
  checkVariantMemory(comp.variant.memory, opts);
  return comp.variant;
}

/** The limit of guest RAM, for messages: `4 TiB (4398046511104 bytes)`. */
export function memoryLimitText(): string {
  return `${formatSize(MAX_GUEST_RAM)} (${MAX_GUEST_RAM} bytes)`;
}

function formatSize(bytes: number): string {
  for (const [unit, n] of [
    ['TiB', 2 ** 40],
    ['GiB', 2 ** 30],
    ['MiB', 2 ** 20],
    ['KiB', 2 ** 10],
  ] as const) {
    if (bytes >= n && bytes % n === 0) return `${bytes / n} ${unit}`;
  }
  return `${bytes} bytes`;
}

/**
 * Guest RAM however it was given (`--memory`, a config file's `memory`): a positive multiple of 4 KiB, and at
 * most core's MAX_GUEST_RAM (the one limit, which the machine enforces too); `option` names where it came from.
 */
export function checkGuestMemory(bytes: number, option: string): number {
  // Over the limit first: a size beyond 2^53 (no safe integer) is too large, whether a multiple or not.
  if (bytes > MAX_GUEST_RAM) throw new InputError(`${option}: ${formatSize(bytes)} of guest RAM is over the limit of ${memoryLimitText()}`);
  if (!Number.isSafeInteger(bytes) || bytes < 4096 || bytes % 4096 !== 0) throw new InputError(`${option}: ${bytes} bytes is not a positive multiple of 4 KiB`);
  return bytes;
}

/**
 * Guest RAM that the paging mode can address: RAM beyond MMIO_HOLE_START lies above 4 GiB (core's
 * `defaultMemslots`), where 32-bit paging can put neither a 4 KiB page nor a page table: its entries hold
 * 32-bit addresses (SDM Vol. 3A §4.3, Tables 4-5 and 4-6; only PSE-36's 4 MiB pages reach above 4 GiB, Table
 * 4-4). PAE and 4/5-level paging reach all of it. `option` names where the size came from.
 */
export function checkModeMemory(mode: PagingModeName, bytes: number, option = '--memory'): void {
  if (mode === 'legacy32' && guestPhysicalEnd(bytes) > 2 ** 32) {
    throw new InputError(
      `${option}: ${formatSize(bytes)} of guest RAM is more than --mode legacy32 can address: RAM beyond ${formatSize(MMIO_HOLE_START)} goes above the MMIO hole, ` +
        `to 4 GiB and up, where 32-bit paging can put neither a 4 KiB page nor a page table (only PSE-36 4 MiB pages reach it); give legacy32 at most ${formatSize(MMIO_HOLE_START)}, or use --mode pae, long4 or long5`,
    );
  }
}

/** The composed variant's memory, checked (the flag already was, in rawVariant; here a config file's value). */
function checkVariantMemory(bytes: number, opts: VariantOptions): void {
  checkGuestMemory(bytes, opts.memory !== undefined ? '--memory' : opts.config !== undefined ? `--config ${opts.config}: memory` : 'memory');
}

/** `256M`, `1G`, `65536K`, `1048576` (bytes); K/M/G/T are binary (KiB, MiB, GiB, TiB). Checked against the limit. */
export function parseSize(text: string, option = '--memory'): number {
  const m = /^(\d+)\s*([KMGT])?(i?B)?$/i.exec(text.trim());
  if (m === null) throw new InputError(`${option}: '${text}' is not a size (examples: 256M, 1G)`);
  const unit = m[2] === undefined ? 1 : 1024 ** ' KMGT'.indexOf(m[2].toUpperCase());
  const bytes = Number(m[1]) * unit;
  // Over the limit before the multiple of 4 KiB: 999999999G is a multiple, only too large (and beyond 2^53).
  if (bytes > MAX_GUEST_RAM) throw new InputError(`${option}: ${text.trim()} of guest RAM is over the limit of ${memoryLimitText()}`);
  if (!Number.isSafeInteger(bytes) || bytes < 4096 || bytes % 4096 !== 0) throw new InputError(`${option}: ${text} is not a positive multiple of 4 KiB`);
  return checkGuestMemory(bytes, option);
}

/** `--cost-model NAME` that is neither a built-in model nor a `.json` file. */
export function unknownCostModel(name: string): InputError {
  return new InputError(
    `--cost-model: unknown cost model '${name}' (expected one of ${Object.keys(COST_PROFILES).join(', ')}, or a custom model's .json file)`,
  );
}

/**
 * Checks the variant flags whose values the command must parse itself, before anything runs: `--vcpus` an
 * integer 1..256, `--memory` a size within the limit, `--cost-model` a built-in model's name or a `.json` file
 * (read later). (`--backend`, `--mmu` and the policies are checked by the composition, which lists every
 * problem at once.)
 */
export function checkVariantFlags(opts: VariantOptions): void {
  if (opts.vcpus !== undefined && (!/^\d+$/.test(opts.vcpus) || Number(opts.vcpus) < 1 || Number(opts.vcpus) > 256))
    throw new InputError(`--vcpus: expected an integer from 1 to 256, got '${opts.vcpus}'`);
  if (opts.memory !== undefined) parseSize(opts.memory);
  if (opts.costModel !== undefined && !opts.costModel.endsWith('.json') && builtInCostProfile(opts.costModel) === undefined)
    throw unknownCostModel(opts.costModel);
  if (opts.hostPages !== undefined) checkHostPages(opts.hostPages, '--host-pages');
}

/** A host page size as a flag or a spec word gives it: 4k, 2m or 1g (an InputError, exit 2, otherwise). */
export function checkHostPages(text: string, option: string): HostPages {
  const t = text.trim().toLowerCase();
  if (!(HOST_PAGE_SIZES as readonly string[]).includes(t))
    throw new InputError(`${option}: expected ${HOST_PAGE_SIZES.join(', ')} (the host page size backing guest RAM, for --mmu tdp), got '${text}'`);
  return t as HostPages;
}

/** The variant as data, before validation: the config file's object with the flags applied. */
export async function rawVariant(opts: VariantOptions, cwd: string): Promise<Record<string, unknown>> {
  let raw: Record<string, unknown> = {};
  let from = cwd;
  if (opts.config !== undefined) {
    // `--config=` would resolve to the working directory itself.
    if (opts.config.trim() === '') throw new InputError('--config: expected a variant file (vmexit.config.json or vmexit.config.mjs), got an empty value');
    const file = resolve(cwd, opts.config);
    raw = await readConfig(file);
    from = dirname(file);
  }
  checkVariantFlags(opts);
  raw = { ...raw };
  if (raw.resolveFrom === undefined) raw.resolveFrom = from;
  if (opts.backend !== undefined) raw.backend = opts.backend;
  if (opts.mmu !== undefined) raw.mmu = opts.mmu;
  if (opts.costModel !== undefined) raw.costModel = opts.costModel;
  // A cost model from a file (`--cost-model ./mine.json`, or "costModel": "./mine.json" in a config, relative to it).
  if (typeof raw.costModel === 'string' && raw.costModel.endsWith('.json')) {
    const base = opts.costModel !== undefined ? cwd : from;
    raw.costModel = readCostModel(resolve(base, raw.costModel), opts.costModel !== undefined ? '--cost-model' : 'costModel');
  }
  if (opts.vcpus !== undefined) raw.vcpus = /^\d+$/.test(opts.vcpus) ? Number(opts.vcpus) : opts.vcpus;
  if (opts.memory !== undefined) raw.memory = parseSize(opts.memory);
  if (opts.hostPages !== undefined) raw.hostPages = checkHostPages(opts.hostPages, '--host-pages');
  if (opts.policy !== undefined) {
    // Paths on the command line are relative to the working directory, whatever the config's directory is.
    raw.policies = opts.policy
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s.length > 0)
      .map((use) => ({ use: isPathSpecifier(use) && !use.startsWith('file:') ? resolve(cwd, use) : use }));
  }
  return raw;
}

/**
 * Reads a custom cost model (a JSON file shaped as `CostProfile`, see docs/cost-models.md) and validates it:
 * an InputError (exit 2) names the file and each bad field's path.
 */
export function readCostModel(file: string, flag: string): CostProfile {
  statInputFile(file, flag, 'a cost model (.json)');
  let value: unknown;
  try {
    value = parseJsonStrict(readBounded(file, MAX_CONFIG_BYTES, flag));
  } catch (e) {
    throw jsonInputError(flag, file, e);
  }
  const r = parseCostProfile(value);
  if (r.profile === null) {
    const problems = r.problems.map((p) => `${p.path || '(model)'}: ${p.message}`);
    // One problem on the line itself; several, one line each.
    throw new InputError(`${flag} ${file}: not a cost model:${problems.length === 1 ? ` ${problems[0]}` : `\n${problems.map((p) => `  ${p}`).join('\n')}`}`);
  }
  return r.profile;
}

/** Reads a variant file: JSON (`vmexit.config.json`) or an ES module whose default export is the variant (`.mjs`). */
export async function readConfig(file: string): Promise<Record<string, unknown>> {
  statInputFile(file, '--config', 'a variant file (vmexit.config.json or vmexit.config.mjs)');
  const ext = extname(file);
  let value: unknown;
  if (ext === '.mjs' || ext === '.js') {
    try {
      const ns = (await import(pathToFileURL(file).href)) as { default?: unknown };
      value = typeof ns.default === 'function' ? await (ns.default as () => unknown)() : ns.default;
    } catch (e) {
      throw new InputError(`--config ${file}: cannot load: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (value === undefined) throw new InputError(`--config ${file}: the module has no default export (export default { backend: 'vmx', ... })`);
  } else if (ext === '.json') {
    try {
      value = parseJsonStrict(readBounded(file, MAX_CONFIG_BYTES, '--config'));
    } catch (e) {
      throw jsonInputError('--config', file, e);
    }
  } else {
    throw new InputError(`--config ${file}: expected a .json or .mjs file`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new InputError(`--config ${file}: the variant must be an object`);
  return value as Record<string, unknown>;
}

/**
 * The InputError for a JSON file `parseJsonStrict` refused. A key given twice is valid JSON (RFC 8259 §4: names
 * SHOULD be unique) that I-JSON refuses (RFC 7493 §2.3), so its message is not called "not valid JSON".
 */
function jsonInputError(flag: string, file: string, e: unknown): InputError {
  if (e instanceof JsonDuplicateKeyError) return new InputError(`${flag} ${file}: ${e.message}`);
  if (e instanceof InputError) return e; // readBounded's own (the file changed after its stat)
  return new InputError(`${flag} ${file}: not valid JSON: ${e instanceof Error ? e.message : String(e)}`);
}

/** An InputError that lists the variant's problems, each with its field path, and names the config file they came from. */
export function variantInputError(problems: readonly VariantProblem[], config?: string): InputError {
  const where = config !== undefined ? ` (${config})` : '';
  return new InputError(`invalid variant${where}:\n${problems.map((p) => `  ${p.path || '(variant)'}: ${p.message}`).join('\n')}`);
}

/** Checks that an input file named by `flag` exists and is a regular file of at most MAX_CONFIG_BYTES (an InputError, exit 2, otherwise). */
function statInputFile(file: string, flag: string, what: string): void {
  let st;
  try {
    st = statSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new InputError(`${flag} ${file}: ${code === 'ENOENT' ? 'no such file' : `cannot read (${code ?? (e as Error).message})`}`);
  }
  if (st.isDirectory()) throw new InputError(`${flag} ${file}: is a directory; give ${what}`);
  if (!st.isFile()) throw new InputError(`${flag} ${file}: not a regular file (a device, FIFO or socket); give ${what}`);
  if (st.size > MAX_CONFIG_BYTES) throw new InputError(`${flag} ${file}: ${st.size} bytes; ${what} is at most ${MAX_CONFIG_BYTES} bytes`);
}

/** The largest variant file read (a variant is a few hundred bytes). */
const MAX_CONFIG_BYTES = 1 << 20;

/** Reads at most `max` bytes of a regular file (it was checked by stat; fstat again on the open file). */
function readBounded(file: string, max: number, flag: string): string {
  const fd = openSync(file, 'r');
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size > max) throw new InputError(`${flag} ${file}: not a regular file of at most ${max} bytes`);
    const buf = Buffer.alloc(st.size);
    let got = 0;
    while (got < buf.length) {
      const k = readSync(fd, buf, got, buf.length - got, got);
      if (k === 0) break;
      got += k;
    }
    return buf.toString('utf8', 0, got);
  } finally {
    closeSync(fd);
  }
}

/**
 * A variant spec: a config file (`.json`/`.mjs`, which must exist), or words: a backend (`vmx`, `svm`,
 * `none`/`native`), an MMU (`shadow`, `tdp`), `host-pages=4k|2m|1g` (TDP only) and comma-separated
 * policies (built-in names, package names, or paths relative to the working directory: `./dist/index.js`, `.`),
 * in any order (`"vmx shadow pte-update,bypass-guest-pf"`, `"vmx tdp host-pages=2m"`); a
 * `host-pages=` word takes precedence over an override's `hostPages`. The composed variant is checked in full (schema, policies,
 * capabilities, guest RAM); any problem is an InputError naming the spec and each offending field.
 */
export async function parseVariantSpec(spec: string, overrides: VariantOverrides = {}, context: VariantContext = {}): Promise<Variant> {
  const cwd = context.cwd ?? process.cwd();
  const trimmed = spec.trim();
  if (isConfigSpec(trimmed, cwd)) {
    if (!isFile(resolve(cwd, trimmed))) throw new InputError(`--variant ${spec}: no such config file`);
    return variantFromOptions({ config: trimmed, ...overrides }, context);
  }
  const opts: VariantOptions = { ...overrides };
  const policies: string[] = [];
  // Each of backend and MMU is named at most once: "vmx svm shadow" or "native vmx" is a mistake, not a
  // choice of the last word.
  const backends: string[] = [];
  const mmus: string[] = [];
  const hostPages: string[] = [];
  for (const word of trimmed.split(/\s+/).filter((w) => w.length > 0)) {
    if (word === 'vmx' || word === 'svm' || word === 'none' || word === 'native') backends.push(word);
    else if (word === 'shadow' || word === 'tdp') mmus.push(word);
    else if (word.startsWith('host-pages=')) hostPages.push(checkHostPages(word.slice('host-pages='.length), `--variant "${spec}": host-pages`));
    else policies.push(...word.split(',').filter((p) => p.length > 0));
  }
  if (backends.length > 1) throw new InputError(`--variant "${spec}": names ${backends.length} backends (${backends.join(', ')}); a variant has one`);
  if (mmus.length > 1) throw new InputError(`--variant "${spec}": names ${mmus.length} MMUs (${mmus.join(', ')}); a variant has one`);
  if (backends.length === 0) throw new InputError(`--variant "${spec}": name a backend (vmx, svm, or native)`);
  if (hostPages.length > 1) throw new InputError(`--variant "${spec}": names ${hostPages.length} host page sizes (${hostPages.join(', ')}); a variant has one`);
  if (hostPages.length === 1) opts.hostPages = hostPages[0];
  opts.backend = backends[0] === 'native' ? 'none' : backends[0];
  if (mmus.length === 1) {
    if (opts.backend === 'none') throw new InputError(`--variant "${spec}": ${mmus[0]} is an MMU of a hypervisor; a native variant has none`);
    opts.mmu = mmus[0];
  }
  if (opts.backend === 'none' && policies.length > 0)
    throw new InputError(`--variant "${spec}": policies (${policies.join(', ')}) need a hypervisor; a native variant has none`);
  if (policies.length > 0) opts.policy = policies.join(',');
  try {
    return await variantFromOptions(opts, context);
  } catch (e) {
    if (e instanceof InputError) throw new InputError(`--variant "${spec}": ${e.message}`);
    throw e;
  }
}

/**
 * Whether a (trimmed) spec is a config file: one word ending in .json, .mjs or .js, or a spec ending so that names
 * an existing file as a whole (a path with spaces in it: `/home/a user/v.json`). Other specs of several words are
 * words, whatever the last ends in: in `vmx shadow ./dist/index.js` the last word is a policy's path.
 */
function isConfigSpec(trimmed: string, cwd: string): boolean {
  return /\.(json|mjs|js)$/.test(trimmed) && (!/\s/.test(trimmed) || isFile(resolve(cwd, trimmed)));
}

/**
 * A spec with its config-file path, or the paths among its policies, made absolute, so that a worker
 * elsewhere (another thread, directory) reads the same files. A spec without paths is returned as it is.
 */
export function absoluteSpec(spec: string, cwd: string = process.cwd()): string {
  const t = spec.trim();
  if (isConfigSpec(t, cwd)) return isAbsolute(t) ? t : resolve(cwd, t);
  const words = t.split(/\s+/);
  const isRelativePath = (p: string): boolean => isPathSpecifier(p) && !p.startsWith('file:') && !isAbsolute(p);
  if (!words.some((w) => w.split(',').some(isRelativePath))) return t;
  return words
    .map((w) =>
      w.startsWith('host-pages=')
        ? w
        : w
            .split(',')
            .map((p) => (isRelativePath(p) ? absolutePolicyPath(p, cwd) : p))
            .join(','),
    )
    .join(' ');
}

/**
 * A relative policy path (with its `#name`, if any) made absolute; as a file: URL when the absolute path has a space
 * or a comma, which would split it into two words or two policies when the spec is read again.
 */
function absolutePolicyPath(p: string, cwd: string): string {
  const hash = p.lastIndexOf('#');
  const [path, name] = hash > 0 ? [p.slice(0, hash), p.slice(hash)] : [p, ''];
  const abs = resolve(cwd, path);
  if (!/[\s,]/.test(abs)) return abs + name;
  return pathToFileURL(abs).href.replace(/,/g, '%2C') + name;
}

/**
 * The files a variant spec reads, as a run of it resolves them from `cwd`: the config file (`.json`, `.mjs`), the
 * policy modules named by path (in the spec's words or the config's `policies`; a directory is its package's
 * entry file), and a cost model's `.json` file (`overrides.costModel`, or the config's `costModel`). Each module is
 * the file itself: the modules it imports are not listed. Package names and built-in names read no file of the
 * user's; a path that does not resolve is an InputError.
 */
export async function variantInputFiles(spec: string, overrides: VariantOverrides = {}, cwd: string = process.cwd()): Promise<string[]> {
  const t = spec.trim();
  const files: string[] = [];
  let uses: string[];
  let from = cwd;
  let costModel = overrides.costModel;
  let costFrom = cwd;
  if (isConfigSpec(t, cwd)) {
    const file = resolve(cwd, t);
    files.push(file);
    const raw = await readConfig(file);
    uses = Array.isArray(raw.policies)
      ? raw.policies.flatMap((p: unknown) => (typeof (p as { use?: unknown })?.use === 'string' ? [(p as { use: string }).use] : []))
      : [];
    // As rawVariant and composeVariant resolve them: policies from the config's resolveFrom (else its directory), its cost model from its directory.
    from = typeof raw.resolveFrom === 'string' ? raw.resolveFrom : dirname(file);
    if (costModel === undefined && typeof raw.costModel === 'string') [costModel, costFrom] = [raw.costModel, dirname(file)];
  } else {
    const notPolicy = (w: string): boolean => ['vmx', 'svm', 'none', 'native', 'shadow', 'tdp'].includes(w) || w.startsWith('host-pages=');
    uses = t
      .split(/\s+/)
      .filter((w) => w.length > 0 && !notPolicy(w))
      .flatMap((w) => w.split(',').filter((p) => p.length > 0));
  }
  for (const use of uses) {
    const hash = use.lastIndexOf('#');
    const specifier = hash > 0 ? use.slice(0, hash) : use;
    if (!isPathSpecifier(specifier)) continue;
    try {
      files.push(resolveSpecifier(specifier, from));
    } catch (e) {
      throw new InputError(`--variant ${spec}: policy '${use}': ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  if (costModel?.endsWith('.json') === true) files.push(resolve(costFrom, costModel));
  return [...new Set(files)];
}

function isFile(file: string): boolean {
  try {
    return statSync(file).isFile();
  } catch {
    return false;
  }
}
