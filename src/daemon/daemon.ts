import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { pino, type Logger as PinoLogger } from 'pino';
import { withoutPassword, type SluiceConfig } from '../config/config.js';
import { preflight } from '../config/preflight.js';
import { systemClock, type Clock } from '../core/clock.js';
import { JournalUnavailableError, StartStoppedError } from '../core/errors.js';
import { refId, type CommandRef } from '../core/journal.js';
import { CommandPipeline } from '../core/pipeline.js';
import { buildDrivers, type Drivers } from '../drivers/inventory.js';
import { HttpsIntake } from '../intake/https.js';
import type { HttpsTimeouts } from '../intake/https-server.js';
import type { StreamPeerBounds } from '../intake/ui-events.js';
import { IdentityRegistry } from '../intake/identities.js';
import { MqttIntake } from '../intake/mqtt.js';
import { SqliteJournal } from '../journal/sqlite-journal.js';
import { checkUpgradeRoom, schemaVersion } from '../journal/connection.js';
import { checkJournal } from '../journal/integrity.js';
import { LATEST_VERSION } from '../journal/migrations.js';
import { countRows } from '../journal/row-counts.js';
import { upgradeJournalInChild } from '../journal/upgrade.js';
import { lockJournal, unwritable } from '../journal/writer-lock.js';
import { AdminEndpoint } from './admin.js';
import { gatewayClocks, type GatewayClocks } from './gateway-clock.js';
import { CountedRetentionSweeper, Metrics } from './metrics.js';
import { registerMqttConnected } from './mqtt-connected-metric.js';
import { checkRenamedDevices } from './renamed-devices.js';
import { findRenamedIdentities, renamedIdentityMessage } from './renamed-identities.js';
import {
  IdentityRenames,
  identityRenamesInForce,
  type IdentityRenameNotice,
} from './identity-renames.js';
import { serviceNotifier, type ServiceNotifier } from './notify.js';
import { ServiceStatus } from './service-status.js';
import {
  boundedStepPhase,
  extendAfterStep,
  extendBeforeHeldStep,
  extendWhile,
  journalCheckPhase,
  journalUpgradePhase,
  OPCUA_LOAD_BOUND_MS,
  startProgressIntervalMs,
  type StartProgressOptions,
} from './start-progress.js';
import { reloadTlsFiles, type TlsReload } from './tls-reload.js';
import {
  journalProblem,
  ProbeCache,
  readiness,
  type Readiness,
  type ReadinessParts,
} from './readiness.js';

export type { Readiness } from './readiness.js';

