import { vmexitVitestConfig } from '../../vitest.shared.js';

export default vmexitVitestConfig({ isolate: false });
