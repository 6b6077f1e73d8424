import { Command, CommanderError } from 'commander';
import { commands } from './commands/index.js';
import { InputError, RunFailure } from './errors.js';

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
    throw e;
  }
}
