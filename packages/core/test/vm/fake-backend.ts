import { GP_VECTOR, MSR_EFER, PF_VECTOR, type Backend, type HardwareExit, type SecondStage } from '../../src/index.js';

/**
 * A backend with switchable intercepts (#PF, #GP, and the control-register writes in `intercepted`: 0, 3, 4,
 * MSR_EFER), describing every exit by a made-up reason name (what the tests count), with a one-slot injection
 * queue as VMX and SVM have.
 */
export class FakeBackend implements Backend<{ pending: [number, number] | null }> {
  readonly name = 'vmx' as const;
  interceptPf = false;
  interceptGp = false;
  readonly intercepted = new Set<number>();
  createState() {
    return { pending: null };
  }
  exceptionExits(_s: unknown, vector: number): boolean {
    return (vector === PF_VECTOR && this.interceptPf) || (vector === GP_VECTOR && this.interceptGp);
  }
  crWriteExits(_s: unknown, cr: number): boolean {
    return this.intercepted.has(cr);
  }
  invlpgExits(): boolean {
    return false;
  }
  private hw(name: string): HardwareExit {
    return { backend: 'vmx', code: 0, name, fields: {} };
  }
  exceptionExit(_s: unknown, vector: number): HardwareExit {
    return this.hw(`EXCEPTION_${vector}`);
  }
  crWriteExit(_s: unknown, cr: number): HardwareExit {
    return this.hw(cr === MSR_EFER ? 'MSR_WRITE' : `CR${cr}_WRITE`);
  }
  invlpgExit(): HardwareExit {
    return this.hw('INVLPG');
  }
  nestedFaultExit(): HardwareExit {
    return this.hw('NESTED');
  }
  nestedFaultErrorCode(): number {
    return 0;
  }
  createSecondStage(): SecondStage {
    throw new RangeError('no second stage');
  }
  mmioExit(): HardwareExit {
    return this.hw('MMIO');
  }
  crWriteHandled(): void {}
  injectException(s: { pending: [number, number] | null }, vector: number, errorCode: number): void {
    s.pending = [vector, errorCode];
  }
  vmEntry(s: { pending: [number, number] | null }, out: { errorCode: number }): number {
    if (s.pending === null) return -1;
    const [vector, errorCode] = s.pending;
    s.pending = null;
    out.errorCode = errorCode;
    return vector;
  }
  setNestedRoot(): void {}
}
