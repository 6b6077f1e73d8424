import { BackendError as SvmBackendError } from '@vmexit/backend-svm';
import { BackendError as VmxBackendError } from '@vmexit/backend-vmx';
import { TdpMmuError } from '@vmexit/mmu-tdp';
import { describe, expect, it, vi } from 'vitest';
import { captureStdio } from './helpers/stdio.js';
import { main } from '../src/program.js';

// The run itself is replaced by one that throws the error under test: what is checked is how `main` maps a
// layer's error to an exit code and a message, whichever run raised it.
const thrown = vi.hoisted(() => ({ error: null as unknown }));
vi.mock('@vmexit/lab', async (importOriginal) => {
  const lab = await importOriginal<typeof import('@vmexit/lab')>();
  return {
    ...lab,
    runOnVariant: () => {
      throw thrown.error;
    },
  };
});

const { err } = captureStdio();
const RUN = ['run', '--workload', 'demand-fault:pages=4', '--memory', '16M'];

describe('main', () => {
  describe('errors with which a layer stops a run', () => {
    it.each([
      [
        'the VMX backend',
        new VmxBackendError('E_BACKEND_STATE', 'VMX: "enable EPT" is 0 in the secondary controls: no second stage'),
        'BackendError E_BACKEND_STATE',
      ],
      ['the SVM backend', new SvmBackendError('E_BACKEND_UNKNOWN_EXIT', 'unknown SVM exit code 0x5ff'), 'BackendError E_BACKEND_UNKNOWN_EXIT'],
      ['the TDP MMU', new TdpMmuError('E_MMU_STATE', 'a root is freed while in use'), 'TdpMmuError E_MMU_STATE'],
    ])('%s: exit 1 with the layer, the code and the message, no stack trace', async (_layer, error, prefix) => {
      thrown.error = error;
      expect(await main(RUN)).toBe(1);
      expect(err.join('')).toBe(`vmexit: the run stopped: ${prefix}: ${error.message}\n`);
    });

    it('any other error is not the run outcome: it reaches the caller (bin/vmexit.ts prints it as an internal error, exit 70)', async () => {
      thrown.error = new RangeError('a bug');
      await expect(main(RUN)).rejects.toThrow(RangeError);
    });
  });
});