export interface DaemonOptions {
  readonly logger?: PinoLogger;
  readonly clock?: Clock;
  /** Bound for in-flight commands to settle at shutdown; the rest stay journaled. */
  readonly shutdownBoundMs?: number;
  /** How long a stop lets admin requests in flight finish before cutting them (admin.ts, DRAIN_MS). */
  readonly adminDrainMs?: number;
  /** Period of the idle-device readback that keeps the mirror current. */
  readonly monitorIntervalMs?: number;
  /** Period of the sweep that takes up open commands with no live worker. */
  readonly sweepIntervalMs?: number;
  /**
   * The HTTPS connections' timeouts (https-server.ts HTTPS_TIMEOUTS by default, not a site's
   * setting): the tests of the bounds built on them shorten them, to wait seconds, not minutes.
   */
  readonly httpsTimeouts?: HttpsTimeouts;
  /** How the status page finds a stream whose client vanished (ui-events.ts), shortened likewise. */
  readonly uiStreamPeerBounds?: StreamPeerBounds;
  /**
   * How long a device's reads must keep failing before /readyz counts it unreachable
   * (readiness.ts READS_FAILING_MS by default, not a site's setting), shortened likewise.
   */
  readonly readsFailingMs?: number;
  /**
   * How long the journal's sync may be under way before /readyz counts the journal unavailable
   * (readiness.ts SYNC_STALL_MS by default, not a site's setting), shortened likewise.
   */
  readonly syncStallMs?: number;
  /**
   * The service manager's notifications (READY, WATCHDOG, STOPPING); by default from this
   * process's NOTIFY_SOCKET, silent without it.
   */
  readonly notifier?: ServiceNotifier;
  /**
   * How long READY waits for the commands recovered from the journal to settle; past it READY
   * is sent anyway (the intakes already take commands) and the status line says how many are
   * still open. Below the unit's TimeoutStartSec=.
   */
  readonly readyBoundMs?: number;
  /**
   * How often a long phase of the start (the journal check, the settling READY waits for) is
   * looked at, and the start extended (EXTEND_TIMEOUT_USEC, twice this) when it advanced: by
   * default half WatchdogSec= (WATCHDOG_USEC), else 10 s (start-progress.ts).
   */
  readonly startProgressIntervalMs?: number;
  /**
   * Called once the journal is locked, checked and open, just before the drivers are built
   * (which, with an OPC UA PLC, loads node-opcua: seconds on a small gateway). sluiced loads
   * node-opcua here to route its messages (opcua-messages.ts): a start the journal refuses
   * (read-only, locked, damaged) is refused without loading it first.
   */
  readonly beforeDrivers?: () => Promise<void>;
  /**
   * Aborted when a stop is asked for while the daemon starts (sluiced's SIGTERM, SIGINT): the
   * journal check, which reads the whole file (tens of seconds on a large journal from a cold
   * disk), or an older journal's upgrade, is killed where it is and the start rejects with
   * StartStoppedError, releasing what it had built (SQLite rolls back the migration the upgrade
   * was in). A stop asked for later, while the drivers are built or the gateway clock is first
   * checked, ends the start once they are done, before recovery and the intakes. Past that
   * point, the start runs to its end and the stop follows it.
   */
  readonly stopSignal?: AbortSignal;
}

/**
 * The composition root of `sluiced`: builds config → logger → journal → drivers → pipeline
 * (recovery) → retention → intakes, starts them in that order and stops them in reverse,
 * from a last-in-first-out stack of releasers (a failed start releases what it had built).
 */
export class Daemon {
  readonly config: SluiceConfig;
  readonly logger: PinoLogger;
  readonly pipeline: CommandPipeline;
  readonly metrics: Metrics;
  readonly recovered: number;
  /** Where the HTTPS intake listens, when configured. */
  https: { host: string; port: number } | null = null;
  private readonly releasers: { name: string; release: () => Promise<void> | void }[];
  private readonly httpsIntake: HttpsIntake | null;
  private readonly mqttIntake: MqttIntake | null;
  private readonly journal: SqliteJournal;
  private readonly clocks: GatewayClocks;
  private readonly clock: Clock;
  private readonly notifier: ServiceNotifier;
  private readonly shutdownBoundMs: number;
  private readonly readsFailingMs: number | undefined;
  private readonly identityRenames: IdentityRenames;
  private stopping: Promise<void> | null = null;
  /** What /readyz reuses for a moment: its proof write and its list of open commands. */
  private readonly probes: ProbeCache;
  /** READY=1 and the STATUS= lines after it (service-status.ts). */
  private readonly service: ServiceStatus;

  private constructor(parts: {
    config: SluiceConfig;
    logger: PinoLogger;
    pipeline: CommandPipeline;
    metrics: Metrics;
    recovered: number;
    journal: SqliteJournal;
    clocks: GatewayClocks;
    clock: Clock;
    notifier: ServiceNotifier;
    startProgress: StartProgressOptions;
    shutdownBoundMs: number;
    readsFailingMs: number | undefined;
    syncStallMs: number | undefined;
    identityRenames: IdentityRenames;
    httpsIntake: HttpsIntake | null;
    mqttIntake: MqttIntake | null;
    releasers: { name: string; release: () => Promise<void> | void }[];
  }) {
    this.config = parts.config;
    this.logger = parts.logger;
    this.pipeline = parts.pipeline;
    this.metrics = parts.metrics;
    this.recovered = parts.recovered;
    this.journal = parts.journal;
    this.clocks = parts.clocks;
    this.clock = parts.clock;
    this.probes = new ProbeCache(() => parts.clock.elapsed(), undefined, parts.syncStallMs);
    this.notifier = parts.notifier;
    this.service = new ServiceStatus({
      notifier: parts.notifier,
      logger: parts.logger,
      clock: parts.clock,
      pipeline: parts.pipeline,
      parts: () => this.readinessParts(),
      probes: this.probes,
      startProgress: parts.startProgress,
    });
    this.shutdownBoundMs = parts.shutdownBoundMs;
    this.readsFailingMs = parts.readsFailingMs;
    this.identityRenames = parts.identityRenames;
    this.httpsIntake = parts.httpsIntake;
    this.mqttIntake = parts.mqttIntake;
    this.releasers = parts.releasers;
  }

