import { vmexitVitestConfig } from '../../vitest.shared.js';

// Three files get a worker's module graph of their own: generate-oracle.test.ts mocks the walker module (vi.mock), and
// tlb.hit-path.test.ts and gc-watch.test.ts count garbage collections, which depend on what ran in the process before
// them (a young generation grown by earlier files collects less often).
export default vmexitVitestConfig({
  isolate: false,
  isolated: ['test/conformance/generate-oracle.test.ts', 'test/tlb/tlb.hit-path.test.ts', 'test/testing/gc-watch.test.ts'],
});
