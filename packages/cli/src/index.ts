export { main, buildProgram } from './program.js';
export { InputError, RunFailure } from './errors.js';
