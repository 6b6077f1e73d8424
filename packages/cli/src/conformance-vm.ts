import {
  ACC_FETCH,
  ACC_USER,
  ACC_WRITE,
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_LA57,
  CR4_PAE,
  CR4_PGE,
  CR4_PKE,
  CR4_PSE,
  CR4_SMAP,
  CR4_SMEP,
  EFER_LME,
  EFER_NXE,
  GP_VECTOR,
  GuestAbort,
  PAGE_SIZE,
  PF_VECTOR,
  TWO_POW_32,
  createNativeVectorMachine,
  createVm,
  vectorLinearAddress,
  type AccessOutcome,
  type ConformanceVector,
  type MemslotSpec,
  type ModuleSources,
  type Variant,
  type VectorMachine,
  type Vcpu,
} from '@vmexit/core';

/** The marker bytes write accesses store (in turn, so that a second store changes the byte again), to find which physical page it reached. */
const WRITE_MARKERS = [0xa5, 0x5a] as const;

/**
 * Guest RAM lies below 2^46: the model backs guest-physical address X at host-physical X, and the shadow MMU's
 * host walks with MAXPHYADDR 46 (mmu-shadow HOST_MAXPHYADDR), as KVM refuses a memslot above the host's reach
 * under TDP (`kvm_arch_prepare_memory_region`, `kvm_mmu_max_gfn`). A page a vector's access reaches above it
 * is outside guest RAM: MMIO, which the hypervisor must emulate (open bus), never loop on.
 */
const RAM_LIMIT = 2 ** 46;

/**
 * Builds a VM of `variant` in the state a conformance vector describes and returns it as a VectorMachine:
 * each access of the vector is a real guest access on vCPU 0 under the hypervisor (backend, MMU and
 * policies), and the outcome is what the guest can observe: the #PF or #GP its handler receives (with the
 * error code), or the physical page the access reached, identified by the data there.
 *
 * Guest memory: one 4 KiB memslot for every page the vector's entries live in, and for every page the
 * accesses reach natively (so the data is backed); nothing else exists, so a hypervisor that maps an access
 * anywhere else sends it to MMIO and the outcome differs. Data pages are filled with a pattern whose every
 * 32-bit word is unique, so a load tells where it landed; a store writes a marker byte and the page whose
 * byte changed is where it landed.
 */
