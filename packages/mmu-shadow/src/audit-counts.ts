import type { ShadowPage } from './page.js';

/**
 * The auditor's check of a count that the MMU keeps per gfn (`kept`, named `name`) against the pages in use that
 * `counts` selects (named `what`): the first disagreement, or null when they agree.
 */
export function gfnCountMismatch(
  kept: ReadonlyMap<number, number>,
  pages: readonly ShadowPage[],
  counts: (sp: ShadowPage) => boolean,
  name: string,
  what: string,
): string | null {
  const counted = new Map<number, number>();
  for (const sp of pages) if (counts(sp)) counted.set(sp.gfn, (counted.get(sp.gfn) ?? 0) + 1);
  for (const [gfn, n] of counted) if (kept.get(gfn) !== n) return `${name} ${kept.get(gfn) ?? 0} for gfn 0x${gfn.toString(16)} but ${n} ${what}`;
  return kept.size === counted.size ? null : `${name}s for ${kept.size} gfns but ${what} for ${counted.size}`;
}
