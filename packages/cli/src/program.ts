import { Command, CommanderError } from 'commander';
import { commands } from './commands/index.js';
import { InputError, RunFailure } from './errors.js';

/** The `vmexit` command (commander) with every subcommand; `main` parses argv with it. */
export function buildProgram(): Command {
  const program = new Command('vmexit')
    .description('Compose hypervisor variants, run guest workloads on them, and count every vmexit.')
    .showHelpAfterError()
    .exitOverride();
  for (const register of commands) register(program);
  // Every subcommand reports usage errors the same way: exit 2 with the usage.
  for (const sub of program.commands) sub.showHelpAfterError().exitOverride();
  return program;
}

/**
 * Runs the CLI with `argv` (without node and the script) and returns the exit code: 0 ok, 1 a run that
 * found a failure, 2 bad usage or input. Nothing is thrown to the caller.
 */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  if (argv.length === 0) {
    // `vmexit` alone: a usage error (exit 2), with the help on stderr.
    process.stderr.write(`vmexit: no command given\n${program.helpInformation()}`);
    return 2;
  }
  try {
    await program.parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      // help and version are not errors; everything else commander reports is usage (exit 2)
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return 0;
      return 2;
    }
    if (e instanceof InputError || e instanceof RunFailure) {
      process.stderr.write(`vmexit: ${e.message}\n`);
      return e.exitCode;
    }
    const stopped = runStopped(e);
    if (stopped !== null) {
      process.stderr.write(`vmexit: the run stopped: ${stopped}\n`);
      return 1;
    }
    throw e;
  }
}

/**
 * The errors with which a layer stops a run that it cannot go on with, each with a stable `code`: the machine
 * (`MachineError`: a triple fault, a fault loop, an emulation failure, KVM's KVM_EXIT_INTERNAL_ERROR), the exit
 * pipeline (`ExitError`: an unresolved exit, a policy that threw), the MMUs (`ShadowMmuError`, `TdpMmuError`:
 * out of pages, an inconsistent state), the backends (`BackendError`: an exit reason without a name, a call the
 * VMCS or VMCB state does not allow) and the guest kernel (`KernelPanic`). They are the run's outcome, not a bug
 * of the CLI: exit 1 with the layer, the code and the message, and no stack trace. Anything else is an
 * internal error (bin/vmexit.ts, exit 70).
 */
const RUN_STOPPING = new Set(['MachineError', 'ExitError', 'ShadowMmuError', 'TdpMmuError', 'BackendError', 'KernelPanic']);

function runStopped(e: unknown): string | null {
  if (!(e instanceof Error) || !RUN_STOPPING.has(e.name)) return null;
  const code = (e as { code?: unknown }).code;
  const cause = e.cause instanceof Error ? ` (${e.cause.name}: ${e.cause.message})` : '';
  return `${e.name}${typeof code === 'string' ? ` ${code}` : ''}: ${e.message}${cause}`;
}
