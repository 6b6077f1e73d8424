import { createVm } from '@vmexit/core';
import vmx from '@vmexit/backend-vmx';
import tdp from '@vmexit/mmu-tdp';
import { runWorkload } from '@vmexit/guest';
const memory = 16 << 20;
const vm = await createVm({ backend: 'vmx', mmu: 'tdp', memory }, { sources: { backends: { vmx }, mmus: { tdp }, policies: [] }, seed: 1 });
const t0 = Date.now();
const out = runWorkload({ workload: process.argv[2], memory, machine: vm.machine, seed: 1 });
console.log(Date.now() - t0, 'ms', JSON.stringify(Object.fromEntries(Object.entries(vm.counters().total).filter(([k]) => /^exits|pf_|pages_|tdp/.test(k)))));
const { leafLoc } = await import('./dist/map.js');
const missing = [];
for (let g = 0; g < memory/4096; g++) { const loc = leafLoc(vm.mmu, g); if (loc < 0 || (vm.mmu.pool.lo(loc) & 0x800) === 0) missing.push(g.toString(16)); }
console.log('missing', missing);
