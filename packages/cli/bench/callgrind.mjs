/**
 * Reading what `bench/instructions.mjs` measures: valgrind's callgrind output (`--dump-instr=yes`: a cost line per
 * executed instruction address) and the code map V8 writes with `--perf-basic-prof` (`/tmp/perf-PID.map`: one line
 * per compiled function, `START SIZE NAME`, hex), so that the instructions a run executed can be counted by the
 * JavaScript function whose compiled code executed them. Callgrind alone cannot: V8's code has no symbols.
 *
 * The callgrind format (valgrind's docs, "Callgrind Format Specification"): with `positions: instr line`, each cost
 * line is `ADDRESS LINE COST...`, where an address or line may be absolute (`0x...` or decimal), relative to the one
 * before (`+N`, `-N`) or the same (`*`). A `calls=COUNT TARGET` line is followed by one cost line that is the call's
 * inclusive cost, which is not the caller's own: it is skipped here (each instruction's own cost is on its own line).
 */

/** A position token of a cost line: absolute, relative (`+N` / `-N`) or the same as before (`*`). */
function position(token, previous) {
  if (token === '*') return previous;
  if (token[0] === '+') return previous + Number(token.slice(1));
  if (token[0] === '-') return previous - Number(token.slice(1));
  return Number(token);
}

/**
 * The self cost (the first event, Ir) of every instruction address in callgrind output `text` (`--dump-instr=yes`,
 * `positions: instr line`), as a Map from address to count.
 */
export function instructionCosts(text) {
  const cost = new Map();
  let addr = 0;
  let skipNext = false;
  let start = 0;
  while (start < text.length) {
    let end = text.indexOf('\n', start);
    if (end < 0) end = text.length;
    const line = text.slice(start, end);
    start = end + 1;
    const c = line.charCodeAt(0);
    if (line.startsWith('positions:')) {
      // This reader takes a cost line's first field as the address and its third as the cost.
      if (line.trim() !== 'positions: instr line')
        throw new Error(`callgrind output with '${line.trim()}': expected 'positions: instr line' (--dump-instr=yes --dump-line=yes)`);
      continue;
    }
    // Cost lines start with a digit, '+', '-' or '*'; `calls=` marks the next cost line as a call's inclusive cost.
    if (line.startsWith('calls=')) {
      skipNext = true;
      continue;
    }
    if (!((c >= 48 && c <= 57) || c === 43 || c === 45 || c === 42)) continue;
    const parts = line.split(' ');
    addr = position(parts[0], addr);
    if (skipNext) {
      skipNext = false;
      continue;
    }
    if (parts.length < 3) continue; // a position without a cost
    const n = Number(parts[2]);
    cost.set(addr, (cost.get(addr) ?? 0) + n);
  }
  return cost;
}

/** The entries of a `--perf-basic-prof` map (`START SIZE NAME`, hex), sorted by start address. */
export function perfMap(text) {
  const entries = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const a = line.indexOf(' ');
    const b = line.indexOf(' ', a + 1);
    if (a < 0 || b < 0) continue;
    entries.push({ start: parseInt(line.slice(0, a), 16), size: parseInt(line.slice(a + 1, b), 16), name: line.slice(b + 1) });
  }
  entries.sort((x, y) => x.start - y.start);
  return entries;
}

/**
 * The instruction counts of `cost` (instructionCosts) by the function of `entries` (perfMap) whose code holds each
 * address, its V8 tier marks (`*` optimized, `^` baseline, `~` interpreted) taken off the name so that one function's
 * versions add up. Returns `{ byFunction: Map<name, count>, mapped, unmapped }`: `unmapped` is what ran outside the
 * map (node's and V8's own C++: the compilers, the garbage collector, start-up). V8 may put new code where freed code
 * was; the map then has two entries for one address, and its instructions go to the later one (the map is written in
 * order of creation): a small error, in the functions of a run's first seconds.
 */
export function countByFunction(cost, entries) {
  const starts = entries.map((e) => e.start);
  const byFunction = new Map();
  let mapped = 0;
  let unmapped = 0;
  for (const [addr, n] of cost) {
    // The last entry that starts at or below addr.
    let lo = 0;
    let hi = starts.length - 1;
    let i = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (starts[mid] <= addr) {
        i = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    const e = i >= 0 && addr < entries[i].start + entries[i].size ? entries[i] : null;
    if (e === null) {
      unmapped += n;
      continue;
    }
    const name = e.name.replace(/^JS:[*^~]/, 'JS:');
    byFunction.set(name, (byFunction.get(name) ?? 0) + n);
    mapped += n;
  }
  return { byFunction, mapped, unmapped };
}