  static async start(config: SluiceConfig, options: DaemonOptions = {}): Promise<Daemon> {
    const clock = options.clock ?? systemClock;
    const logger = (options.logger ?? pino({ level: config.log.level })).child({
      gateway: config.gatewayId,
    });
    const releasers: { name: string; release: () => Promise<void> | void }[] = [];
    const release = async (): Promise<void> => {
      for (let r = releasers.pop(); r !== undefined; r = releasers.pop()) {
        try {
          await r.release();
        } catch (error) {
          logger.error({ err: error, part: r.name }, 'stopping a part failed');
        }
      }
    };
    // Opened first and closed last: the watchdog pings run through a long start (OPC UA PKI,
    // the journal check, recovery) and through the graceful drain at stop; a long start also
    // tells systemd that it goes on (EXTEND_TIMEOUT_USEC: pings do not move TimeoutStartSec=).
    const notifier = options.notifier ?? serviceNotifier(process.env, logger);
    const startProgress: StartProgressOptions = {
      notifier,
      logger,
      intervalMs: options.startProgressIntervalMs ?? startProgressIntervalMs(process.env),
    };
    releasers.push({
      name: 'service notification',
      release: () => {
        notifier.close();
      },
    });
    try {
      // What `sluiced --check` checks, before anything is created: a configuration error
      // (ConfigError, exit 2) leaves no state folder, journal or PKI behind.
      const { profiles, httpsTls } = preflight(config, 'configuration');
      try {
        mkdirSync(config.stateDir, { recursive: true, mode: 0o700 });
      } catch (error) {
        // Node says ENOENT for a folder it cannot create on a read-only filesystem.
        const why = unwritable(join(config.stateDir, 'journal.db'));
        if (why === null) throw error;
        throw new JournalUnavailableError(
          `stateDir ${config.stateDir} cannot be created: ${why.what}; ${why.todo}`,
          { cause: error },
        );
      }
      const inventory = { plcs: config.plcs, devices: config.devices };

      const journalPath = config.journal.path ?? join(config.stateDir, 'journal.db');
      // One daemon per journal (I1), taken before anything is opened or connected.
      const lock = lockJournal(journalPath);
      // Every earlier life of the daemon on this journal has ended: its writes were sent before
      // now (the take-up of one counts its guard from here at the earliest: Lane).
      const earlierLivesEndedMono = clock.elapsed();
      releasers.push({
        name: 'journal lock',
        release: () => {
          lock.release();
        },
      });
      // An upgrade the filesystem has no room for is refused before the check reads the file.
      checkUpgradeRoom(journalPath, config.journal.busyTimeoutMs);
      // A damaged page is met only when a statement reads it: checked first, so that the
      // daemon does not run on a journal that lost keys or open commands (I1, I5). It reads the
      // whole file: on a large journal, longer than TimeoutStartSec= may allow, so the start is
      // extended while the check reads (start-progress.ts).
      const checking = performance.now();
      const journalBytes = fileBytes(journalPath) + fileBytes(`${journalPath}-wal`);
      logger.info(
        { path: journalPath, journalMb: Math.round(journalBytes / 1_000_000) },
        'checking the journal (SQLite quick_check, every page of it)',
      );
      const check = checkJournal(journalPath, config.journal.busyTimeoutMs, options.stopSignal);
      await extendWhile(
        journalCheckPhase(check.bytesRead, journalBytes),
        check.done,
        startProgress,
      );
      logger.info(
        { path: journalPath, ms: Math.round(performance.now() - checking) },
        'journal checked (SQLite quick_check)',
      );
      // The schema version, read once the check has passed, says what the start does next.
      const version = schemaVersion(journalPath, config.journal.busyTimeoutMs);
      const upgrading = version !== null && version > 0 && version < LATEST_VERSION;
      extendAfterStep(
        upgrading
          ? `journal checked; upgrading it from schema version ${version} to ${LATEST_VERSION}`
          : 'journal checked; opening it and connecting to the PLCs',
        startProgress,
      );
      // An older journal is upgraded after its check, not before: the upgrade writes into the
      // file, and a damaged one is refused as it is (the copy would have carried into the new
      // tables what it could read of the damaged pages, or failed halfway). On a thread of its
      // own, as the check: the copy of every command held the event loop for seconds (3.4 s for
      // 100,000 on a developer's machine), with no WATCHDOG=1 meanwhile, and one longer than
      // WatchdogSec= was killed, rolled back and made again at every restart. The open below
      // then finds the journal at this Sluice's version and migrates nothing.
      if (upgrading) {
        const upgradeBegan = performance.now();
        const bytes = fileBytes(journalPath) + fileBytes(`${journalPath}-wal`);
        logger.info(
          { path: journalPath, journalMb: Math.round(bytes / 1_000_000), from: version },
          `upgrading the journal from schema version ${version} to ${LATEST_VERSION}`,
        );
        const upgrade = upgradeJournalInChild(
          journalPath,
          config.journal.busyTimeoutMs,
          options.stopSignal,
        );
        await extendWhile(
          journalUpgradePhase(upgrade.bytesMoved, bytes, version, LATEST_VERSION),
          upgrade.done,
          {
            ...startProgress,
            thenExtend: 'journal upgraded; opening it and connecting to the PLCs',
          },
        );
        logger.info(
          {
            path: journalPath,
            from: version,
            to: LATEST_VERSION,
            ms: Math.round(performance.now() - upgradeBegan),
          },
          `journal upgraded from schema version ${version} to ${LATEST_VERSION}`,
        );
      }
      const journal = SqliteJournal.open({
        path: journalPath,
        busyTimeoutMs: config.journal.busyTimeoutMs,
        // Commands that arrive together share one fsync; nothing is acknowledged, published
        // or written to a controller before it (see SqliteJournal.durable).
        groupCommit: true,
      });
      releasers.push({
        name: 'journal',
        release: () => {
          journal.close();
        },
      });

      // A device renamed while the journal holds open commands of its former id is refused
      // before anything is connected (renamed-devices.ts); one renamed with none has its
      // former ids' last writes looked up at recovery (formerDeviceIds).
      const formerDeviceIds = checkRenamedDevices(journal, config, (error) => {
        logger.warn({ err: error }, "the devices' addresses could not be recorded in the journal");
      });

      // An identity renamed with its credential kept: its keys stay under the former name, and
      // its clients' retries of them are new commands (renamed-identities.ts).
      const renamedIdentities = findRenamedIdentities(journal, config, (error) => {
        logger.warn(
          { err: error },
          "the identities' credentials could not be recorded in the journal",
        );
      });
      for (const renamed of renamedIdentities) {
        logger.warn(
          { identity: renamed.now, formerIdentity: renamed.before },
          renamedIdentityMessage(renamed, config.journal.retentionHours),
        );
      }
      // Said by /readyz, sluicectl health and the STATUS= line for as long as keys of the
      // former name are kept, across restarts (identity-renames.ts).
      let renameNotices: IdentityRenameNotice[] = [];
      try {
        renameNotices = identityRenamesInForce(
          journal,
          config,
          renamedIdentities,
          Date.now(),
          (error) => {
            logger.warn(
              { err: error },
              'the renamed identities could not be recorded in the journal',
            );
          },
        );
      } catch (error) {
        logger.warn({ err: error }, 'the journal cannot be read for the renamed identities');
      }
      const identityRenames = new IdentityRenames(journal, config, renameNotices);

      // Each step from the check to the wait for recovery ends with a whole extension of the
      // start, the first of them the check's own (start-progress.ts).
      const steps: StartProgressOptions & { readonly until?: AbortSignal } =
        options.stopSignal === undefined
          ? startProgress
          : { ...startProgress, until: options.stopSignal };
      const clockChecked = config.clock.source !== 'none';
      // node-opcua's load holds the event loop (no look, no WATCHDOG=1 until it ends): the
      // extension sent as it begins is of its bound, which moves systemd's watchdog too, and the
      // pings wait for the drivers (start-progress.ts, extendBeforeHeldStep).
      let pingsHeld: (() => void) | null = null;
      if (Object.values(config.plcs).some((plc) => plc.protocol === 'opcua')) {
        pingsHeld = extendBeforeHeldStep(
          `journal opened; loading the PLC drivers (node-opcua, up to ${OPCUA_LOAD_BOUND_MS / 1000} s)`,
          OPCUA_LOAD_BOUND_MS,
          steps,
        );
      } else {
        extendAfterStep('journal opened; loading the PLC drivers', steps);
      }
      let drivers: Drivers;
      try {
        await options.beforeDrivers?.();
        drivers = await buildDrivers({
          inventory,
          profiles,
          pkiDir: join(config.stateDir, 'pki'),
          acceptUnknownCertificates: config.opcua.acceptUnknownCertificates,
          clock,
          logger,
        });
      } finally {
        pingsHeld?.();
      }
      releasers.push({ name: 'drivers', release: () => drivers.close() });
      drivers.start();
      if (clockChecked) extendAfterStep('PLC drivers loaded; checking the gateway clock', steps);

      // SPEC §6: the gateway clock is polled off the command path, and checked once before
      // the first command is judged (recovery, the intakes): before that check it is UNKNOWN.
      const clocks = gatewayClocks(config, clock, logger);
      releasers.push({ name: 'gateway clock', release: () => clocks.stop() });
      // Its tool is killed at the source's timeout, which may be longer than an extension: the
      // start is extended every period up to that bound (start-progress.ts, boundedStepPhase).
      const clockCheck = clocks.start();
      if (clockChecked) {
        await extendWhile(
          boundedStepPhase(
            'gateway clock check',
            `checking the gateway clock (${config.clock.source})`,
            clocks.startBoundMs,
          ),
          clockCheck,
          steps,
        );
      } else {
        await clockCheck;
      }
      // A stop asked for while the start waited (node-opcua loading, the drivers, the first
      // check of the gateway clock: seconds): the start ends here, before recovery takes up a
      // command and before an intake opens. From here to the intakes the start runs without a
      // wait, and past them the stop follows the start. Carried on, the start acknowledged the
      // commands a broker kept for the gateway, and wrote them, after the operator's stop.
      if (options.stopSignal?.aborted === true) {
        throw new StartStoppedError(
          'a stop was asked for while the start waited: no command taken up, no intake opened',
        );
      }
      extendAfterStep(
        `${clockChecked ? 'gateway clock checked' : 'PLC drivers loaded'}; taking up the commands the journal held open and opening the intakes`,
        steps,
      );

      const pipeline = new CommandPipeline({
        journal,
        devices: drivers.bindings,
        clock,
        logger,
        freshness: { maxIssuerSkewMs: config.clock.maxIssuerSkewMs },
        clockPolicy: clocks.policy,
        earlierLivesEndedMono,
        formerDeviceIds,
        maxQueuedPerDevice: config.commands.maxQueuedPerDevice,
      });
      const boundMs = options.shutdownBoundMs ?? 10_000;
      // I5: every open command is put at the head of its device's queue before the intakes
      // open, so that no new command overtakes it; it is settled by reading its controller
      // beside the intakes (a backlog does not keep them closed). READY waits for these to
      // settle (announceReady). Should recovery fail to read the journal, the intakes open all
      // the same and refuse every command (503, no PUBACK: I5) until a run of the sweep has read
      // it (pipeline.ts, recover()); /readyz and the status line say so meanwhile.
      let openAtStart: CommandRef[] = [];
      try {
        // A command for a device no longer configured has no worker: /readyz and the stuck
        // gauge name it; READY does not wait for it.
        // Their keys alone (a restart under load may find ten thousand): whole records here
        // cost the start a list as long as the sweep's, and its garbage.
        openAtStart = journal
          .listOpenRefs()
          .filter((r) => Object.hasOwn(config.devices, r.device))
          .map((r) => ({ scope: r.scope, key: r.key }));
      } catch (error) {
        logger.warn({ err: error }, 'the journal cannot be read at start; the sweep retries');
      }
      // Which of them are still open, for the status line while READY waits: followed by
      // their settlements from before recovery takes them up (no query: listing the open
      // commands again costs a read of the journal).
      const stillOpen = new Set(openAtStart.map(refId));
      const followed = pipeline.onSettled((record) => {
        stillOpen.delete(refId(record));
      });
      const recovered = pipeline.recover();
      if (recovered > 0)
        logger.warn({ open: recovered }, 'recovering open commands from the journal');
      pipeline.startMonitor(options.monitorIntervalMs ?? 1_000);
      // Open commands with no live worker (a journal stall, a failure) are taken up until they
      // are terminal, so that none waits for a restart.
      pipeline.startSweep(options.sweepIntervalMs ?? 1_000);

      // The count of the journal's rows runs in a process of its own, killed first at a stop
      // (its releaser is the last pushed below): a count of a large journal out of the page cache
      // takes seconds, and the stop no longer waits for it.
      const counting = new AbortController();
      const metrics = new Metrics(pipeline, clock, clocks.gateway, {
        path: journalPath,
        rows: () => countRows(journalPath, { signal: counting.signal }),
      });
      const sweeper = new CountedRetentionSweeper(
        {
          journal,
          clock,
          logger,
          retentionMs: config.journal.retentionHours * 3_600_000,
        },
        metrics,
      );
      sweeper.start();
      releasers.push({ name: 'retention', release: () => sweeper.stop() });
      // The admin endpoint is built once the daemon is (its health is the daemon's), but is
      // stopped here, after the intakes, the pipeline's drain and MQTT: sluicectl's health,
      // resolve and reverify are answered while a stop lets the commands in flight settle (up
      // to the shutdown bound), with health saying the daemon is stopping. Stopped first, the
      // socket was gone for that whole bound and sluicectl said "is sluiced running?".
      let adminEndpoint: AdminEndpoint | null = null;
      releasers.push({ name: 'admin', release: () => adminEndpoint?.stop() });

      const identities = new IdentityRegistry(config.identities);

      let mqttIntake: MqttIntake | null = null;
      if (config.mqtt !== undefined) {
        mqttIntake = new MqttIntake({
          config: config.mqtt,
          gatewayId: config.gatewayId,
          pipeline,
          identities,
          metrics,
          logger,
          clock,
          // The topic roots published under, for clearing a former root's retained topics.
          topicRootsFile: join(config.stateDir, 'mqtt-topic-roots.json'),
          retentionHours: config.journal.retentionHours,
          // Results the broker had not acknowledged are published again after a stop or crash.
          journal,
        });
        const intake = mqttIntake;
        registerMqttConnected(metrics.registry, () => intake.connected());
        releasers.push({ name: 'mqtt', release: () => intake.stop() });
        intake.start();
      }
      // Released before the MQTT intake: commands settling during the shutdown bound still
      // have their results published.
      releasers.push({ name: 'pipeline', release: () => pipeline.stop(boundMs) });

      let httpsIntake: HttpsIntake | null = null;
      const daemonRef: { current: Daemon | null } = { current: null };
      if (config.https !== undefined) {
        // Preflight returns the files whenever HTTPS is configured, or throws.
        if (httpsTls === null) throw new Error('preflight returned no HTTPS TLS files');
        httpsIntake = new HttpsIntake({
          config: config.https,
          ...(options.httpsTimeouts === undefined ? {} : { timeouts: options.httpsTimeouts }),
          // Served as checked: the intake does not read the files again, so a file replaced
          // since the check (a renewal agent at work during a long start) is not served
          // unchecked; the next reload (SIGHUP) takes it, with the checks.
          tls: httpsTls,
          pipeline,
          identities,
          metrics,
          logger,
          clock,
          readiness: () =>
            daemonRef.current?.readiness() ?? {
              ready: false,
              checks: { start: { ok: false, detail: 'starting' } },
            },
          // The operator status page (/ui/): it reads the journal and reports the gateway.
          ui: {
            config: config.ui,
            commands: journal,
            profiles: new Map(drivers.bindings.map((b) => [b.id, b.profile])),
            gateway: {
              gatewayId: config.gatewayId,
              clock: clocks.gateway,
              mqtt: mqttIntake,
              journalPath,
              // Before the daemon is built (its start, no page served yet), recovery's word.
              journalProblem: () =>
                daemonRef.current?.journalProblem() ?? pipeline.recoveryFailed()?.message ?? null,
            },
            ...(options.uiStreamPeerBounds === undefined
              ? {}
              : { streamPeerBounds: options.uiStreamPeerBounds }),
          },
        });
        const intake = httpsIntake;
        releasers.push({ name: 'https', release: () => intake.stop() });
      }
      releasers.push({
        name: 'row counts',
        release: () => {
          counting.abort();
        },
      });
      const daemon = new Daemon({
        config,
        logger,
        pipeline,
        metrics,
        recovered,
        journal,
        clocks,
        clock,
        notifier,
        startProgress,
        shutdownBoundMs: boundMs,
        readsFailingMs: options.readsFailingMs,
        syncStallMs: options.syncStallMs,
        identityRenames,
        httpsIntake,
        mqttIntake,
        releasers,
      });
      daemonRef.current = daemon;
      if (config.admin.enabled) {
        // sluicectl's reverify and resolve go through the daemon, the journal's single writer.
        const admin = AdminEndpoint.create({
          socket: config.admin.socket ?? join(config.stateDir, 'admin.sock'),
          tokenFile: config.admin.tokenFile ?? join(config.stateDir, 'admin.token'),
          pipeline,
          gatewayClock: clocks.gateway,
          policy: {
            onUnsynced: config.clock.onUnsynced,
            maxControllerSkewMs: config.clock.maxControllerSkewMs,
          },
          readiness: () => daemon.health(),
          clock,
          logger,
          ...(options.adminDrainMs === undefined ? {} : { drainMs: options.adminDrainMs }),
        });
        try {
          await admin.start();
          adminEndpoint = admin;
        } catch (error) {
          // The intakes must still answer (503 on a read-only journal, SPEC I5): the admin
          // endpoint is for operators, not a reason not to start.
          logger.error({ err: error }, 'admin endpoint not started; sluicectl cannot reach it');
        }
      }
      if (httpsIntake !== null) daemon.https = await httpsIntake.start();
      logger.info(
        {
          https: daemon.https,
          // A password in it as ***, as everywhere the URL is shown (mqtt-session.ts).
          mqtt: config.mqtt === undefined ? null : withoutPassword(config.mqtt.url),
          devices: Object.keys(config.devices),
        },
        'sluiced started',
      );
      void daemon.service.announceReady(
        { refs: openAtStart, stillOpen, unfollow: followed },
        options.readyBoundMs ?? 45_000,
      );
      return daemon;
    } catch (error) {
      await release();
      throw error;
    }
  }

