import type { FloodEvent, PrefetchEvent, PteWriteEvent, TrackedWriteEvent, UnsyncEvent } from '@vmexit/core';

// One vCPU's refillable MMU events (decisions.ts refills them while MmuHost.reusesEvents says nothing outside the
// pipeline can keep one). Apart from decisions.ts so that state.ts, which holds them, needs no import of it.

export type Refillable<E> = { -readonly [K in keyof E]: E[K] };

/** The refillable event objects of one vCPU, one per kind, each made at its kind's first reusable decision. */
export class ScratchEvents {
  flood: Refillable<FloodEvent> | null = null;
  pteWrite: Refillable<PteWriteEvent> | null = null;
  prefetch: Refillable<PrefetchEvent> | null = null;
  unsync: Refillable<UnsyncEvent> | null = null;
  trackedWrite: Refillable<TrackedWriteEvent> | null = null;
  /** A scratch event is in the pipeline now. */
  inFlight = false;
}
