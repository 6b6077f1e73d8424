import { describe, expect, it } from 'vitest';
import { ACC_READ } from '../../src/arch/constants.js';
import { Machine } from '../../src/machine/machine.js';
import { POOL_BASE, SptePool, SptePoolMemory } from '../../src/mmu/pool.js';
import { EPT_DIRTY, EptStage } from '../../src/paging/ept.js';
import { PML_HEAD_INDEX, PmlLog } from '../../src/paging/pml.js';
import { NESTED_FINAL, NESTED_TABLE, WALK_SIDE_EFFECTS, WalkResult } from '../../src/paging/types.js';

/*
 * EPT tables in the MMU page pool (so that the stage keeps its walks in its StageMemo while the pool is unchanged):
 * EPT PML4 (frame 0) -> PDPT (1) -> PD (2) -> PT (3), the PT mapping gpa page g to host page g for g < 512, R|W|X,
 * memory type WB, accessed flags set and dirty flags clear (as after KVM clears them for PML).
 */
function eptWithPml() {
  const m = new Machine({ memoryBytes: 4 * 2 ** 20 });
  const pool = new SptePool(4);
  for (let f = 0; f < 3; f++) pool.set(f * 512, (pool.hpaOf(f + 1) % 2 ** 32) | 0x107, Math.floor(pool.hpaOf(f + 1) / 2 ** 32));
  for (let g = 0; g < 512; g++) pool.set(3 * 512 + g, g * 4096 + 0x137, 0); // R|W|X, WB (6 << 3), A
  const stage = new EptStage(new SptePoolMemory(pool, m.memory), POOL_BASE + (3 << 3) + 6 + 0x40); // 4 levels, WB, A/D on
  const pml = new PmlLog();
  stage.pml = pml;
  return { pool, stage, pml, out: new WalkResult() };
}

describe('EptStage', () => {
  describe('.translate with PML', () => {
    // With EPT A/D on, a guest paging-structure access is a write for EPT (SDM Vol. 3C §29.3.5): the walk sets the
    // leaf's dirty flag if clear, and PML logs the gpa when it does so (§29.3.6), once per clear. The stage's walk
    // memo must not answer from a walk made before the flag was cleared (KVM clears it for PML with
    // clear_dirty_gfn_range / clear_dirty_pt_masked, arch/x86/kvm/mmu/tdp_mmu.c): every pool write is a new version.
    it('logs a guest paging-structure page each time its dirty flag was cleared, and only then', () => {
      const { pool, stage, pml, out } = eptWithPml();
      const table = 0x5000 + 0x888; // a guest PML4 entry's gpa
      expect(stage.translate(table, ACC_READ, NESTED_TABLE, WALK_SIDE_EFFECTS, out)).toBe(table);
      expect(pml.index).toBe(PML_HEAD_INDEX - 1);
      expect(pml.entries[PML_HEAD_INDEX]).toBe(0x5000);
      expect(pool.lo(3 * 512 + 5) & EPT_DIRTY).toBe(EPT_DIRTY);
      // Again: the flag is set, nothing is logged (the memo answers: the walk would set no flag).
      for (let i = 0; i < 3; i++) expect(stage.translate(table, ACC_READ, NESTED_TABLE, WALK_SIDE_EFFECTS, out)).toBe(table);
      // A data read of the page needs no dirty flag either.
      expect(stage.translate(0x5010, ACC_READ, NESTED_FINAL, WALK_SIDE_EFFECTS, out)).toBe(0x5010);
      expect(pml.index).toBe(PML_HEAD_INDEX - 1);
      // The MMU clears the dirty flag (a harvest): the next paging-structure access sets and logs it again.
      pool.set(3 * 512 + 5, (pool.lo(3 * 512 + 5) & ~EPT_DIRTY) >>> 0, 0);
      // An inspection walk (no side effects) sets nothing and logs nothing.
      expect(stage.translate(table, ACC_READ, NESTED_TABLE, 0, out)).toBe(table);
      expect(pml.index).toBe(PML_HEAD_INDEX - 1);
      expect(stage.translate(table, ACC_READ, NESTED_TABLE, WALK_SIDE_EFFECTS, out)).toBe(table);
      expect(pml.index).toBe(PML_HEAD_INDEX - 2);
      expect(pml.entries[PML_HEAD_INDEX - 1]).toBe(0x5000);
      expect(stage.translate(table, ACC_READ, NESTED_TABLE, WALK_SIDE_EFFECTS, out)).toBe(table);
      expect(pml.index).toBe(PML_HEAD_INDEX - 2);
    });
  });
});
