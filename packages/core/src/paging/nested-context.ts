import type { PagingModeId } from '../arch/modes.js';
import type { PagingContext, SecondStage } from './types.js';

/**
 * The paging context the processor walks under two-dimensional paging: the guest's own control state (mode,
 * CR3, the PDPTE registers, CR0.WP, CR4, EFER.NXE, RFLAGS.AC, PKRU, read live from `guest`, so every change
 * the vCPU makes to its context applies here too), the processor's MAXPHYADDR (the host's: CPUID's value is
 * only what the guest is told) and the second stage every guest-physical address goes through. The guest
 * context itself stays one-dimensional: it is what software walks of the guest's tables use (KVM's emulator
 * and gva_to_gpa walk the guest's tables in guest-physical space, with the guest's MAXPHYADDR).
 */
export class NestedPagingContext implements PagingContext {
  constructor(
    readonly guest: PagingContext,
    public nested: SecondStage,
  ) {}

  get maxPhyAddr(): number {
    return this.nested.maxPhyAddr;
  }
  get mode(): PagingModeId {
    return this.guest.mode;
  }
  get cr3(): number {
    return this.guest.cr3;
  }
  set cr3(v: number) {
    this.guest.cr3 = v;
  }
  get pdpteLo(): Uint32Array {
    return this.guest.pdpteLo;
  }
  get pdpteHi(): Uint32Array {
    return this.guest.pdpteHi;
  }
  get cr0Wp(): boolean {
    return this.guest.cr0Wp;
  }
  get cr4Pse(): boolean {
    return this.guest.cr4Pse;
  }
  get cr4Pge(): boolean {
    return this.guest.cr4Pge;
  }
  get cr4Smep(): boolean {
    return this.guest.cr4Smep;
  }
  get cr4Smap(): boolean {
    return this.guest.cr4Smap;
  }
  get cr4Pke(): boolean {
    return this.guest.cr4Pke;
  }
  get eferNxe(): boolean {
    return this.guest.eferNxe;
  }
  get eflagsAc(): boolean {
    return this.guest.eflagsAc;
  }
  set eflagsAc(v: boolean) {
    this.guest.eflagsAc = v;
  }
  get pkru(): number {
    return this.guest.pkru;
  }
  set pkru(v: number) {
    this.guest.pkru = v;
  }
}
