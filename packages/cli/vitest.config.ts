import { vmexitVitestConfig } from '../../vitest.shared.js';

// program.test.ts mocks @vmexit/lab (vi.mock): it gets a module graph of its own. exit-allocation.int.test.ts counts
// garbage collections of the exit path as V8 compiled it for its runs alone: after other files' variants (TDP, SVM,
// dirty logging) in the same process, call sites it shares with them can be polymorphic, and compiled otherwise.
export default vmexitVitestConfig({ isolate: false, isolated: ['test/program.test.ts', 'test/exit-allocation.int.test.ts'] });
