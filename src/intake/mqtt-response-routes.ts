import { claimId, type ClaimRef } from '../core/journal.js';

/** Where an MQTT 5 requester asked for its answer: Response Topic and Correlation Data. */
export interface ResponseRoute {
  readonly topic: string;
  readonly correlationData: Buffer | undefined;
}

/**
 * The Response Topics of commands still in flight, by command, until their outcome is
 * published. Held in memory only: after a gateway restart the outcome goes to the result
 * topic alone (docs/mqtt-api.md). Bounded, so that commands that never settle (stuck, left
 * for an operator) cannot grow it without limit: the oldest routes are dropped first. By
 * claim (ClaimRef), not by key: a message whose claim was lost with its batch (its COMMIT
 * failed) leaves its route here, and the key may be claimed again since for another command,
 * whose outcome went to that route too, a result the requester never asked for. A retry with
 * the same payload is the same claim: its requester gets the outcome.
 */
export class ResponseRoutes {
  private readonly routes = new Map<string, ResponseRoute[]>();

  constructor(
    private readonly maxCommands = 10_000,
    private readonly maxRoutesPerCommand = 8,
  ) {}

  add(ref: ClaimRef, route: ResponseRoute): void {
    const id = claimId(ref);
    const list = this.routes.get(id) ?? [];
    if (!list.some((r) => sameRoute(r, route))) {
      list.push(route);
      if (list.length > this.maxRoutesPerCommand) list.shift();
    }
    // Re-inserted, so that the map's order is by last use and the oldest is evicted first.
    this.routes.delete(id);
    this.routes.set(id, list);
    while (this.routes.size > this.maxCommands) {
      const oldest = this.routes.keys().next();
      if (oldest.done === true) break;
      this.routes.delete(oldest.value);
    }
  }

  /** The command's routes, forgotten once taken: an outcome is published once per route. */
  take(ref: ClaimRef): ResponseRoute[] {
    const id = claimId(ref);
    const list = this.routes.get(id) ?? [];
    this.routes.delete(id);
    return list;
  }

  /**
   * Forgets one requester's route of a claim lost with its batch (its COMMIT failed): that
   * requester's message is done with (answered JOURNAL_UNAVAILABLE at QoS 0; at QoS 1, not
   * acknowledged, and its redelivery claims the key again with its route). Kept, the route was
   * sent the outcome of the next command claimed under the key with the same payload, another
   * requester's perhaps, and held a place in the map until evicted.
   */
  drop(ref: ClaimRef, route: ResponseRoute): void {
    const id = claimId(ref);
    const list = this.routes.get(id);
    if (list === undefined) return;
    const kept = list.filter((r) => !sameRoute(r, route));
    if (kept.length === 0) this.routes.delete(id);
    else this.routes.set(id, kept);
  }

  get size(): number {
    return this.routes.size;
  }
}

/** The same Response Topic and Correlation Data. */
function sameRoute(a: ResponseRoute, b: ResponseRoute): boolean {
  return (
    a.topic === b.topic &&
    (a.correlationData === undefined
      ? b.correlationData === undefined
      : b.correlationData !== undefined && a.correlationData.equals(b.correlationData))
  );
}
