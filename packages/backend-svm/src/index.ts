/** @vmexit/backend-svm: AMD SVM (APM Vol. 2 ch. 15) for vmexit. */
export * from './constants.js';
export * from './state.js';
export * from './backend.js';
export { svmModule, svmModule as default } from './module.js';
