import { ContainerModule } from 'inversify';
import { NoopRecorder, NoopTracer, type ExitRecorder, type ExitTracer } from '../exits/observers.js';
import { TYPES } from './tokens.js';

/** Core's defaults: no-op observers (a CLI run or a test rebinds them). */
export const coreModule = new ContainerModule(({ bind }) => {
  bind<ExitTracer>(TYPES.ExitTracer).toConstantValue(new NoopTracer());
  bind<ExitRecorder>(TYPES.ExitRecorder).toConstantValue(new NoopRecorder());
});
