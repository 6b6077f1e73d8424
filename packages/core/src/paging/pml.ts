/**
 * Page-modification logging (PML), Intel SDM Vol. 3C §29.3.6: with the "enable PML" VM-execution control and
 * EPT accessed and dirty flags on (EPTP bit 6), each time the processor sets a dirty flag for EPT that was
 * clear, it logs the guest-physical address (bits 11:0 cleared) in the 4 KiB PML log of 512 64-bit entries at
 * the PML address, at entry PML index, and decrements the index (a 16-bit guest-state field, §25.4.2). When
 * it needs to log and the index is not in the range 0-511, it does not set the flag: a PML-full event occurs,
 * a VM exit with basic exit reason 62 ("page-modification log full"), before the access completes (the
 * hypervisor empties the log, resets the index to 511 and re-enters the guest, which repeats the access).
 */

/** Entries of the PML log (KVM PML_LOG_NR_ENTRIES). */
export const PML_ENTRIES = 512;
/** The index the hypervisor resets the log to (KVM PML_HEAD_INDEX): the log fills from entry 511 down. */
export const PML_HEAD_INDEX = PML_ENTRIES - 1;

/** The PML log and index of one vCPU (the hardware's side: the EPT walk logs into it, `EptStage.pml`). */
export class PmlLog {
  /** The 512 entries: guest-physical addresses, 4 KiB aligned. */
  readonly entries = new Float64Array(PML_ENTRIES);
  /** The PML index (16 bits: after entry 0 it wraps to 0xffff, out of range). */
  index = PML_HEAD_INDEX;

  /** Logs `gpa` and returns true; false when the index is out of range (a PML-full event: nothing is logged). */
  log(gpa: number): boolean {
    const i = this.index;
    if (i > PML_HEAD_INDEX) return false;
    this.entries[i] = gpa - (gpa & 0xfff);
    this.index = (i - 1) & 0xffff;
    return true;
  }

  /**
   * The hypervisor empties the log (KVM `vmx_flush_pml_buffer`): visits the logged addresses, newest first
   * (index + 1 up to 511), and resets the index to 511. Returns how many there were.
   */
  drain(visit: (gpa: number) => void): number {
    const first = this.index > PML_HEAD_INDEX ? 0 : this.index + 1;
    for (let i = first; i < PML_ENTRIES; i++) visit(this.entries[i]!);
    this.index = PML_HEAD_INDEX;
    return PML_ENTRIES - first;
  }
}
