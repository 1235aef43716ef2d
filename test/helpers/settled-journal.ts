import { replicate, templates } from '../../bench/journal-fill.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';

/**
 * A journal retaining `commands` settled commands, as a gateway's holds them: 200 opens on
 * `device` of the identity `scada`, each a no-op confirmed without a write, written an hour ago by
 * the journal's own code, then copied by SQLite under new keys to the count
 * (bench/journal-fill.ts): what a large journal's start (its check, its upgrade, its recovery)
 * reads, made in seconds.
 */
export function writeSettledJournal(path: string, commands: number, device = 'inlet-valve'): void {
  const seed = SqliteJournal.open({ path });
  const at = Date.now() - 3_600_000;
  try {
    for (let i = 0; i < 200; i++) {
      const ref = { scope: 'scada', key: `settled-${String(i).padStart(3, '0')}` };
      seed.claim({
        ...ref,
        fingerprint: ref.key,
        device,
        action: 'open',
        position: null,
        issuedAt: at,
        issuedAtSource: 'issuer',
        ttlMs: 120_000,
        deadline: at + 120_000,
        intake: 'https',
        acceptedAt: at,
      });
      seed.settle(ref, 'accepted', {
        to: 'confirmed',
        code: 'OK',
        faultCode: null,
        observed: {
          state: 'OPEN',
          position: 100,
          seq: 7,
          faultCode: null,
          sourceTime: new Date(at).toISOString(),
          readAt: new Date(at).toISOString(),
        },
        detail:
          'no-op: the valve was OPEN already, as a readback taken now shows; nothing was written',
        at,
        intake: 'https',
      });
    }
  } finally {
    seed.close();
  }
  replicate(path, templates(path), commands);
}
