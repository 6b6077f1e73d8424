import { TYPES, WalkResult, walk, type Mmu, type MmuHost, type ExitResolution, type Vcpu } from '@vmexit/core';
import { ContainerModule } from 'inversify';

/**
 * A test double for an MMU (the shadow MMU is another package): the hardware walks the guest's own tables
 * (as under TDP with an identity second stage), so a #PF the hardware raises is the guest's own fault, which
 * the handler reflects with the guest walker's error code, exactly as a shadow MMU does for a fault that is
 * not its own. It records every call so tests can check the VM's side of the contract.
 */
export class FakeMmu implements Mmu {
  readonly name = 'shadow' as const;
  host: MmuHost | null = null;
  readonly calls: string[] = [];
  private readonly r = new WalkResult();

  init(host: MmuHost): void {
    this.host = host;
  }
  attachVcpu(vcpu: Vcpu): void {
    vcpu.activeCtx = vcpu.ctx;
    vcpu.activeMem = vcpu.memory;
  }
  handlePageFault(vcpu: Vcpu, address: number, errorCode: number): ExitResolution {
    this.calls.push(`pf ${address.toString(16)} ${errorCode}`);
    const st = walk(vcpu.ctx, vcpu.memory, address, vcpu.pendingAccess, 0, this.r);
    if (st !== 0) return { kind: 'inject', vector: 14, errorCode: this.r.errorCode };
    this.host!.count(vcpu.id, 'pf_fixed');
    return { kind: 'resume' };
  }
  trackWrite(): void {}
  crWritten(_vcpu: Vcpu, cr: number, _old: number, exited: boolean): void {
    this.calls.push(`cr${cr === 0xc0000080 ? 'EFER' : cr} ${exited ? 'exited' : 'direct'}`);
  }
  invlpg(_vcpu: Vcpu, va: number, exited: boolean): void {
    this.calls.push(`invlpg ${va.toString(16)} ${exited ? 'exited' : 'direct'}`);
  }
  emulationFailed(): boolean {
    return false;
  }
}

/** A ContainerModule binding a fresh FakeMmu; `last` is the instance the latest VM got. */
export function fakeMmuModule(): { module: ContainerModule; mmu: () => FakeMmu } {
  let last: FakeMmu | null = null;
  const module = new ContainerModule(({ bind }) => {
    last = new FakeMmu();
    bind<Mmu>(TYPES.Mmu).toConstantValue(last);
  });
  return { module, mmu: () => last! };
}