export async function createVmVectorMachine(vector: ConformanceVector, variant: Variant, sources?: ModuleSources): Promise<VectorMachine> {
  // The pages that must be backed: the tables, and where the accesses go natively.
  const tablePages = new Set<number>();
  for (const e of vector.memory) tablePages.add(Math.floor(Number(e.pa) / PAGE_SIZE));
  const dataPages = new Set<number>();
  const native = createNativeVectorMachine(vector);
  for (const acc of [vector.preAccess, vector.access]) {
    if (acc === null) continue;
    const o = native.access(acc);
    if (o.result === 'ok' && o.pa !== null && Number(o.pa) < RAM_LIMIT) dataPages.add(Math.floor(Number(o.pa) / PAGE_SIZE));
  }
  const allPages = [...new Set([...tablePages, ...dataPages])].sort((a, b) => a - b);
  const memslots: MemslotSpec[] = allPages.map((gfn) => ({ base: gfn * PAGE_SIZE, size: PAGE_SIZE }));

  const vm = await createVm({ ...variant, vcpus: 1 }, { sources, memslots, maxPhyAddr: vector.cpu.maxPhyAddr });
  const v = vm.vcpus[0]!;
  const mem = v.memory;

  // Data pages: every 32-bit word unique (page index and word index), so a 4-byte load names its address.
  let idx = 0;
  const tagOf = new Map<number, number>();
  for (const gfn of dataPages) {
    if (tablePages.has(gfn)) continue;
    const off = mem.gpaToOffset(gfn * PAGE_SIZE);
    for (let w = 0; w < 1024; w++) mem.u32[(off >>> 2) + w] = (0x80000000 | (idx << 10) | w) >>> 0;
    tagOf.set(idx, gfn);
    idx++;
  }
  // The vector's entries, as a loader writes them before the guest starts.
  for (const e of vector.memory) {
    const off = mem.gpaToOffset(Number(e.pa));
    mem.view.setUint32(off, Number(e.value & 0xffffffffn), true);
    if (e.size === 8) mem.view.setUint32(off + 4, Number(e.value >> 32n), true);
  }

  let last: AccessOutcome = { result: 'ok', errorCode: null, pa: null };
  // An access outside guest RAM exits as MMIO (to user space, which answers open bus): where it went is the exit's gpa.
  let mmioGpa = -1;
  // (A #PF that the MMU found to be MMIO exits to user space too: its resolution says where.)
  vm.exits$.subscribe((e) => {
    const r = e.resolution;
    if (e.kind === 'mmio') mmioGpa = e.gpa;
    else if (r !== null && r.kind === 'userspace' && r.reason === 'mmio') mmioGpa = r.gpa;
  });
  let stores = 0;
  v.setExceptionHandler(PF_VECTOR, (_vc, _vec, ec) => {
    last = { result: 'pf', errorCode: ec, pa: null };
    throw new GuestAbort('#PF');
  });
  v.setExceptionHandler(GP_VECTOR, () => {
    last = { result: 'gp', errorCode: null, pa: null };
    throw new GuestAbort('#GP');
  });

  const booted = boot(v, vector);
  // A vector may give PDPTE registers that differ from what memory holds at CR3 (junk the loader left):
  // they are the registers as loaded, so put them in place and let the hypervisor see a CR3 load.
  if (booted && vector.mode === 'pae' && vector.pdptes !== null) {
    let differ = false;
    for (let i = 0; i < 4; i++) {
      const lo = Number(vector.pdptes[i]! & 0xffffffffn);
      const hi = Number(vector.pdptes[i]! >> 32n);
      if (v.ctx.pdpteLo[i] !== lo || v.ctx.pdpteHi[i] !== hi) differ = true;
      v.ctx.pdpteLo[i] = lo;
      v.ctx.pdpteHi[i] = hi;
    }
    if (differ) {
      v.tlb.flushAll(false);
      vm.mmu?.crWritten(v, 3, v.cr3, false);
    }
  }

  const va = vectorLinearAddress(vector);
  const backed = allPages;
  return {
    access(access: number): AccessOutcome {
      if (!booted) return { result: 'gp', errorCode: null, pa: null };
      v.setCpl((access & ACC_USER) !== 0 ? 3 : 0);
      const word = va - (((va % 4) + 4) % 4);
      mmioGpa = -1;
      try {
        if ((access & ACC_WRITE) !== 0) {
          const before = backed.map((gfn) => mem.u8[mem.readOffset(gfn * PAGE_SIZE) + pageOffset(va)]!);
          v.write(va, 1, WRITE_MARKERS[stores++ % 2]!);
          if (mmioGpa >= 0) return ok(mmioGpa);
          const hits = backed.filter((gfn, i) => mem.u8[mem.readOffset(gfn * PAGE_SIZE) + pageOffset(va)] !== before[i]);
          return ok(hits.length === 1 ? hits[0]! * PAGE_SIZE + pageOffset(va) : null);
        }
        const value = (access & ACC_FETCH) !== 0 ? v.fetch(word, 4) : v.read(word, 4);
        if (mmioGpa >= 0) return ok(mmioGpa - pageOffset(word) + pageOffset(va));
        const page = (value & 0x80000000) !== 0 ? tagOf.get((value >>> 10) & 0x1fffff) : undefined;
        if (page !== undefined && (value & 0x3ff) === pageOffset(word) / 4) return ok(page * PAGE_SIZE + pageOffset(va));
        // Not a pattern word: the access reached a table page (or the wrong place). Find the backed page
        // holding this value at this offset; the answer must be unique to count.
        const hits = backed.filter((gfn) => mem.view.getUint32(mem.readOffset(gfn * PAGE_SIZE) + pageOffset(word), true) === value >>> 0);
        return ok(hits.length === 1 ? hits[0]! * PAGE_SIZE + pageOffset(va) : null);
      } catch (e) {
        if (e instanceof GuestAbort) return last;
        throw e;
      }
    },
    read(pa: bigint, size: 4 | 8): bigint {
      const off = mem.readOffset(Number(pa));
      const lo = BigInt(mem.view.getUint32(off, true));
      return size === 4 ? lo : (BigInt(mem.view.getUint32(off + 4, true)) << 32n) | lo;
    },
  };
}

function ok(pa: number | null): AccessOutcome {
  if (pa === null) return { result: 'ok', errorCode: null, pa: null };
  const hi = Math.floor(pa / TWO_POW_32);
  return { result: 'ok', errorCode: null, pa: (BigInt(hi) << 32n) | BigInt(pa - hi * TWO_POW_32) };
}

function pageOffset(va: number): number {
  return ((va % PAGE_SIZE) + PAGE_SIZE) % PAGE_SIZE;
}

/**
 * Puts vCPU 0 in the vector's state the way a guest does it (SDM Vol. 3A §9.8.5 for IA-32e): EFER, CR4, CR3,
 * then CR0.PG. False when a step raised #GP (a PAE PDPTE with reserved bits, §4.4.1).
 */
function boot(v: Vcpu, vector: ConformanceVector): boolean {
  const cpu = vector.cpu;
  const long = vector.mode === 'long4' || vector.mode === 'long5';
  try {
    v.writeEfer((cpu.eferNxe ? EFER_NXE : 0) | (long ? EFER_LME : 0));
    v.movToCr4(
      (vector.mode === 'legacy32' ? 0 : CR4_PAE) |
        (cpu.cr4Pse ? CR4_PSE : 0) |
        (cpu.cr4Pge ? CR4_PGE : 0) |
        (cpu.cr4Smep ? CR4_SMEP : 0) |
        (cpu.cr4Smap ? CR4_SMAP : 0) |
        (cpu.cr4Pke ? CR4_PKE : 0) |
        (vector.mode === 'long5' ? CR4_LA57 : 0),
    );
    v.movToCr3(Number(vector.cr3));
    v.wrpkru(cpu.pkru);
    v.setAc(cpu.eflagsAc);
    v.movToCr0(CR0_PG | CR0_PE | (cpu.cr0Wp ? CR0_WP : 0));
    return v.pagingEnabled;
  } catch (e) {
    if (e instanceof GuestAbort) return false;
    throw e;
  }
}
