import { createVm } from '@vmexit/core';
import vmx from '@vmexit/backend-vmx';
import svm from '@vmexit/backend-svm';
import { tdpMmuModule } from '@vmexit/mmu-tdp';
import { runWorkload } from '@vmexit/guest';
const [wl, hp] = [process.argv[2], process.argv[3] ?? '4k'];
const memory = 16 << 20;
for (const mode of ['legacy32', 'pae', 'long4', 'long5']) for (const backend of ['vmx', 'svm']) {
  try {
  const vm = await createVm({ backend, mmu: 'tdp', memory, guest: { mode } }, { sources: { backends: { vmx, svm }, mmus: { tdp: tdpMmuModule({ hostPages: hp }) }, policies: [] }, seed: 1 });
  vm.exits$.subscribe(() => vm.mmu.audit());
  const out = runWorkload({ workload: wl, mode, memory, machine: vm.machine, seed: 1 });
  const nat = runWorkload({ workload: wl, mode, memory, seed: 1 });
  const t = vm.counters().total;
  console.log(mode, backend, out.result.memoryDigest === nat.result.memoryDigest && JSON.stringify(out.events) === JSON.stringify(nat.events) ? 'SAME' : 'DIFF', JSON.stringify(Object.fromEntries(Object.entries(t).filter(([k]) => /^exits$|pf_|pages_|tdp|mmio|walk_refs|tlb_misses/.test(k)))));
  } catch (e) { console.log(mode, backend, 'ERR', e.message.slice(0, 300)); }
}
