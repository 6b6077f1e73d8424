import { Auditor } from './auditor.js';
import type { ShadowMmuState } from './state.js';

/**
 * `--audit`: the checks of KVM's mmu_audit.c (arch/x86/kvm/mmu/mmu_audit.c: audit_mappings,
 * audit_sptes_have_rmaps, audit_write_protection) and more, over the whole MMU. Throws a ShadowMmuError
 * (code E_MMU_AUDIT) naming the spte, the guest pte and the role at the first violation:
 *
 * 1. every present leaf spte reachable from a vCPU's roots maps the frame the guest tables give for its
 *    address, with no more rights than the guest pte (W only when dirty, or in read-only memory, where D is
 *    never set; U; X) and the host mapping;
 * 2. every present leaf spte has a memslot and is in the rmap of its gfn; every rmap entry is such an spte,
 *    once;
 * 3. parent links: each non-leaf spte is in its child's parent_ptes and each parent_ptes entry points back,
 *    once, from a page one level up;
 * 4. no spte that maps a write-protected gfn (a shadowed guest page table) is writable, and each gfn's
 *    write-track count is the number of its indirect pages above level 1;
 * 5. page accounting: pages in use = active + invalid roots, root counts equal the vCPUs' root slots, and
 *    no root in use is freed;
 * 6. non-present sptes are the trap or the notrap value; with the bypass encoding (KVM 2007 audit
 *    additions) no notrap spte sits at a non-leaf level, in a 4-byte-gpte or unsync page, or where the
 *    guest pte is present;
 * 7. unsync pages are indirect level-1 pages (mmu_audit.c "unsync sp at level != 1"), and the unsync
 *    bookkeeping agrees with them; their leaves are not compared with the guest tables (they may be stale
 *    until the guest flushes).
 *
 * Incremental (the default): the MMU keeps one auditor that remembers what it verified - a copy of every
 * spte of every page in use, of every guest page its guest walks read (and of every shadowed guest page
 * table), the rmaps' contents, the write-protected gfns, and per vCPU the paging context and which leaves
 * were compared with the guest at which address and through which guest ptes - and re-verifies only what
 * differs from that record: sptes whose value, page or page role changed (found by comparing the pool with
 * the copy, so a write by any path counts), rmaps in `Rmaps.changed`, gfns newly write-protected, guest
 * ptes that changed in guest memory (found by comparing, so a guest write that the MMU never saw counts:
 * the bug class of a missing write protection), and every leaf of a vCPU whose paging context changed.
 * The checks that cost O(pages) (accounting, roots, parent_ptes, unsync bookkeeping) run in full each
 * time. The outcome is the full audit's: any violation present at the time of the call is reported (only
 * which of several comes first may differ). After a violation the record is dropped, so the next call
 * audits in full. `{ full: true }` audits from an empty record and leaves the incremental one alone.
 */
export function auditShadowMmu(mmu: ShadowMmuState, options: AuditOptions = {}): void {
  if (options.full === true) {
    new Auditor(mmu, false).run();
    return;
  }
  let a = auditors.get(mmu);
  if (a === undefined || !a.sameMachine()) {
    a = new Auditor(mmu, true);
    auditors.set(mmu, a);
  }
  try {
    a.run();
  } catch (e) {
    auditors.delete(mmu);
    throw e;
  }
}

/** How `auditShadowMmu` checks: incrementally (only what changed since the last audit) or from scratch. */
export interface AuditOptions {
  /** Audit everything from scratch (the incremental record is neither used nor updated). */
  readonly full?: boolean;
}

/** The incremental record of each MMU (dropped with the MMU). */
const auditors = new WeakMap<ShadowMmuState, Auditor>();
