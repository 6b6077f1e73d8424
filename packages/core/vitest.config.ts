import { vmexitVitestConfig } from '../../vitest.shared.js';

// Two files get a worker's module graph of their own: generate-oracle.test.ts mocks the walker module (vi.mock), and
// tlb.hit-path.test.ts counts garbage collections, which depend on what ran in the process before it (a young
// generation grown by earlier files collects less often).
export default vmexitVitestConfig({ isolate: false, isolated: ['test/conformance/generate-oracle.test.ts', 'test/tlb/tlb.hit-path.test.ts'] });
