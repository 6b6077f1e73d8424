/**
 * Counters under KVM's names (struct kvm_vcpu_stat, arch/x86/include/asm/kvm_host.h: exits, pf_fixed,
 * pf_guest, insn_emulation, mmio_exits, ...), one set per vCPU; the VM's totals are their merge
 * (KVM sums the per-vCPU stats the same way for its VM-wide debugfs files).
 */
export class Stats {
  /** One mutable cell per counter: `add` is a single Map lookup (it runs several times per exit). */
  private readonly values = new Map<string, StatCell>();

  add(name: string, n = 1): void {
    const cell = this.values.get(name);
    if (cell !== undefined) cell.n += n;
    else this.values.set(name, { n });
  }

  /**
   * The cell of counter `name`, created at 0 when it has none: a hot path keeps it and adds to `cell.n`
   * with no lookup. A created cell is a counter of the snapshot (at 0 until added to), so take it at the
   * first add (`(c ??= stats.cell(name)).n++`), not ahead of time.
   */
  cell(name: string): StatCell {
    let cell = this.values.get(name);
    if (cell === undefined) {
      cell = { n: 0 };
      this.values.set(name, cell);
    }
    return cell;
  }

  get(name: string): number {
    return this.values.get(name)?.n ?? 0;
  }

  /** The counters as a plain object with keys in sorted order (stable JSON). */
  snapshot(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const k of [...this.values.keys()].sort()) out[k] = this.values.get(k)!.n;
    return out;
  }
}

/** One counter's value, shared with its Stats (see `Stats.cell`). */
export interface StatCell {
  n: number;
}

/**
 * `prefix + name`, built once per distinct name: counter names derived from an exit's reason or kind are
 * looked up here instead of being concatenated on every exit.
 */
export function keyCache(prefix: string): (name: string) => string {
  const cache = new Map<string, string>();
  return (name: string): string => {
    let k = cache.get(name);
    if (k === undefined) {
      k = prefix + name;
      cache.set(name, k);
    }
    return k;
  };
}

/** The sum of several counter snapshots, keys sorted. */
export function mergeStats(parts: readonly Readonly<Record<string, number>>[]): Record<string, number> {
  const sum = new Map<string, number>();
  for (const p of parts) for (const [k, v] of Object.entries(p)) sum.set(k, (sum.get(k) ?? 0) + v);
  const out: Record<string, number> = {};
  for (const k of [...sum.keys()].sort()) out[k] = sum.get(k)!;
  return out;
}
