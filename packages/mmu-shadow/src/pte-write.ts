import * as core from '@vmexit/core';
import type { Vcpu } from '@vmexit/core';
import * as coreMmu from '@vmexit/core/mmu';
import * as decisions from './decisions.js';
import { leafFromGpte } from './gpte.js';
import type { ShadowPage } from './page.js';
import * as pageCache from './page-cache.js';
import * as roots from './roots.js';
import * as state from './state.js';
import type { ShadowMmuState, VcpuShadowState } from './state.js';

/**
 * An emulated write to a shadowed guest page table (KVM arch/x86/kvm/mmu/mmu.c `kvm_mmu_track_write`, formerly
 * `kvm_mmu_pte_write`; paging_tmpl.h `FNAME(update_pte)` of KVM 2007-2021): for each shadow page of the
 * written gfn, the flood and pte-write decisions (decisions.ts), then the written sptes cleared or updated.
 */

// Module-local copies of the imported constants and helpers the write hook uses. V8 folds a module's own constants
// into its compiled code, but reads an imported binding through its module cell, with a check, on every use (core
// DESIGN.md, "Speed").
const { CR4_PAE, pageNumber, PT_PRESENT } = core;
const { ROLE_4BYTE_GPTE, ROLE_BASE_MASK, roleQuadrant, spteNeedsFlush } = coreMmu;
const { decideFloodEvent, decidePteWriteEvent, detectWriteMisaligned, writtenSptes } = decisions;
const { installLeaf, prepareZap, zapSpte } = pageCache;
const { baseRole, finish } = roots;
const { collectIndirectPages } = state;
const UPDATE_ROLE_MASK = ROLE_BASE_MASK | roots.ROLE_PKEYS_ANDNOT_WP;

/**
 * KVM `kvm_mmu_track_write`: the vCPU stored `size` bytes at `gpa` (old and new value given, as 32-bit halves,
 * signed or unsigned: only their bits are read, and the pte-write event gets them unsigned) into a
 * write-protected gfn. `justStored`: nothing ran between the store and this call (the emulator's store, then
 * its write hook), so memory at `gpa` still holds the new value; otherwise (a store that other vCPUs could
 * follow before this vCPU took mmu_lock) the gpte is read again, as KVM always does.
 */
