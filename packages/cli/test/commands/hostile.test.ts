import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MAX_GUEST_RAM, loadVectorFile } from '@vmexit/core';
import { captureStdio } from '../helpers/stdio.js';
import { LoopsOnWriteFaultMmu, sourcesWith } from '../helpers/broken-mmu.js';
import { main } from '../../src/program.js';
import { runVectorsOnVariant } from '../../src/commands/conformance.js';
import { parseVariantSpec } from '../../src/commands/compare.js';

// Hostile input, tried as a new user would: each ends with a message that names the input and
// exit 2 (1 for a run that cannot go on), never exit 70, a stack trace, a hang, or a lost file.

const HERE = path.dirname(fileURLToPath(import.meta.url));
const TINY = path.join(HERE, '..', '..', '..', 'guest', 'test', 'fixtures', 'tiny');
const tiny = ['tiny.100.1', 'tiny.101.1', 'tiny.101.2'].map((f) => path.join(TINY, f));
const VECTORS = fileURLToPath(new URL('../../../core/conformance/sample-access-long4.jsonl', import.meta.url));
/** One 4 KiB page over the limit, however high the limit is. */
const OVER = `${MAX_GUEST_RAM / 1024 + 4}K`;

const io = captureStdio();
const err = (): string => io.err.join('');
let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-hostile-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function write(name: string, data: string | Uint8Array, mode?: number): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, data);
  if (mode !== undefined) fs.chmodSync(f, mode);
  return f;
}

async function tinyTrace(): Promise<string> {
  const f = path.join(dir, 'tiny.vxt');
  expect(await main(['trace', 'import', 'lackey', ...tiny, '-o', f])).toBe(0);
  io.out.length = 0;
  return f;
}

