/** What to scaffold: the package's name, and whether it is private (the monorepo's example is). */
export interface ScaffoldOptions {
  readonly name: string;
  readonly private?: boolean;
}

/** The files of a new policy package, by path relative to its directory (with `/` separators). */
export function renderPolicyPackage(options: ScaffoldOptions): Map<string, string>;

/** The range of `@vmexit/*` that a scaffolded package depends on: `^` this initializer's version (released in lockstep with them). */
export function vmexitRange(): string;

/** Why npm would refuse `name` for a new package (validate-npm-package-name's validForNewPackages), or null when it would not. */
export function invalidPackageName(name: string): string | null;

/** Writes `renderPolicyPackage(options)` into `dir`, which must not exist or be an empty directory; returns the paths written. */
export function scaffold(dir: string, options: ScaffoldOptions): string[];
