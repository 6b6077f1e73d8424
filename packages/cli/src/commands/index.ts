import type { Command } from 'commander';

/** A subcommand: adds itself to the program. Each lives in its own file under commands/. */
export type CommandRegistration = (program: Command) => void;

/** The subcommands, in the order `vmexit --help` lists them. */
export const commands: CommandRegistration[] = [];
