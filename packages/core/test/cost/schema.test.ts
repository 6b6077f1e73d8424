import { describe, expect, it } from 'vitest';
import { PROFILE_SERVER } from '../../src/cost/profiles.js';
import { MAX_FIGURE_CYCLES, parseCostProfile, resolveCostProfile } from '../../src/cost/schema.js';

/** PROFILE_SERVER as a JSON file would give it, with `edit` applied. */
function model(edit: (p: Record<string, Record<string, unknown>>) => void): unknown {
  const p = JSON.parse(JSON.stringify(PROFILE_SERVER)) as Record<string, Record<string, unknown>>;
  edit(p);
  return p;
}

describe('parseCostProfile', () => {
  it('takes a built-in profile as JSON', () => {
    expect(parseCostProfile(model(() => {})).profile).toEqual(PROFILE_SERVER);
  });

  it('refuses an unknown key, under handler too, naming its path', () => {
    const r = parseCostProfile(
      model((p) => {
        p['handler']!['bogus'] = p['handler']!['pf_fixed'];
        p['extra'] = {};
      }),
    );
    expect(r.problems).toEqual([
      { path: 'handler.bogus', message: 'unknown key (expected pf_fixed, pf_guest, insn_emulation)' },
      { path: 'extra', message: 'unknown key' },
    ]);
  });

  it('refuses a figure over 1e9 cycles per event, or not finite, naming the key and the value', () => {
    expect(MAX_FIGURE_CYCLES).toBe(1e9);
    const big = parseCostProfile(
      model((p) => ((p['guestFault']!['cycles'] = 1e308), ((p['handler']!['pf_fixed'] as Record<string, unknown>)['cycles'] = 1e9 + 1))),
    );
    expect(big.problems).toEqual([
      { path: 'handler.pf_fixed.cycles', message: '1000000001 cycles is over the limit of 1e9 cycles per event' },
      { path: 'guestFault.cycles', message: '1e+308 cycles is over the limit of 1e9 cycles per event' },
    ]);
    // JSON.parse gives Infinity for 1e999
    expect(parseCostProfile(model((p) => (p['walkReference']!['cycles'] = Infinity))).problems).toEqual([
      { path: 'walkReference.cycles', message: 'Invalid input: expected number, received Infinity' },
    ]);
    expect(parseCostProfile(model((p) => (p['walkReference']!['cycles'] = 1e9))).problems).toEqual([]);
  });
});

describe('resolveCostProfile', () => {
  it('names an unknown model, own keys only', () => {
    expect(resolveCostProfile('server-2020s')).toBe(PROFILE_SERVER);
    for (const name of ['bogus', 'toString']) {
      expect(() => resolveCostProfile(name)).toThrow(
        `unknown cost model '${name}' (expected one of core2-2007, server-2020s, cloud-vm-measured, or a profile)`,
      );
    }
  });
});
