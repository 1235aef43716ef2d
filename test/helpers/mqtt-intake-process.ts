// A daemon-like process with the MQTT intake: a journal file, the real drivers, the pipeline
// and the intake, nothing else. Tests start it with node (test/helpers/entry.ts), read its pino
// log lines on stdout, and kill it with SIGKILL mid-command.
//
//   argv[2]: JSON { journal, busyTimeoutMs, pkiDir, inventory, url, gatewayId }
//   stdout:  pino JSON lines (debug); {"ready": n} once recovery queued n open commands and
//            the intake was started
//   SIGTERM: graceful stop (intake, pipeline, drivers, journal), exit 0
import { pino } from 'pino';
import { mqttConfigSchema } from '../../src/config/config.js';
import { systemClock } from '../../src/core/clock.js';
import type { Logger } from '../../src/core/logger.js';
import { CommandPipeline } from '../../src/core/pipeline.js';
import { Metrics } from '../../src/daemon/metrics.js';
import { buildDrivers, inventorySchema } from '../../src/drivers/inventory.js';
import { IdentityRegistry } from '../../src/intake/identities.js';
import { MqttIntake } from '../../src/intake/mqtt.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { PROFILES } from './fixtures.js';

interface Args {
  journal: string;
  busyTimeoutMs: number;
  pkiDir: string;
  inventory: unknown;
  url: string;
  gatewayId: string;
}

const args = JSON.parse(process.argv[2] ?? '{}') as Args;
// Synchronous: the line saying a message arrived must be out before the claim blocks.
const logger: Logger = pino({ level: 'debug' }, pino.destination({ dest: 1, sync: true }));
const journal = SqliteJournal.open({ path: args.journal, busyTimeoutMs: args.busyTimeoutMs });
const drivers = await buildDrivers({
  inventory: inventorySchema.parse(args.inventory),
  profiles: PROFILES,
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
const identities = new IdentityRegistry({ plant: { devices: ['*'] } });
const intake = new MqttIntake({
  config: mqttConfigSchema.parse({
    url: args.url,
    protocolVersion: 5,
    identity: 'plant',
    sessionExpiryS: 600,
  }),
  gatewayId: args.gatewayId,
  pipeline,
  identities,
  metrics: new Metrics(pipeline, systemClock),
  logger,
  reconnect: { minMs: 100, maxMs: 500 },
});
const open = pipeline.recover();
intake.start();
process.stdout.write(`${JSON.stringify({ ready: open })}\n`);

process.once('SIGTERM', () => {
  void (async () => {
    intake.stopTakingCommands();
    await pipeline.stop(5000);
    await intake.stop();
    await drivers.close();
    journal.close();
    process.exit(0);
  })();
});