  /**
   * The reload (SIGHUP): the TLS files read again and, when they pass the start's checks, used
   * from then on (tls-reload.ts); never the configuration file. Null when a stop has begun: the
   * intakes are closing, and nothing is worth changing. After READY, systemd is told
   * (RELOADING=1, then READY=1 with the status line, whose certificate verdict is the new one);
   * before it, READY=1 would claim the start finished, and the reload goes unannounced.
   */
  reloadTlsFiles(): TlsReload | null {
    if (this.stopping !== null) {
      this.logger.warn({}, 'reload (SIGHUP) ignored: sluiced is stopping');
      return null;
    }
    const announce = this.service.ready;
    if (announce) this.notifier.reloading('reloading: reading the TLS files again');
    try {
      return reloadTlsFiles(
        this.config,
        { https: this.httpsIntake, mqtt: this.mqttIntake },
        this.logger,
        process.env,
      );
    } finally {
      if (announce) this.notifier.ready(this.service.reloadedLine());
    }
  }

  /** Every check /readyz answers with (readiness.ts). */
  readiness(): Readiness {
    return readiness(this.readinessParts(), this.probes);
  }

  /** Why the journal is unavailable now, in /readyz's words, with no write (readiness.ts). */
  journalProblem(): string | null {
    return journalProblem({ journal: this.journal, pipeline: this.pipeline }, this.probes);
  }