describe('hostile input', () => {
  describe('guest memory over the limit (1)', () => {
    it('run, compare, a config file and policies: exit 2 naming the option and the limit', async () => {
      expect(await main(['run', '--workload', 'demand-fault:pages=16', '--memory', OVER])).toBe(2);
      expect(err()).toMatch(/^vmexit: --memory: .* of guest RAM is over the limit of \d+ \w+ \(\d+ bytes\)\n$/);
      io.err.length = 0;
      expect(await main(['compare', '--workload', 'demand-fault:pages=16', '--variant', 'native', '--memory', OVER])).toBe(2);
      expect(err()).toMatch(/^vmexit: --memory: .* over the limit/);
      io.err.length = 0;
      const config = write('big.json', JSON.stringify({ backend: 'none', memory: `${MAX_GUEST_RAM / 1024 + 4}K` }));
      expect(await main(['run', '--workload', 'demand-fault:pages=16', '--config', config])).toBe(2);
      expect(err()).toMatch(new RegExp(`^vmexit: --config ${config}: memory: .* over the limit`));
      io.err.length = 0;
      expect(await main(['policies', '--memory', OVER])).toBe(2);
      expect(err()).toMatch(/--memory: .* over the limit/);
    });

    it('says a size beyond 2^53 bytes is over the limit, not that it is no multiple of 4 KiB', async () => {
      const limit = `${MAX_GUEST_RAM / 2 ** 40} TiB (${MAX_GUEST_RAM} bytes)`;
      for (const cmd of [['run'], ['compare', '--variant', 'vmx']]) {
        io.err.length = 0;
        expect(await main([...cmd, '--workload', 'demand-fault:pages=16', '--memory', '999999999G'])).toBe(2);
        expect(err()).toBe(`vmexit: --memory: 999999999G of guest RAM is over the limit of ${limit}\n`);
      }
      io.err.length = 0;
      expect(await main(['run', '--workload', 'demand-fault:pages=16', '--memory', '5000'])).toBe(2);
      expect(err()).toBe('vmexit: --memory: 5000 is not a positive multiple of 4 KiB\n');
    });
  });

  describe('guest memory by paging mode', () => {
    it('accepts 1 TiB on long4 (RAM above the MMIO hole, backed only where written)', async () => {
      expect(await main(['run', '--workload', 'demand-fault:pages=16', '--memory', '1T', '--backend', 'vmx', '--mmu', 'shadow'])).toBe(0);
    }, 60_000);

    it('refuses more than legacy32 can address: exit 2 naming --memory and --mode legacy32', async () => {
      expect(await main(['run', '--workload', 'demand-fault:pages=16', '--memory', '4G', '--mode', 'legacy32'])).toBe(2);
      expect(err()).toMatch(/^vmexit: --memory: 4 GiB of guest RAM is more than --mode legacy32 can address: .* at most 3 GiB/);
    });
  });

  describe('outputs (3, 4, 5)', () => {
    it('refuses a --trace that is the workload itself, leaving it whole', async () => {
      const victim = await tinyTrace();
      const before = fs.readFileSync(victim);
      expect(await main(['run', '--workload', victim, '--backend', 'none', '--trace', victim])).toBe(2);
      expect(err()).toContain(`--trace ${victim}: it is also an input of this command (${victim}); writing it would destroy it`);
      expect(fs.readFileSync(victim)).toEqual(before);
    });

    it('keeps an existing --trace file when the workload is rejected', async () => {
      const old = write('old.jsonl', '{"type":"window"}\n');
      expect(await main(['run', '--workload', 'nosuch', '--trace', old])).toBe(2);
      expect(err()).toMatch(/--workload: workload 'nosuch': no workload 'nosuch'/);
      expect(fs.readFileSync(old, 'utf8')).toBe('{"type":"window"}\n');
      expect(fs.readdirSync(dir)).toEqual(['old.jsonl']);
    });

    it('refuses a device, a FIFO-like node or a symbolic link as -o, and an input log', async () => {
      expect(await main(['trace', 'import', 'lackey', ...tiny, '-o', '/dev/full'])).toBe(2);
      expect(err()).toContain('-o /dev/full: a character device, not a regular file');
      expect(fs.statSync('/dev/full').isCharacterDevice()).toBe(true);
      io.err.length = 0;
      const target = write('target.vxt', 'keep');
      const link = path.join(dir, 'link.vxt');
      fs.symlinkSync(target, link);
      expect(await main(['trace', 'import', 'lackey', ...tiny, '-o', link])).toBe(2);
      expect(err()).toContain(`-o ${link}: a symbolic link, not a regular file`);
      expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
      expect(fs.readFileSync(target, 'utf8')).toBe('keep');
      io.err.length = 0;
      const log = write('copy.100.1', fs.readFileSync(tiny[0]!));
      expect(await main(['trace', 'import', 'lackey', log, '-o', log])).toBe(2);
      expect(err()).toContain(`-o ${log}: it is also an input of this command`);
      expect(fs.readFileSync(log)).toEqual(fs.readFileSync(tiny[0]!));
    });

    it("keeps the old file's mode when it replaces it", async () => {
      const f = write('private.vxt', 'old', 0o600);
      expect(await main(['trace', 'import', 'lackey', ...tiny, '-o', f])).toBe(0);
      expect(fs.statSync(f).mode & 0o777).toBe(0o600);
      expect(fs.readFileSync(f).subarray(0, 4)).toEqual(Buffer.from([0x56, 0x58, 0x54, 0x1a]));
      expect(fs.readdirSync(dir)).toEqual(['private.vxt']);
    });
  });

  describe('inputs (2, 7, 12, 14)', () => {
    it('trace info of a bomb (a header claiming 4 GiB) ends at once with exit 2', async () => {
      const good = fs.readFileSync(await tinyTrace());
      const bomb = Buffer.from(good);
      bomb.writeUInt32LE(0, 16);
      bomb.writeUInt32LE(1, 20);
      const f = write('bomb.vxt', bomb);
      const t0 = Date.now();
      expect(await main(['trace', 'info', f])).toBe(2);
      expect(Date.now() - t0).toBeLessThan(1000);
      expect(err()).toContain(`${f}: corrupt .vxt trace: the header claims a body of 4294967296 bytes`);
    });

    it('trace info, conformance and run refuse /dev/zero and a link to it', async () => {
      expect(await main(['trace', 'info', '/dev/zero'])).toBe(2);
      expect(err()).toContain('/dev/zero: not a regular file (a device, FIFO or socket)');
      io.err.length = 0;
      expect(await main(['conformance', '/dev/zero'])).toBe(2);
      expect(err()).toContain('/dev/zero: not a regular file (a device, FIFO or socket); a vector file is a file');
      io.err.length = 0;
      const link = path.join(dir, 'zero.vxt');
      fs.symlinkSync('/dev/zero', link);
      expect(await main(['run', '--workload', link, '--backend', 'none'])).toBe(2);
      expect(err()).toContain(`${link}: not a regular file (a device, FIFO or socket)`);
      io.err.length = 0;
      expect(await main(['trace', 'import', 'lackey', '/dev/zero', '-o', path.join(dir, 'z.vxt')])).toBe(2);
      expect(err()).toContain('/dev/zero: not a regular file');
      expect(fs.readdirSync(dir)).toEqual(['zero.vxt']);
    });

    it('a lackey log cut at a line boundary, or of only its header, is refused', async () => {
      const lines = fs.readFileSync(tiny[0]!, 'latin1').split('\n');
      const cut = write('cut.100.1', `${lines.slice(0, -5).join('\n')}\n`);
      expect(await main(['trace', 'import', 'lackey', cut, '-o', path.join(dir, 'c.vxt')])).toBe(2);
      expect(err()).toContain(`${cut}: truncated lackey log`);
      expect(fs.existsSync(path.join(dir, 'c.vxt'))).toBe(false);
    });

    it('--config naming a directory says so', async () => {
      expect(await main(['run', '--workload', 'demand-fault:pages=4', '--config', dir])).toBe(2);
      expect(err()).toBe(`vmexit: --config ${dir}: is a directory; give a variant file (vmexit.config.json or vmexit.config.mjs)\n`);
    });

    it('--config= (an empty value) says it is empty, not that the working directory is a directory', async () => {
      expect(await main(['run', '--workload', 'demand-fault:pages=4', '--config='])).toBe(2);
      expect(err()).toBe('vmexit: --config: expected a variant file (vmexit.config.json or vmexit.config.mjs), got an empty value\n');
    });
  });

  describe('options checked by the command that takes them (8, 9, 14)', () => {
    it('compare refuses a variant with two backends or two MMUs', async () => {
      for (const [spec, msg] of [
        ['vmx svm shadow', 'names 2 backends (vmx, svm); a variant has one'],
        ['native vmx', 'names 2 backends (native, vmx); a variant has one'],
        ['vmx shadow tdp', 'names 2 MMUs (shadow, tdp); a variant has one'],
        ['native shadow', 'shadow is an MMU of a hypervisor; a native variant has none'],
      ]) {
        io.err.length = 0;
        expect(await main(['compare', '--workload', 'demand-fault:pages=4', '--variant', spec!])).toBe(2);
        expect(err()).toBe(`vmexit: --variant "${spec}": ${msg}\n`);
      }
    });

    it('policies checks every variant flag given', async () => {
      for (const [flag, value, msg] of [
        ['--mmu', 'ept', /mmu/],
        ['--vcpus', 'abc', /--vcpus: expected an integer from 1 to 256, got 'abc'/],
        ['--memory', '8TB', /--memory: .*(over the limit|not a size)/],
        ['--cost-model', 'foo', /--cost-model: unknown cost model 'foo'/],
      ] as const) {
        io.err.length = 0;
        expect(await main(['policies', flag, value])).toBe(2);
        expect(err()).toMatch(msg);
      }
    });

    it('conformance refuses --memory (each vector builds its own memory)', async () => {
      expect(await main(['conformance', '--backend', 'vmx', '--memory', '8T', VECTORS])).toBe(2);
      expect(err()).toMatch(/^vmexit: --memory: .*(over the limit|each vector's guest memory)/);
      io.err.length = 0;
      expect(await main(['conformance', '--backend', 'vmx', '--memory', '64M', VECTORS])).toBe(2);
      expect(err()).toContain("--memory 64M: conformance builds each vector's guest memory from the pages the vector uses");
    });

    it('vmexit alone exits 2 with the help on stderr', async () => {
      expect(await main([])).toBe(2);
      expect(err()).toMatch(/^vmexit: no command given\nUsage: vmexit/);
    });

    it('main rejects an unknown workload before the conformance vectors run', async () => {
      const t0 = Date.now();
      expect(await main(['main', '--workload', 'nosuch'])).toBe(2);
      expect(Date.now() - t0).toBeLessThan(1000);
      expect(err()).toMatch(/^vmexit: --workload: workload 'nosuch': no workload 'nosuch'/);
    });
  });

  describe('conformance under a variant (fault loops)', () => {
    it('a vector that loops is its own failure, named with the error, and the rest still run', async () => {
      const vectors = loadVectorFile(VECTORS);
      const variant = await parseVariantSpec('vmx shadow', {});
      const report = await runVectorsOnVariant(
        vectors,
        variant,
        sourcesWith(() => new LoopsOnWriteFaultMmu()),
      );
      // Every vector whose access (or pre-access) is a write that faults under the hypervisor loops; the
      // others pass as they do under the real MMU.
      const looped = report.results.filter((r) => 'stopped' in r);
      expect(looped.length).toBeGreaterThan(0);
      expect(report.results.length).toBe(vectors.length);
      for (const r of looped) {
        expect(r.passed).toBe(false);
        expect((r as { stopped: string }).stopped).toMatch(/^MachineError fault-loop: /);
      }
      expect(report.passed).toBeGreaterThan(0);
      expect(report.passed + report.failed).toBe(vectors.length);
    });
  });
});
