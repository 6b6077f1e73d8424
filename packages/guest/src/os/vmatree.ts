/**
 * The areas of an address space as a balanced search tree keyed by start, each node holding the gap below its
 * area (from the end of the area before it) and the largest such gap in its subtree: Linux keeps the areas in
 * a maple tree (lib/maple_tree.c) that tracks the gaps, so that `vm_unmapped_area` (mm/mmap.c
 * `unmapped_area`, `mas_empty_area`) finds a free range by descending only into subtrees with a gap large
 * enough. This one is an AVL tree (Adelson-Velsky and Landis: heights of sibling subtrees differ by at most
 * one, so the depth is under 1.45 log2(n + 2)): insert, remove, find and the gap search are O(log n).
 *
 * The areas do not overlap and none is empty (VmaList refuses an empty one), so the order by start is the order
 * by end too.
 */

/** What the tree needs of an area: its range. */
export interface Span {
  readonly start: number;
  readonly end: number;
}

/** A node: an area, its links, its subtree's height and the gaps. */
export class VmaNode<T extends Span = Span> {
  left: VmaNode<T> | null = null;
  right: VmaNode<T> | null = null;
  parent: VmaNode<T> | null = null;
  height = 1;
  /** The area's start minus the end of the area before it in the tree; -Infinity for the first area. */
  gap = -Infinity;
  /** The largest `gap` in the subtree. */
  maxGap = -Infinity;

  constructor(readonly vma: T) {}
}

const height = (n: VmaNode | null): number => (n === null ? 0 : n.height);
const maxGap = (n: VmaNode | null): number => (n === null ? -Infinity : n.maxGap);

/** The leftmost node of the subtree at `n`. */
function leftmost<T extends Span>(n: VmaNode<T>): VmaNode<T> {
  while (n.left !== null) n = n.left;
  return n;
}

/** Recomputes `n`'s height and largest gap from its children. */
function pull(n: VmaNode): void {
  n.height = Math.max(height(n.left), height(n.right)) + 1;
  n.maxGap = Math.max(n.gap, maxGap(n.left), maxGap(n.right));
}

export class VmaTree<T extends Span> {
  root: VmaNode<T> | null = null;
  size = 0;
  /** Nodes looked at by the searches (a cost counter for tests). */
  steps = 0;

  first(): VmaNode<T> | null {
    return this.root === null ? null : leftmost(this.root);
  }

  last(): VmaNode<T> | null {
    let n = this.root;
    if (n === null) return null;
    while (n.right !== null) n = n.right;
    return n;
  }

  /** The node after `n` in address order. */
  next(n: VmaNode<T>): VmaNode<T> | null {
    if (n.right !== null) return leftmost(n.right);
    let c = n;
    let p = n.parent;
    while (p !== null && p.right === c) {
      c = p;
      p = p.parent;
    }
    return p;
  }

  /** The node before `n` in address order. */
  prev(n: VmaNode<T>): VmaNode<T> | null {
    if (n.left !== null) {
      let m = n.left;
      while (m.right !== null) m = m.right;
      return m;
    }
    let c = n;
    let p = n.parent;
    while (p !== null && p.left === c) {
      c = p;
      p = p.parent;
    }
    return p;
  }

  /** The last node whose area starts below `va` (`orEqual`: at or below), or null. */
  lastStartBelow(va: number, orEqual = false): VmaNode<T> | null {
    let n = this.root;
    let best: VmaNode<T> | null = null;
    while (n !== null) {
      this.steps++;
      const s = n.vma.start;
      if (s < va || (orEqual && s === va)) {
        best = n;
        n = n.right;
      } else n = n.left;
    }
    return best;
  }

  /** The first node whose area ends above `va`: the last one starting below it if it reaches past `va`, else the one after. */
  firstEndingAbove(va: number): VmaNode<T> | null {
    const p = this.lastStartBelow(va);
    if (p === null) return this.first();
    return p.vma.end > va ? p : this.next(p);
  }

  /**
   * The first node after `n` in address order whose gap is at least `length` (the areas between are packed
   * closer): subtrees whose largest gap is smaller are not entered.
   */
  firstGapAfter(n: VmaNode<T>, length: number): VmaNode<T> | null {
    if (maxGap(n.right) >= length) return this.firstGapIn(n.right!, length);
    let c = n;
    let p = n.parent;
    while (p !== null) {
      this.steps++;
      if (p.left === c) {
        if (p.gap >= length) return p;
        if (maxGap(p.right) >= length) return this.firstGapIn(p.right!, length);
      }
      c = p;
      p = p.parent;
    }
    return null;
  }

  /**
   * The last node at or before `n` in address order whose gap is at least `length` (the top-down mirror of
   * `firstGapAfter`, as mm/mmap.c `unmapped_area_topdown` walks with `mas_empty_area_rev`): `n`, then its left
   * subtree, then up; subtrees whose largest gap is smaller are not entered.
   */
  lastGapAtOrBefore(n: VmaNode<T>, length: number): VmaNode<T> | null {
    this.steps++;
    if (n.gap >= length) return n;
    if (maxGap(n.left) >= length) return this.lastGapIn(n.left!, length);
    let c = n;
    let p = n.parent;
    while (p !== null) {
      this.steps++;
      if (p.right === c) {
        if (p.gap >= length) return p;
        if (maxGap(p.left) >= length) return this.lastGapIn(p.left!, length);
      }
      c = p;
      p = p.parent;
    }
    return null;
  }

