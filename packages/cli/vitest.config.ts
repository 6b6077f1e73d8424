import { vmexitVitestConfig } from '../../vitest.shared.js';

// program.test.ts mocks @vmexit/lab (vi.mock): it gets a module graph of its own.
export default vmexitVitestConfig({ isolate: false, isolated: ['test/program.test.ts'] });
