import type { VxtAccesses, VxtCollapse } from './types.js';

/**
 * Growable columnar access records (typed arrays doubled as needed) that collapse accesses into records
 * as `VxtCollapse` (types.ts) describes.
 */
export class AccessBuilder {
  kind: Uint8Array;
  page: Float64Array;
  count: Uint32Array;
  length = 0;
  /** Index of the record the next fetch may join (-1: none), and its page. */
  private fetchRec = -1;
  private fetchPage = -1;
  /** Index of the record the next data access may join (-1: none), its page and kind. */
  private dataRec = -1;
  private dataPage = -1;
  private dataKind = -1;

  constructor(
    readonly collapse: VxtCollapse,
    capacity = 1 << 16,
  ) {
    this.kind = new Uint8Array(capacity);
    this.page = new Float64Array(capacity);
    this.count = new Uint32Array(capacity);
  }

  /** One access of `kind` to virtual page `page`. */
  add(kind: number, page: number): void {
    if (kind === 0) {
      if (page === this.fetchPage && this.fetchRec >= 0 && this.count[this.fetchRec] !== 0xffffffff) {
        this.count[this.fetchRec]++;
        return;
      }
    } else if (page === this.dataPage && kind === this.dataKind && this.dataRec >= 0 && this.count[this.dataRec] !== 0xffffffff) {
      this.count[this.dataRec]++;
      return;
    }
    this.push(kind, page, 1);
  }

  /** Appends a record as it is (no collapse with an earlier one). */
  push(kind: number, page: number, count: number): void {
    if (this.length === this.kind.length) this.grow();
    const i = this.length++;
    this.kind[i] = kind;
    this.page[i] = page;
    this.count[i] = count;
    if (this.collapse === 'run') {
      // only the last record can be joined, by an access of its own kind
      this.fetchRec = this.dataRec = -1;
    }
    if (kind === 0) {
      this.fetchRec = i;
      this.fetchPage = page;
    } else {
      this.dataRec = i;
      this.dataPage = page;
      this.dataKind = kind;
    }
  }

  /** The next access starts a new record (an event sits between them). */
  breakRun(): void {
    this.fetchRec = this.dataRec = -1;
  }

  private grow(): void {
    const n = this.kind.length * 2;
    const kind = new Uint8Array(n);
    kind.set(this.kind);
    const page = new Float64Array(n);
    page.set(this.page);
    const count = new Uint32Array(n);
    count.set(this.count);
    this.kind = kind;
    this.page = page;
    this.count = count;
  }

  /** The records, trimmed to `length` (copies, so the builder's spare capacity is released). */
  finish(): VxtAccesses {
    return {
      length: this.length,
      kind: this.kind.slice(0, this.length),
      page: this.page.slice(0, this.length),
      count: this.count.slice(0, this.length),
    };
  }
}