  /** The rightmost node of the subtree at `n`, whose largest gap is at least `length`, with a gap that large. */
  private lastGapIn(n: VmaNode<T>, length: number): VmaNode<T> {
    for (;;) {
      this.steps++;
      if (maxGap(n.right) >= length) n = n.right!;
      else if (n.gap >= length) return n;
      else n = n.left!;
    }
  }

  /** The leftmost node of the subtree at `n`, whose largest gap is at least `length`, with a gap that large. */
  private firstGapIn(n: VmaNode<T>, length: number): VmaNode<T> {
    for (;;) {
      this.steps++;
      if (maxGap(n.left) >= length) n = n.left!;
      else if (n.gap >= length) return n;
      else n = n.right!;
    }
  }

  /** Inserts `node` after the areas that start below its area (before one that starts at the same address). */
  insert(node: VmaNode<T>): void {
    const s = node.vma.start;
    let p: VmaNode<T> | null = null;
    let n = this.root;
    let left = false;
    while (n !== null) {
      this.steps++;
      p = n;
      left = s <= n.vma.start;
      n = left ? n.left : n.right;
    }
    node.parent = p;
    if (p === null) this.root = node;
    else if (left) p.left = node;
    else p.right = node;
    this.size++;
    this.rebalanceFrom(p);
    this.updateGap(node);
    const after = this.next(node);
    if (after !== null) this.updateGap(after);
  }

  /** Removes `node`; the gap of the node after it now runs from the end of the one before. */
  remove(node: VmaNode<T>): void {
    const after = this.next(node);
    let from: VmaNode<T> | null;
    if (node.left !== null && node.right !== null) {
      // Replace the node by its successor (`after`, the leftmost of its right subtree), moving nodes, not areas.
      const s = after!;
      from = s.parent === node ? s : s.parent;
      if (s.parent !== node) {
        this.replace(s, s.right);
        s.right = node.right;
        s.right.parent = s;
      }
      this.replace(node, s);
      s.left = node.left;
      s.left.parent = s;
    } else {
      from = node.parent;
      this.replace(node, node.left ?? node.right);
    }
    node.left = node.right = node.parent = null;
    node.height = 1;
    this.size--;
    this.rebalanceFrom(from);
    if (after !== null) this.updateGap(after);
  }

  /** Recomputes the gap below `node`'s area and the largest gaps of its ancestors. */
  updateGap(node: VmaNode<T>): void {
    const before = this.prev(node);
    node.gap = before === null ? -Infinity : node.vma.start - before.vma.end;
    for (let n: VmaNode<T> | null = node; n !== null; n = n.parent) pull(n);
  }

  /** Puts `by` where `n` is in `n`'s parent. */
  private replace(n: VmaNode<T>, by: VmaNode<T> | null): void {
    const p = n.parent;
    if (p === null) this.root = by;
    else if (p.left === n) p.left = by;
    else p.right = by;
    if (by !== null) by.parent = p;
  }

  /** Restores heights, largest gaps and balance from `n` up to the root. */
  private rebalanceFrom(n: VmaNode<T> | null): void {
    while (n !== null) {
      pull(n);
      const b = height(n.left) - height(n.right);
      if (b > 1) {
        if (height(n.left!.left) < height(n.left!.right)) this.rotateLeft(n.left!);
        n = this.rotateRight(n);
      } else if (b < -1) {
        if (height(n.right!.right) < height(n.right!.left)) this.rotateRight(n.right!);
        n = this.rotateLeft(n);
      }
      n = n.parent;
    }
  }

  /** Rotates `n`'s right child up; returns it. */
  private rotateLeft(n: VmaNode<T>): VmaNode<T> {
    const r = n.right!;
    this.replace(n, r);
    n.right = r.left;
    if (r.left !== null) r.left.parent = n;
    r.left = n;
    n.parent = r;
    pull(n);
    pull(r);
    return r;
  }

  /** Rotates `n`'s left child up; returns it. */
  private rotateRight(n: VmaNode<T>): VmaNode<T> {
    const l = n.left!;
    this.replace(n, l);
    n.left = l.right;
    if (l.right !== null) l.right.parent = n;
    l.right = n;
    n.parent = l;
    pull(n);
    pull(l);
    return l;
  }

  /** The areas in address order. */
  toArray(): T[] {
    const out: T[] = [];
    const stack: VmaNode<T>[] = [];
    let n = this.root;
    while (n !== null || stack.length > 0) {
      while (n !== null) {
        stack.push(n);
        n = n.left;
      }
      const m = stack.pop()!;
      out.push(m.vma);
      n = m.right;
    }
    return out;
  }
}
