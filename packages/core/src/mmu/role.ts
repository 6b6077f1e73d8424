/**
 * The MMU page role (KVM `union kvm_mmu_page_role`, arch/x86/include/asm/kvm_host.h), packed into one
 * 32-bit integer in KVM's bit order (LSB first), shared by the shadow and the TDP MMU. A page is looked up by (gfn, role word): two pages
 * for the same guest table differ when any of these differ (Documentation/virt/kvm/x86/mmu.rst, "Shadow
 * pages"). Fields KVM has that this simulator does not model (smm, guest_mode, ad_disabled, passthrough)
 * are left out; their bit positions stay free.
 */

/** level:4 - 1 = a page of 4 KiB sptes, 2 = of 2 MiB-region sptes, and so on. */
export const ROLE_LEVEL_MASK = 0xf;
/** has_4_byte_gpte:1 - the guest uses 32-bit (non-PAE) paging. */
export const ROLE_4BYTE_GPTE = 1 << 4;
/** quadrant:2 - which part of a 4-byte-gpte guest table this page shadows (see quadrantOf). */
export const ROLE_QUADRANT_SHIFT = 5;
/** The quadrant field's bits (see ROLE_QUADRANT_SHIFT). */
export const ROLE_QUADRANT_MASK = 3 << ROLE_QUADRANT_SHIFT;
/** direct:1 - the sptes map a linear gfn range (a guest large page); no guest table is behind them. */
export const ROLE_DIRECT = 1 << 7;
/** access:3 - the uwx rights inherited from the parent guest entries (ACC_* below). */
export const ROLE_ACCESS_SHIFT = 8;
/** The access field's bits (see ROLE_ACCESS_SHIFT). */
export const ROLE_ACCESS_MASK = 7 << ROLE_ACCESS_SHIFT;
/** invalid:1 - zapped while it was a root; freed when its root count drops to 0. */
export const ROLE_INVALID = 1 << 11;
/** efer_nx:1, cr0_wp:1, smep_andnot_wp:1, smap_andnot_wp:1 - the guest control bits the page is valid for. */
export const ROLE_EFER_NX = 1 << 12;
/** cr0_wp: the page is valid for CR0.WP=1. */
export const ROLE_CR0_WP = 1 << 13;
/** smep_andnot_wp: CR4.SMEP=1 and CR0.WP=0 (KVM shadows this case apart: user pages become supervisor-only). */
export const ROLE_SMEP_ANDNOT_WP = 1 << 14;
/** smap_andnot_wp: CR4.SMAP=1 and CR0.WP=0. */
export const ROLE_SMAP_ANDNOT_WP = 1 << 15;

/** KVM's ACC_* rights format (arch/x86/kvm/mmu/mmu_internal.h): execute is positive. */
export const ACC_EXEC_MASK = 1;
/** ACC_* write right (KVM `ACC_WRITE_MASK`, the pte's R/W bit). */
export const ACC_WRITE_MASK = 2;
/** ACC_* user right (KVM `ACC_USER_MASK`, the pte's U/S bit). */
export const ACC_USER_MASK = 4;
/** All ACC_* rights: execute, write and user. */
export const ACC_ALL = 7;

/**
 * The role bits that must match the vCPU's current base role for a pte write to be applied to a page
 * rather than only cleared (KVM `mmu_base_role_mask`, arch/x86/kvm/mmu/mmu.c): everything but level,
 * quadrant, direct, access and invalid.
 */
export const ROLE_BASE_MASK = ROLE_4BYTE_GPTE | ROLE_EFER_NX | ROLE_CR0_WP | ROLE_SMEP_ANDNOT_WP | ROLE_SMAP_ANDNOT_WP;

/** The level field of a role word (1 = a page of 4 KiB sptes). */
export function roleLevel(role: number): number {
  return role & ROLE_LEVEL_MASK;
}

/** The quadrant field of a role word (0-3; nonzero only for pages shadowing 4-byte-gpte tables). */
export function roleQuadrant(role: number): number {
  return (role & ROLE_QUADRANT_MASK) >>> ROLE_QUADRANT_SHIFT;
}