export function pteWrite(
  s: ShadowMmuState,
  vcpu: Vcpu,
  gpa: number,
  size: number,
  oldLo: number,
  oldHi: number,
  newLo: number,
  newHi: number,
  justStored: boolean,
): void {
  if (s.indirectShadowPages === 0) return;
  const st = s.stateOf(vcpu);
  s.initiator = vcpu.id;
  // The bytes the store wrote: the gptes they touch are the sptes to clear, and whether they are misaligned.
  const storeGpa = gpa;
  // mmu_pte_write_fetch_gpte: a 4-byte write into an 8-byte gpte is the whole gpte; re-read it after the store.
  let bytes = size;
  if ((vcpu.cr4 & CR4_PAE) !== 0 && bytes === 4) {
    gpa -= gpa & 7;
    bytes = 8;
  }
  let gLo = 0;
  let gHi = 0;
  if (justStored && bytes === size && (gpa & (bytes - 1)) === 0) {
    // The store was the whole aligned gpte, just now: what the re-read would find is what was stored.
    if (bytes === 4 || bytes === 8) {
      gLo = newLo;
      gHi = bytes === 8 ? newHi : 0;
    }
  } else if (bytes === 4 || bytes === 8) {
    gLo = s.memory.read32(gpa - (gpa & 3)) | 0;
    gHi = bytes === 8 ? s.memory.read32(gpa - (gpa & 3) + 4) | 0 : 0;
  }
  const gfn = pageNumber(gpa);
  st.bump(s.host, 2 /* mmu_pte_write */);
  // The valid indirect pages of the gfn, as a snapshot (zapping one below changes its hash bucket), in a
  // scratch array that this call owns while it runs (a nested call would take a fresh one). A call that throws (a
  // policy's decision failed, which ends the run: the MMU-event pipeline stays closed) leaves the array busy, and
  // later calls then take fresh ones; a try/finally here would cost every call about 50 instructions.
  const scratch = s.scratch;
  const nested = scratch.pagesBusy === true;
  const targets = nested ? [] : scratch.pages;
  scratch.pagesBusy = true;
  const count = collectIndirectPages(s, gfn, targets);
  let vcpuBaseRole = -1; // the vCPU's base role, computed for the first update-spte decision
  // The 2007 per-vCPU detector (OLD-MMU kvm_mmu_pre_write): consecutive emulated writes to one gfn.
  if (gfn === st.lastPtWriteGfn) st.lastPtWriteCount++;
  else {
    st.lastPtWriteGfn = gfn;
    st.lastPtWriteCount = 1;
  }
  const host = s.host;
  const pool = s.pool;
  // The store's first and last byte within its page, as integers: the gptes it wrote are those of these offsets. The
  // vCPU never hands the emulator a store that crosses a page (checkScalarSpan).
  const storeOff = storeGpa & 0xfff;
  const storeLastOff = storeOff + size - 1;
  for (let t = 0; t < count; t++) {
    const sp = targets[t]!;
    targets[t] = null;
    if (sp.zapped) continue;
    const level = sp.level;
    const role = sp.role;
    const fourByte = (role & ROLE_4BYTE_GPTE) !== 0;
    const pteSize = fourByte ? 4 : 8;
    // KVM decides this on the widened write above, so a 4-byte store at bytes 5-7 of an 8-byte gpte counts as
    // one aligned gpte although it also writes the next one. The SDM's tables are what the store wrote: it
    // is misaligned when it touches two gptes, whatever KVM's widening says (a departure from KVM, which
    // would leave the second gpte's spte stale; see below).
    const misaligned = detectWriteMisaligned(storeOff, size, pteSize);
    // detect_write_flooding: the policy decides (today's KVM: per page, level 1 exempt, >= 3); by default (no policy
    // or observer may see the event, decisions.ts) never flooded. Then the pte-write decision, unless flooded: by
    // default zap-spte (clear the written sptes); update-spte; or zap-page, which zaps the page as a flood does.
    sp.writeFloodingCount++;
    const floodSeq = st.mmuEventSeq++;
    let zapPage =
      !st.decidedByDefault(host, 1, 'flood') && decideFloodEvent(host, st, floodSeq, gfn, level, sp.writeFloodingCount, st.lastPtWriteCount) === true;
    let updateSpte = false;
    if (!zapPage) {
      const seq = st.mmuEventSeq++;
      if (!st.decidedByDefault(host, 0, 'pte-write')) {
        const decision = decidePteWriteEvent(host, st, seq, gpa, bytes, oldLo, oldHi, newLo, newHi, level, misaligned);
        zapPage = decision === 'zap-page';
        updateSpte = decision === 'update-spte';
      }
    }
    if (zapPage) {
      prepareZap(s, sp);
      host.count(vcpu.id, 'mmu_flooded');
      continue;
    }
    // The quadrant matters only for 4-byte gptes (writtenSptes).
    const quadrant = fourByte ? roleQuadrant(role) : 0;
    // update_pte (KVM 2007-2021): a full, aligned gpte write into a level-1 page of the vCPU's base role.
    let update = updateSpte && !misaligned && level === 1 && bytes >= pteSize;
    if (update) {
      if (vcpuBaseRole < 0) vcpuBaseRole = baseRole(vcpu);
      update = ((role ^ vcpuBaseRole) & UPDATE_ROLE_MASK) === 0;
    }
    // get_written_sptes for every gpte the store wrote a byte of: one for an aligned store; two for one that
    // straddles a boundary, or three for an 8-byte store over 4-byte gptes from byte 2 of one (KVM zaps the page
    // instead, detect_write_misaligned, and looks only at the first gpte; without that policy each written
    // gpte's sptes are cleared, so that no spte outlives the gpte it was built from).
    for (let a = storeOff - (storeOff & (pteSize - 1)); a <= storeLastOff; a += pteSize) {
      const w = writtenSptes(a, fourByte, level, quadrant);
      if (w < 0) continue; // another quadrant's alias
      const first = w >>> 2;
      const n = w & 3;
      for (let k = 0; k < n; k++) {
        const loc = sp.base + first + k;
        // kvm_mmu_pte_write: "entry = *spte; mmu_page_zap_pte(); [update]; if (need_remote_flush(entry,
        // *spte)) flush = true": the flush depends on the spte before and after, not on the zap alone, so
        // an update that keeps or adds rights flushes nothing (a TLB entry with fewer rights only misses).
        const sLo = pool.lo(loc);
        const sHi = pool.hi(loc);
        const pending = s.pendingFlush;
        zapSpte(s, sp, loc);
        s.pendingFlush = pending;
        if ((gLo !== 0 || gHi !== 0) && level !== 1) st.bump(host, 4 /* mmu_pde_zapped */);
        if (update) {
          // mmu_pte_write_new_pte (KVM 2007-2021): "++vcpu->kvm->stat.mmu_pte_updated; ...update_pte(...)": every
          // update_pte call counts, whether or not its gpte makes an spte (not present, A=0, reserved bits).
          st.bump(host, 3 /* mmu_pte_updated */);
          updatePte(s, st, sp, loc, gLo, gHi);
        }
        if (s.isPresent(sLo, sHi) && (!s.isPresent(pool.lo(loc), pool.hi(loc)) || spteNeedsFlush(sLo, sHi, pool.lo(loc), pool.hi(loc)))) s.pendingFlush = true;
      }
    }
  }
  if (!nested) scratch.pagesBusy = false;
  finish(s);
}

/**
 * FNAME(update_pte) (KVM 2007-2021): after the written spte was cleared, install the new gpte at once
 * when it is present and accessed with no reserved bits; access is the page's role access AND the gpte's.
 * A gpte written not present becomes notrap where the page may hold notrap sptes (KVM 2007: "if
 * (!offset_in_pte && !is_present_pte(gpte)) set_shadow_pte(spte, shadow_notrap_nonpresent_pte)"); a
 * present gpte with A=0 stays trap, so that the access that sets A exits.
 */
function updatePte(s: ShadowMmuState, st: VcpuShadowState, sp: ShadowPage, loc: number, gLo: number, gHi: number): void {
  if ((gLo & PT_PRESENT) === 0) {
    if (s.notrapAllowed(sp)) s.pool.set(loc, s.notrapLo, s.notrapHi);
    return;
  }
  const leaf = s.scratch.leaf;
  if (!leafFromGpte(s, st.vcpu, sp, gLo, gHi, leaf)) return;
  installLeaf(s, sp, loc, leaf.lo, leaf.hi);
}
