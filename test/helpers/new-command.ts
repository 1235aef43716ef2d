import type { NewCommand } from '../../src/core/journal.js';

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