/** The access field of a role word, in ACC_* bits. */
export function roleAccess(role: number): number {
  return (role & ROLE_ACCESS_MASK) >>> ROLE_ACCESS_SHIFT;
}

/** Whether the role is direct (the page maps a gfn range, no guest table behind it). */
export function roleDirect(role: number): boolean {
  return (role & ROLE_DIRECT) !== 0;
}

/** The role of a child page (KVM `kvm_mmu_child_role`): one level down, with its own access and quadrant. */
export function childRole(parent: number, parentIndex: number, direct: boolean, access: number): number {
  let r = parent & ~(ROLE_LEVEL_MASK | ROLE_ACCESS_MASK | ROLE_DIRECT | ROLE_QUADRANT_MASK | ROLE_INVALID);
  r |= (parent & ROLE_LEVEL_MASK) - 1;
  r |= (access & ACC_ALL) << ROLE_ACCESS_SHIFT;
  if (direct) r |= ROLE_DIRECT;
  // A 4-byte-gpte guest PT (4 MiB) is shadowed by two PAE PTs (2 MiB each); the parent's 8-byte PDE index
  // covers VA bits 29:21, so its lowest bit is VA bit 21: which half this child maps.
  if ((parent & ROLE_4BYTE_GPTE) !== 0) r |= (parentIndex & 1) << ROLE_QUADRANT_SHIFT;
  return r;
}

/** The guest state a root role is derived from (KVM `kvm_calc_shadow_mmu_root_page_role`). */
export interface RoleInputs {
  level: number;
  fourByteGpte: boolean;
  quadrant: number;
  eferNx: boolean;
  cr0Wp: boolean;
  smep: boolean;
  smap: boolean;
}

/** The role of a root page for the given guest state (KVM `kvm_calc_shadow_mmu_root_page_role`). */
export function rootRole(i: RoleInputs): number {
  return rootRoleOf(i.level, i.fourByteGpte, i.quadrant, i.eferNx, i.cr0Wp, i.smep, i.smap);
}

/** `rootRole` with the inputs as arguments (no object: the MMU computes it on its write path). */
export function rootRoleOf(level: number, fourByteGpte: boolean, quadrant: number, eferNx: boolean, cr0Wp: boolean, smep: boolean, smap: boolean): number {
  let r = level | (ACC_ALL << ROLE_ACCESS_SHIFT) | ((quadrant & 3) << ROLE_QUADRANT_SHIFT);
  if (fourByteGpte) r |= ROLE_4BYTE_GPTE;
  if (eferNx) r |= ROLE_EFER_NX;
  if (cr0Wp) r |= ROLE_CR0_WP;
  if (smep && !cr0Wp) r |= ROLE_SMEP_ANDNOT_WP;
  if (smap && !cr0Wp) r |= ROLE_SMAP_ANDNOT_WP;
  return r;
}

/** A readable form of a role, for audit reports and errors. */
export function describeRole(role: number): string {
  const acc = roleAccess(role);
  const parts = [
    `level=${roleLevel(role)}`,
    `gpte=${(role & ROLE_4BYTE_GPTE) !== 0 ? 4 : 8}`,
    `quadrant=${roleQuadrant(role)}`,
    `direct=${roleDirect(role) ? 1 : 0}`,
    `access=${acc & ACC_USER_MASK ? 'u' : '-'}${acc & ACC_WRITE_MASK ? 'w' : '-'}${acc & ACC_EXEC_MASK ? 'x' : '-'}`,
    `cr0_wp=${role & ROLE_CR0_WP ? 1 : 0}`,
    `efer_nx=${role & ROLE_EFER_NX ? 1 : 0}`,
    `smep_andnot_wp=${role & ROLE_SMEP_ANDNOT_WP ? 1 : 0}`,
    `smap_andnot_wp=${role & ROLE_SMAP_ANDNOT_WP ? 1 : 0}`,
  ];
  // Bit 19: mmu-shadow's pkeys_andnot_wp (protection keys apply and CR0.WP = 0), a bit KVM's role leaves unused.
  if (role & (1 << 19)) parts.push('pkeys_andnot_wp=1');
  if (role & ROLE_INVALID) parts.push('invalid');
  return `{${parts.join(' ')}}`;
}