  /**
   * What sluicectl health answers (the admin endpoint's /v1/health): the readiness checks, and
   * while a stop runs a failing `stopping` check, since the endpoint serves until the stop's end.
   */
  health(): Readiness {
    const now = this.readiness();
    if (this.stopping === null) return now;
    const checks = now.checks;
    return {
      ready: false,
      checks: {
        stopping: {
          ok: false,
          detail: `sluiced is stopping: no new commands are taken; those in flight get ${boundText(this.shutdownBoundMs)} to settle, the rest stay journaled for the next start`,
        },
        ...checks,
      },
    };
  }

  private readinessParts(): ReadinessParts {
    return {
      journal: this.journal,
      pipeline: this.pipeline,
      mqttIntake: this.mqttIntake,
      httpsIntake: this.httpsIntake,
      https: this.https,
      gatewayClock: this.clocks.gateway,
      onUnsynced: this.config.clock.onUnsynced,
      elapsed: () => this.clock.elapsed(),
      ...(this.readsFailingMs === undefined ? {} : { readsFailingMs: this.readsFailingMs }),
      identityRenames: () => this.identityRenames.current(),
    };
  }

  /**
   * Graceful stop: the intakes stop taking commands, in-flight commands get the shutdown bound
   * to settle (their results still go out), the rest stay journaled for recovery; then the
   * drivers and the journal close. Idempotent.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.service.stop();
      this.logger.info({}, 'sluiced stopping');
      this.notifier.stopping(
        `stopping: intakes close, in-flight commands get ${boundText(this.shutdownBoundMs)} to settle`,
      );
      // MQTT stops claiming at once (messages stay unacknowledged at the broker) but stays
      // connected to publish the results of commands that settle during the bound.
      this.mqttIntake?.stopTakingCommands();
      // In reverse start order: HTTPS takes no new requests; the pipeline refuses new commands
      // and lets in-flight ones settle within the bound, while MQTT is still connected to
      // publish their results (a message arriving now is refused, without PUBACK, and is
      // redelivered after the restart); then MQTT, retention, drivers and the journal.
      for (let r = this.releasers.pop(); r !== undefined; r = this.releasers.pop()) {
        try {
          await r.release();
        } catch (error) {
          this.logger.error({ err: error, part: r.name }, 'stopping a part failed');
        }
      }
      this.logger.info({}, 'sluiced stopped');
    })();
    return this.stopping;
  }
}

/** A file's size in bytes; 0 when there is none. */
function fileBytes(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

/**
 * The shutdown bound as the STOPPING line says it: seconds, with the milliseconds a whole
 * number of seconds would lose (rounded, a bound of 300 ms read "0 s", and 1500 ms "2 s").
 */
function boundText(ms: number): string {
  return `${Number((ms / 1000).toFixed(3))} s`;
}
