import type { Journal, NewCommand } from '../../src/core/journal.js';

/**
 * A command as an HTTPS intake would claim it for `inlet-valve` (scope `plant`, stamped by the
 * gateway at `now`, 30 s to live): for the helper processes and workers that claim through the
 * journal on their own connections.
 */
export function newCommand(key: string, fingerprint: string, now = Date.now()): NewCommand {
  return {
    scope: 'plant',
    key,
    fingerprint,
    device: 'inlet-valve',
    action: 'open',
    position: null,
    issuedAt: now,
    issuedAtSource: 'gateway',
    ttlMs: 30_000,
    deadline: now + 30_000,
    intake: 'https',
    acceptedAt: now,
  };
}

/**
 * A command an issuer stamped at `acceptedAt` for `device` (scope `plant`, HTTPS, 30 s to live),
 * as the journal tests claim them directly.
 */
export function issuerCommand(key: string, device: string, acceptedAt: number): NewCommand {
  return {
    scope: 'plant',
    key,
    fingerprint: `f-${key}`,
    device,
    action: 'open',
    position: null,
    issuedAt: acceptedAt,
    issuedAtSource: 'issuer',
    ttlMs: 30_000,
    deadline: acceptedAt + 30_000,
    intake: 'https',
    acceptedAt,
  };
}

/** The stop `stop` claimed, and ended a no-op at CLOSED (confirmed, nothing written). */
export function stopEnded(journal: Pick<Journal, 'claim' | 'settle'>, stop: NewCommand): void {
  const s = journal.claim(stop).record;
  journal.settle(s, 'accepted', {
    to: 'confirmed',
    code: 'OK',
    faultCode: null,
    observed: {
      state: 'CLOSED',
      position: 0,
      seq: null,
      faultCode: null,
      sourceTime: null,
      readAt: new Date(s.acceptedAt).toISOString(),
    },
    detail: 'a no-op: the valve is CLOSED',
    at: s.acceptedAt + 5,
    intake: 'pipeline',
  });
}
