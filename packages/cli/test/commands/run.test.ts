import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { captureStdio } from '../helpers/stdio.js';
import { main } from '../../src/program.js';

const { out, err } = captureStdio();

describe('run', () => {
  it('--json prints one vmexit.run/1 document', async () => {
    const code = await main(['run', '--workload', 'demand-fault:pages=200', '--backend', 'none', '--memory', '16M', '--seed', '3', '--json']);
    expect(code).toBe(0);
    const r = JSON.parse(out.join(''));
    expect(r.schema).toBe('vmexit.run/1');
    expect(r.variant).toMatchObject({ backend: 'none', mode: 'long4', vcpus: 1, memory: 16 * 1024 * 1024 });
    expect(r.workload).toMatchObject({ name: 'demand-fault', params: { pages: 200, write: 1 } });
    expect(r.guest.accesses).toBe(200);
    expect(r.guest.processes).toBe(1);
    expect(r.guest.faults).toMatchObject({ total: 200, 'demand-zero': 200 });
    expect(r.counters.vcpus).toHaveLength(1);
    expect(typeof r.counters.total.tlb_misses).toBe('number');
    expect(r.wallSeconds).toBeGreaterThan(0);
    expect(r.accessesPerSecond).toBeGreaterThan(0);
    expect(r.memoryDigest).toMatch(/^[0-9a-f]{64}$/);
  });

  it('prints a summary table, and --trace writes the exits and the page faults as JSON Lines', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-run-'));
    const file = path.join(dir, 'faults.jsonl');
    try {
      const code = await main(['run', '--workload', 'fork-cow:pages=16,forks=1', '--memory', '16M', '--mode', 'pae', '--trace', file]);
      expect(code).toBe(0);
      const text = out.join('');
      expect(text).toMatch(/^workload +fork-cow:pages=16,forks=1/m);
      expect(text).toMatch(/^guest faults +40 /m);
      expect(text).toMatch(/^variant +vmx shadow, mode pae/m);
      const lines = fs
        .readFileSync(file, 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      const faults = lines.filter((l) => l.type === 'page-fault');
      expect(faults).toHaveLength(40);
      expect(faults[0]).toMatchObject({ type: 'page-fault', seq: 0, kind: 'demand-zero', errorCode: 6 });
      // The variant is VMX shadow paging (the default): every exit is traced, boot's included.
      const exits = lines.filter((l) => l.type === 'exit');
      expect(exits.length).toBeGreaterThan(40);
      expect(exits[0]).toMatchObject({ type: 'exit', vcpu: 0, seq: 1 });
      expect(fs.readdirSync(dir)).toEqual(['faults.jsonl']); // no temporary file left behind
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it.each([
    [['--workload', 'nope'], /no workload 'nope'/],
    [['--workload', 'scan:bogus=1'], /scan has no parameter 'bogus'/],
    [['--workload', 'scan:pages=-4'], /out of range/],
    [['--workload', 'demand-fault:pages=100000', '--memory', '16M'], /demand-fault:pages=100000.*free pages/],
    [['--workload', 'scan', '--memory', 'lots'], /--memory: 'lots' is not a size/],
    [['--workload', 'scan', '--memory', '4G', '--mode', 'legacy32'], /more than --mode legacy32 can address/],
    [['--workload', 'scan', '--backend', 'kvm'], /backend: .*vmx.*svm.*none/],
    [['--workload', 'scan', '--mode', 'real'], /unknown paging mode 'real'/],
    [['--workload', 'missing.vxt'], /missing\.vxt.*cannot read/],
  ])('exits 2 on bad input %j', async (args, message) => {
    const code = await main(['run', ...args]);
    expect(code).toBe(2);
    expect(err.join('')).toMatch(message);
  });
});

describe('run on a variant', () => {
  // Each demand fault in steady state costs VMX shadow paging exactly 3 exits (KVM before 2007's
  // update-on-write): (1) the user write hits a not-present spte, #PF exits, the MMU's guest walk finds the
  // gpte not present and injects the #PF; (2) the guest handler's store of the new gpte hits its
  // write-protected page table, #PF exits, the store is emulated and the spte cleared; (3) the re-executed
  // write hits the still-empty spte, #PF exits, the MMU builds it. The window is the touching only; the first
  // fault also builds the level-1 shadow page, hence 3N+1.
  it.each(['vmx', 'svm'])('counts 3 exits per steady-state demand fault on %s shadow paging, and the guest cannot tell (--check --audit)', async (backend) => {
    const code = await main([
      'run',
      '--workload',
      'demand-fault:pages=64',
      '--backend',
      backend,
      '--mmu',
      'shadow',
      '--memory',
      '16M',
      '--check',
      '--audit',
      '--json',
    ]);
    expect(err.join('')).toBe('');
    expect(code).toBe(0);
    const r = JSON.parse(out.join(''));
    expect(r.variant).toMatchObject({ backend, mmu: 'shadow' });
    expect(r.guest.faults.total).toBe(64);
    expect(r.counters.total.exits).toBe(3 * 64 + 1);
    expect(r.counters.total.pf_guest).toBe(64);
    expect(r.counters.total.insn_emulation).toBe(64);
    expect(r.check).toMatchObject({ ok: true, divergence: null });
    expect(r.cycles.cycles).toBeGreaterThan(0);
  });
});

describe('run and trace info on a .vxt whose checksum is valid but whose contents are bad', () => {
  // Each file is a well-formed .vxt (encodeVxt, so the checksum matches) with one bad field; both commands
  // must exit 2 naming the file, the process and event (or record), and the problem - never 70, never hang.
  const exec = {
    type: 'exec',
    at: 0,
    pid: 1,
    path: '/bin/x',
    mappings: [{ start: 0x108000, length: 0x2000, prot: 5, role: 'exe', file: '/bin/x' as string | null }],
  } as const;
  const root = (events: object[], recordEnd = 1): object => ({ pid: 1, parent: 0, recordStart: 0, recordEnd, events: [exec, ...events] });
  const cases: [string, object[], number[], RegExp][] = [
    [
      'unaligned-mmap',
      [root([{ type: 'mmap', at: 1, start: 0x4835001, length: 8192, prot: 3, flags: 34, offset: 0, file: null }])],
      [0x108],
      /pid 1: mmap event 1 has an unaligned start 0x4835001/,
    ],
    ['negative-munmap', [root([{ type: 'munmap', at: 1, start: -8192, length: 8192 }])], [0x108], /pid 1: munmap event 1 has a start of -8192/],
    ['negative-mprotect', [root([{ type: 'mprotect', at: 1, start: -4096, length: 4096, prot: 1 }])], [0x108], /pid 1: mprotect event 1 has a start of -4096/],
    ['noncanonical-page', [root([], 2)], [0x108, -(2 ** 40)], /pid 1: record 1 is an access to page -0x10000000000 .*outside user space/],
    ['self-fork', [root([{ type: 'fork', at: 1, parent: 1, child: 1 }])], [0x108], /pid 1: fork event 1 forks the process itself/],
    [
      'unforked-child',
      [root([]), { pid: 2, parent: 1, recordStart: 1, recordEnd: 1, events: [] }],
      [0x108],
      /pid 2 has parent 1, which has no fork event that creates it/,
    ],
    [
      'numeric-file',
      [{ pid: 1, parent: 0, recordStart: 0, recordEnd: 1, events: [{ ...exec, mappings: [{ ...exec.mappings[0], file: 42 }] }] }],
      [0x108],
      /pid 1: exec event 0, mapping 0 has a file that is neither a string nor null/,
    ],
  ];
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-badvxt-'));
  });
  afterEach(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it.each(cases)('%s: exit 2 with the file and the problem', async (name, processes, pages, message) => {
    const { encodeVxt } = await import('@vmexit/guest');
    const n = pages.length;
    const file = path.join(dir, `${name}.vxt`);
    const trace = {
      collapse: 'run',
      source: { tool: 'test', command: 'x' },
      accesses: { length: n, kind: new Uint8Array(n).fill(1), page: Float64Array.from(pages), count: new Uint32Array(n).fill(1) },
      processes,
    };
    fs.writeFileSync(file, encodeVxt(trace as Parameters<typeof encodeVxt>[0]));
    for (const args of [
      ['run', '--workload', file, '--backend', 'none'],
      ['trace', 'info', file],
    ]) {
      err.length = 0;
      out.length = 0;
      const code = await main(args);
      expect(code, args.join(' ')).toBe(2);
      const text = err.join('');
      expect(text).toContain(`${file}: corrupt .vxt trace: `);
      expect(text).toMatch(message);
      expect(out.join('')).toBe('');
    }
  });
});

describe('run summary table', () => {
  it('prints TLB misses and flushes from the counters, the wall time and accesses/s', async () => {
    const args = ['run', '--workload', 'mprotect-storm:pages=8,rounds=3,writes=2', '--backend', 'none', '--memory', '16M', '--vcpus', '2', '--seed', '4'];
    expect(await main([...args, '--json'])).toBe(0);
    const r = JSON.parse(out.join(''));
    out.length = 0;
    expect(await main(args)).toBe(0);
    const rows = new Map(
      out
        .join('')
        .trim()
        .split('\n')
        .map((l) => [l.slice(0, l.indexOf('  ')).trim(), l.slice(l.indexOf('  ')).trim()]),
    );
    const n = (x: number): string => x.toLocaleString('en-US');
    // the counters are deterministic: the table shows the same figures as the --json run
    expect(r.counters.total.invlpg).toBeGreaterThan(0);
    expect(rows.get('TLB misses')).toBe(n(r.counters.total.tlb_misses));
    expect(rows.get('TLB flushes')).toBe(
      `${n(r.counters.total.tlb_flush)} full, ${n(r.counters.total.invlpg)} INVLPG, ${n(r.guest.tlb.shootdowns)} shootdowns`,
    );
    expect(rows.get('accesses')).toBe(n(r.guest.accesses));
    expect(rows.get('wall time')).toMatch(/^\d+\.\d{3} s$/);
    expect(rows.get('accesses/s')).toMatch(/^\d+(\.\d (k|M))?$/);
  });

  it("prints each composed policy's counters under their --json names (pt-recycle on vmx shadow write-flood,unsync)", async () => {
    const args = ['run', '--workload', 'pt-recycle:dirs=4,rounds=1', '--backend', 'vmx', '--mmu', 'shadow', '--policy', 'write-flood,unsync'];
    expect(await main(args)).toBe(0);
    const text = out.join('');
    // From the run's trace (--trace), in the counting window. pt-recycle:dirs=4 runs 4 children, each with its
    // own PML4, PDPT and PD, then recycles their freed frames as a survivor's data pages and memsets them with
    // 8-byte stores. write-flood: 44 flood events, one per emulated write to a shadowed upper-level table
    // (mmu_pte_write 44): 36 are the memset's first 3 stores to each of the 12 recycled tables (4 children x
    // 3 levels), the third answered yes (writeCount 3, KVM detect_write_flooding's threshold), so 12 pages are
    // zapped as flooded (mmu_flooded 12, the MMU row's 12 pages zapped); the other 8 are single writes to live
    // upper tables (new PML4, PDPT and PD entries), each followed by a walk through the page that resets its
    // count. unsync: 7 times the MMU wanted a writable spte for a guest page table shadowed only at level 1
    // (gfns 0x9, 0xe, 0x13, 0x17, 0x1b; 0x9 and 0x13 twice, write-protected again in between by their sync at
    // the guest's TLB flush, KVM kvm_sync_page), each answered yes (mmu_unsync 7).
    expect(text).toMatch(/^policies +write-flood: mmu_flooded 12, mmu_events\.flood 44; unsync: mmu_unsync 7, mmu_events\.unsync 7$/m);
    expect(text).toMatch(/^MMU +47 faults fixed, 25 injected, 44 emulated, 44 pte writes, 12 pages zapped$/m);
    // The same figures as --json, with each policy's declared counters (policyCounters).
    out.length = 0;
    expect(await main([...args, '--json'])).toBe(0);
    const r = JSON.parse(out.join(''));
    expect(r.variant.policies).toEqual(['write-flood', 'unsync']);
    expect(r.counters.total).toMatchObject({ mmu_flooded: 12, 'mmu_events.flood': 44, mmu_unsync: 7, 'mmu_events.unsync': 7, mmu_pte_write: 44 });
    // The counters the row shows come from the policies' own declarations (FaultPolicy.counters), in the result.
    expect(r.policyCounters).toEqual([
      { policy: 'write-flood', counters: ['mmu_flooded', 'mmu_events.flood'] },
      { policy: 'unsync', counters: ['mmu_unsync', 'mmu_events.unsync'] },
    ]);
  });

  it("lists the policies in the variant's order, by name with or without options, with - for one that counted nothing", async () => {
    const { summary } = await import('../../src/commands/run.js');
    expect(await main(['run', '--workload', 'demand-fault:pages=50', '--memory', '16M', '--json'])).toBe(0);
    const r = JSON.parse(out.join(''));
    const policies = ['unsync', { use: 'write-flood', options: { threshold: 5 } }, 'bypass-guest-pf', '/plugins/mine.mjs'];
    const total = { ...r.counters.total, mmu_unsync: 0, 'mmu_events.unsync': 3, mmu_flooded: 1_234, 'mmu_events.flood': 0 };
    // The counters each policy declares (FaultPolicy.counters), as a run with these policies carries them; the
    // plugin's one counter is zero.
    const policyCounters = [
      { policy: 'unsync', counters: ['mmu_unsync', 'mmu_events.unsync'] },
      { policy: 'write-flood', counters: ['mmu_flooded', 'mmu_events.flood'] },
      { policy: 'bypass-guest-pf', counters: [] },
      { policy: 'mine', counters: ['mine.seen'] },
    ];
    const table = summary({ ...r, variant: { ...r.variant, policies }, counters: { ...r.counters, total }, policyCounters });
    // Zero counters are left out; a policy with none left, or that declares none, shows -.
    expect(table).toMatch(/^policies +unsync: mmu_events\.unsync 3; write-flood: mmu_flooded 1,234; bypass-guest-pf: -; \/plugins\/mine\.mjs: -$/m);
    // A result without policyCounters (written before policies declared their counters): - for each.
    expect(summary({ ...r, variant: { ...r.variant, policies: ['unsync'] }, counters: { ...r.counters, total } })).toMatch(/^policies +unsync: -$/m);
    // No policies, no row (and no policyCounters in the result).
    expect(summary(r)).not.toMatch(/^policies/m);
    expect(r.policyCounters).toBeUndefined();
  });

  it('formats the wall time in seconds and accesses/s in k or M', async () => {
    const { summary } = await import('../../src/commands/run.js');
    expect(await main(['run', '--workload', 'demand-fault:pages=50', '--backend', 'none', '--memory', '16M', '--json'])).toBe(0);
    const r = JSON.parse(out.join(''));
    const table = summary({ ...r, wallSeconds: 1.5, accessesPerSecond: 2_500_000 });
    expect(table).toMatch(/^wall time +1\.500 s$/m);
    expect(table).toMatch(/^accesses\/s +2\.5 M$/m);
    expect(summary({ ...r, accessesPerSecond: 12_345 })).toMatch(/^accesses\/s +12\.3 k$/m);
  });
});
