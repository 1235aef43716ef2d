// A daemon-like process: a journal file, the real drivers and the pipeline, nothing else.
// Tests start it with node (test/helpers/entry.ts: from the run's compiled tree, or under the
// TypeScript loader), send it commands as JSON lines on stdin, read its journal from outside,
// and kill it with SIGKILL mid-command.
//
//   argv[2]: JSON { journal, pkiDir, inventory, timing? }  (timing: laid over every profile's)
//   stdin:   {"submit": {"key": "...", "body": {...}}}   one per line
//   stdout:  {"ready": n} once recovery has queued n open commands; {"claimed": key, "kind": ...}
import { createInterface } from 'node:readline';
import { parseCommandRequest } from '../../src/core/command.js';
import { systemClock } from '../../src/core/clock.js';
import { pino } from 'pino';
import { silentLogger, type Logger } from '../../src/core/logger.js';
import { CommandPipeline } from '../../src/core/pipeline.js';
import type { ProfileTiming } from '../../src/core/profile.js';
import { buildDrivers, inventorySchema } from '../../src/drivers/inventory.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { PROFILES } from './fixtures.js';

interface Args {
  journal: string;
  pkiDir: string;
  inventory: unknown;
  /** Timings laid over every shipped profile's (a shorter guard, say); absent: theirs. */
  timing?: Partial<ProfileTiming>;
}

const logger: Logger =
  process.env.SLUICE_TEST_DEBUG === '1'
    ? pino({ level: 'debug' }, pino.destination(2))
    : silentLogger;
const args = JSON.parse(process.argv[2] ?? '{}') as Args;
const journal = SqliteJournal.open({ path: args.journal });
const { timing } = args;
const profiles =
  timing === undefined
    ? PROFILES
    : new Map(
        [...PROFILES].map(([name, profile]) => [
          name,
          { ...profile, timing: { ...profile.timing, ...timing } },
        ]),
      );
const drivers = await buildDrivers({
  inventory: inventorySchema.parse(args.inventory),
  profiles,
  pkiDir: args.pkiDir,
  acceptUnknownCertificates: true,
  clock: systemClock,
  logger,
});
drivers.start();
const pipeline = new CommandPipeline({
  journal,
  devices: drivers.bindings,
  clock: systemClock,
  logger,
  freshness: { maxIssuerSkewMs: 2000 },
});
const open = pipeline.recover();
process.stdout.write(`${JSON.stringify({ ready: open })}\n`);

for await (const line of createInterface({ input: process.stdin })) {
  const message = JSON.parse(line) as { submit?: { key: string; body: unknown } };
  if (message.submit !== undefined) {
    const out = pipeline.submit({
      key: message.submit.key,
      identity: { scope: 'plant', devices: 'all' },
      intake: 'test',
      request: parseCommandRequest(message.submit.body),
    });
    process.stdout.write(`${JSON.stringify({ claimed: message.submit.key, kind: out.kind })}\n`);
  }
}
await pipeline.stop(5000);
await drivers.close();
journal.close();
