// The demo behind `npm start`: the bundled simulator plant, an embedded MQTT broker (or the
// one in SLUICE_MQTT_URL or the site file; none without an mqtt section), and the daemon with HTTPS on 127.0.0.1:8443 and
// gateway id `demo`, configured by devices/site.example.yaml. It creates a self-signed certificate (kept
// while it serves, made anew when it cannot: https-certificate.ts) and a demo token under .state/demo
// (the simulated OPC UA server keeps its certificate there too, sim-pki/),
// prints how to send a first command, and stops everything on Ctrl-C.
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { isAbsolute, join, relative } from 'node:path';
import { pino, type Logger } from 'pino';
import { ConfigError, loadConfig, withoutPassword, type SluiceConfig } from '../config/config.js';
import { preflight } from '../config/preflight.js';
// The daemon, the simulators and the broker (node-opcua above all: seconds to load) are loaded
// once the configuration is read and the ports the demo names in its hints are found free, so
// a start refused for either says why at once (main).
import type { Daemon, Readiness } from '../daemon/daemon.js';
import { packageRoot } from '../package-root.js';
import { shellWord } from '../shell-word.js';
import { brokerChoice, EMBEDDED_BROKER_URL } from './broker-choice.js';
import {
  certificateNames,
  ensureDemoCertificate,
  printedBase,
  printedCurl,
} from './https-certificate.js';
import type { Plant } from '../../simulators/plant.js';

const root = packageRoot();
const stateDir = join(root, '.state', 'demo');
const tlsDir = join(stateDir, 'tls');
/**
 * The simulated OPC UA server's PKI: its certificate and key, made at the first start (most of
 * a second, more on a loaded machine) and used again while they serve (simulators/opcua-server.ts).
 */
const simPkiDir = join(stateDir, 'sim-pki');
const sitePath = join(root, 'devices', 'site.example.yaml');
const logPath = join(stateDir, 'sluiced.log');

class DemoError extends Error {}

/** The folder `npm start` was run from (npm passes it as INIT_CWD; it runs us in the root). */
const launchDir = process.env.INIT_CWD ?? process.cwd();

/**
 * A file as the printed commands name it: relative to launchDir when the file is under it —
 * the README's `npm install && npm start` runs in the clone, and the printed curl then reads
 * as the README shows it — and in full otherwise, where a relative path would not resolve.
 */
function shownPath(path: string): string {
  const rel = relative(launchDir, path);
  return rel === '' || rel.startsWith('..') || isAbsolute(rel) ? path : rel;
}

/**
 * The mosquitto_sub and mosquitto_pub options that reach the broker as the daemon reaches it:
 * a broker of the user's own (SLUICE_MQTT_URL, the site file's mqtt section) may want TLS, its
 * CA, a client certificate, a user and a password, and commands printed with -h and -p alone
 * could not connect to it. The password stays in its file: the shell reads it (as the README's
 * curl reads the token), it is never printed.
 */
function mosquittoOptions(mqtt: SluiceConfig['mqtt'], url: string): string {
  const u = new URL(url);
  const scheme = u.protocol.slice(0, -1);
  const tls = scheme === 'mqtts' || scheme === 'ssl';
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  const options = [`-h ${shellWord(host)}`, `-p ${u.port || (tls ? '8883' : '1883')}`];
  if (tls) {
    // Without mqtt.caFile the daemon trusts the usual public CAs, as --tls-use-os-certs does.
    options.push(
      mqtt?.caFile === undefined
        ? '--tls-use-os-certs'
        : `--cafile ${shellWord(shownPath(mqtt.caFile))}`,
    );
    // A client certificate needs TLS (the configuration refuses it with mqtt://).
    if (mqtt?.certFile !== undefined && mqtt.keyFile !== undefined) {
      options.push(
        `--cert ${shellWord(shownPath(mqtt.certFile))}`,
        `--key ${shellWord(shownPath(mqtt.keyFile))}`,
      );
    }
  }
  // MQTT.js takes a user name in the URL over mqtt.username.
  const user = u.username === '' ? mqtt?.username : decodeURIComponent(u.username);
  if (user !== undefined) options.push(`-u ${shellWord(user)}`);
  if (mqtt?.passwordFile !== undefined) {
    options.push(`-P "$(cat ${shellWord(shownPath(mqtt.passwordFile))})"`);
  }
  return options.join(' ');
}

/**
 * A broker reached over WebSockets (ws://, wss://, which the configuration takes): the mosquitto
 * clients speak MQTT over TCP only, and mosquitto_sub and mosquitto_pub printed with its host
 * and port failed against its WebSocket listener ("a network protocol error"). sluicectl
 * connects as the daemon does (MQTT.js, the configuration's mqtt section), so the demo prints
 * `sluicectl send … --via mqtt` instead, with the settings of the environment that decide where
 * the command goes (the broker, the topics) and where its journal is (a rerun of the key takes
 * its issuedAt from there): a second terminal does not have the demo's environment. A broker
 * named in the site file is not repeated as SLUICE_MQTT_URL: sluicectl reads it from the file
 * (--config) as the daemon does.
 */
function sluicectlSend(
  config: SluiceConfig,
  url: string,
  brokerFrom: 'environment' | 'site' | 'embedded',
  device: string,
  key: string,
): readonly string[] {
  const env = brokerFrom === 'environment' ? [`SLUICE_MQTT_URL=${shellWord(url)}`] : [];
  if ((process.env.SLUICE_GATEWAY_ID ?? '') !== '') {
    env.push(`SLUICE_GATEWAY_ID=${shellWord(config.gatewayId)}`);
  }
  if ((process.env.SLUICE_STATE_DIR ?? '') !== '') {
    env.push(`SLUICE_STATE_DIR=${shellWord(shownPath(config.stateDir))}`);
  }
  const mqtt = config.mqtt;
  const options = [`--via mqtt --key ${shellWord(key)}`];
  if (mqtt?.username !== undefined && new URL(url).username === '') {
    options.push(`--mqtt-username ${shellWord(mqtt.username)}`);
  }
  if (mqtt?.passwordFile !== undefined) {
    options.push(`--mqtt-password-file ${shellWord(shownPath(mqtt.passwordFile))}`);
  }
  if (mqtt?.certFile !== undefined && mqtt.keyFile !== undefined) {
    options.push(
      `--mqtt-cert ${shellWord(shownPath(mqtt.certFile))} --mqtt-key ${shellWord(shownPath(mqtt.keyFile))}`,
    );
  }
  const cli = shellWord(shownPath(join(root, 'dist', 'src', 'cli', 'sluicectl.js')));
  const node = `node ${cli} --config ${shellWord(shownPath(sitePath))} \\`;
  return [
    ...(env.length === 0 ? [`  ${node}`] : [`  ${env.join(' ')} \\`, `    ${node}`]),
    `    send ${device} open ${options.join(' ')}`,
  ];
}

/**
 * How long the demo waits, before printing the instructions, for its MQTT intake (the printed
 * mosquitto_pub must find the command subscription in place) and for a readback from every
 * device (the OPC UA client has its certificate and session; the printed curl works at once).
 */
const READY_WAIT_MS = 30_000;

/** The daemon's MQTT and device checks, once they all pass or the wait is over. */
async function readyToCommand(daemon: Daemon, waitMs: number): Promise<Readiness['checks']> {
  const end = Date.now() + waitMs;
  for (;;) {
    const wanted = Object.entries(daemon.readiness().checks).filter(
      ([name]) => name === 'mqtt' || name.startsWith('device:'),
    );
    if (wanted.every(([, check]) => check.ok) || Date.now() >= end) {
      return Object.fromEntries(wanted);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function ensureToken(): string {
  const file = join(stateDir, 'demo-token');
  const fixed = process.env.SLUICE_DEMO_TOKEN;
  let token: string;
  if (fixed !== undefined && fixed !== '') token = fixed;
  else if (existsSync(file)) token = readFileSync(file, 'utf8').trim();
  else token = randomBytes(24).toString('base64url');
  writeFileSync(file, `${token}\n`, { mode: 0o600 });
  chmodSync(file, 0o600);
  return token;
}

const BROKER_PORT_TAKEN =
  '127.0.0.1:1883 is taken (another MQTT broker?). Stop it, or point the demo at it: SLUICE_MQTT_URL=mqtt://127.0.0.1:1883 npm start';

function httpsPortTaken(address: string, port: number): DemoError {
  return new DemoError(
    `${address}:${port} is taken (another demo or sluiced?). Stop it, or give the demo another HTTPS port: SLUICE_HTTPS_PORT=9443 npm start`,
  );
}

/**
 * Whether something already listens on host:port (EADDRINUSE), found by listening there a
 * moment; any other error is left to the real listener to report.
 */
async function inUse(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', (error: NodeJS.ErrnoException) => {
      resolve(error.code === 'EADDRINUSE');
    });
    probe.listen(port, host, () =>
      probe.close(() => {
        resolve(false);
      }),
    );
  });
}

async function startBroker(): Promise<{ url: string; stop: () => Promise<void> }> {
  const { Aedes } = await import('aedes');
  const broker = await Aedes.createBroker();
  const server: Server = createServer(broker.handle);
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => {
      reject(error.code === 'EADDRINUSE' ? new DemoError(BROKER_PORT_TAKEN) : error);
    });
    server.listen(1883, '127.0.0.1', resolve);
  });
  return {
    url: EMBEDDED_BROKER_URL,
    stop: async () => {
      await new Promise<void>((resolve) => {
        broker.close(() => {
          resolve();
        });
      });
      await new Promise<void>((resolve) =>
        server.close(() => {
          resolve();
        }),
      );
    },
  };
}

async function startSimulators(): Promise<Plant> {
  const { loadPlantFile, startPlant } = await import('../../simulators/plant.js');
  try {
    return await startPlant(
      await loadPlantFile(join(root, 'simulators', 'plants', 'default.yaml')),
      { pkiDir: simPkiDir, ownsPki: true },
    );
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') {
      throw new DemoError(
        `a simulator port is taken (${(error as Error).message}): is another demo or sluice-sim running?`,
      );
    }
    throw error;
  }
}

/**
 * The daemon, or what to do when its HTTPS port is taken (another demo, a sluiced, anything
 * on 8443): the other ports the demo takes say so in words, this one must too.
 */
async function startDaemon(config: SluiceConfig, logger: Logger): Promise<Daemon> {
  const { Daemon } = await import('../daemon/daemon.js');
  try {
    return await Daemon.start(config, { logger, shutdownBoundMs: 5_000 });
  } catch (error) {
    // Taken since main found it free.
    const e = error as NodeJS.ErrnoException & { address?: string; port?: number };
    if (e.code === 'EADDRINUSE' && config.https !== undefined && e.port === config.https.port) {
      throw httpsPortTaken(e.address ?? config.https.host, e.port);
    }
    throw error;
  }
}

async function main(): Promise<void> {
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const config = loadConfig(sitePath);
  // Kept from an earlier start while it serves (https-certificate.ts); made anew when it
  // expired or soon will, its key is lost or another's, or it does not name the printed host.
  const certificate = await ensureDemoCertificate(tlsDir, certificateNames(config.https?.host));
  const token = ensureToken();
  // The daemon's own start-up checks, before the simulators and the broker take their ports.
  preflight(config, sitePath);
  // The embedded broker's port and the daemon's HTTPS port, whose hints say how to get past
  // them, before anything is loaded and started: found taken only once the simulators were up
  // (and node-opcua loaded), a refusal took seconds. Taken in between, startBroker and
  // startDaemon say the same.
  const brokerFrom = brokerChoice(process.env, config);
  if (brokerFrom === 'embedded' && (await inUse('127.0.0.1', 1883))) {
    throw new DemoError(BROKER_PORT_TAKEN);
  }
  const listen = config.https;
  if (listen !== undefined && listen.port !== 0 && (await inUse(listen.host, listen.port))) {
    throw httpsPortTaken(listen.host, listen.port);
  }
  // Opened once no check refuses the start: an exit before its file is open throws ("sonic boom
  // is not ready yet").
  const logger = pino(
    { level: config.log.level },
    pino.destination({ dest: logPath, mkdir: true, sync: false }),
  );
  // Before the simulators and the daemon load it (node-opcua reports a check it started as it
  // loaded a moment later): node-opcua's own messages go to the log, never into the
  // instructions below.
  const { routeOpcuaMessages } = await import('../daemon/opcua-messages.js');
  routeOpcuaMessages(logger);
  if (certificate.problem !== null) {
    logger.warn(
      { certFile: certificate.certFile, problem: certificate.problem },
      'demo HTTPS certificate kept from an earlier start not used; made a new one',
    );
  }
  const stack: { name: string; stop: () => Promise<void> }[] = [];
  const stopAll = async (): Promise<void> => {
    for (let s = stack.pop(); s !== undefined; s = stack.pop()) {
      try {
        await s.stop();
      } catch (error) {
        process.stderr.write(`demo: stopping ${s.name} failed: ${String(error)}\n`);
      }
    }
  };
  try {
    const plant = await startSimulators();
    stack.push({ name: 'simulators', stop: () => plant.stop() });
    if (brokerFrom === 'embedded') {
      const broker = await startBroker();
      stack.push({ name: 'broker', stop: broker.stop });
    }
    const daemon = await startDaemon(config, logger);
    stack.push({ name: 'daemon', stop: () => daemon.stop() });
    const checks = await readyToCommand(daemon, READY_WAIT_MS);
    const mqttCheck = checks.mqtt ?? { ok: false, detail: 'not configured' };
    const devices = Object.entries(checks).filter(([name]) => name.startsWith('device:'));
    const silent = devices.filter(([, check]) => !check.ok);
    const devicesCheck =
      silent.length === 0
        ? `all ${devices.length} answering`
        : `NOT READY, ${silent.map(([name, check]) => `${name.slice('device:'.length)}: ${check.detail}`).join('; ')} (see the log)`;
    const https = daemon.https ?? { host: '127.0.0.1', port: 8443 };
    // Where a user on this machine reaches it (a wildcard on loopback), a name the certificate
    // carries (certificateNames).
    const base = printedBase(https.host, https.port);
    const mqttUrl = config.mqtt?.url ?? EMBEDDED_BROKER_URL;
    const brokerLabel = {
      environment: 'SLUICE_MQTT_URL',
      site: shownPath(sitePath),
      embedded: 'embedded broker',
      none: '',
    }[brokerFrom];
    const key = `demo-${Date.now().toString(36)}`;
    // The daemon's own topics: SLUICE_GATEWAY_ID (or an edited site file) moves them off
    // sluice/demo, and printed commands on the old ones would reach nothing.
    const topics = `${config.mqtt?.topicRoot ?? 'sluice'}/${config.gatewayId}`;
    const certFile = certificate.certFile;
    const cacert = shownPath(certFile);
    // The mosquitto clients speak MQTT over TCP only: sluicectlSend.
    const webSocket = /^wss?:/.test(mqttUrl);
    const brokerOptions = webSocket ? '' : mosquittoOptions(config.mqtt, mqttUrl);
    process.stdout.write(
      [
        '',
        'Sluice demo is running.',
        '',
        `  HTTPS      ${base}   (self-signed: ${certFile})`,
        // A browser or a command that trusted the kept certificate must take the new one.
        ...(certificate.problem === null
          ? []
          : [`             made anew at this start: ${certificate.problem}`]),
        ...(brokerFrom === 'none'
          ? [
              `  MQTT       off (no mqtt section in ${shownPath(sitePath)}): commands over HTTPS only`,
            ]
          : [
              // The configuration refuses a URL with a password; shown without one all the same.
              `  MQTT       ${withoutPassword(mqttUrl)} (${brokerLabel})   topics ${topics}/#`,
              `             ${mqttCheck.ok ? mqttCheck.detail : `NOT READY, ${mqttCheck.detail} (see the log)`}`,
            ]),
        `  Devices    inlet-valve, drain-valve (Modbus TCP 127.0.0.1:5020), outlet-valve, dosing-actuator (OPC UA opc.tcp://127.0.0.1:4840)`,
        `             ${devicesCheck}`,
        `  Simulators control API ${plant.controlUrl ?? 'off'}`,
        `  Status     ${base}/ui/   (the operator page; log in with the token)`,
        `  Token      ${token}`,
        `  Logs       ${logPath}`,
        '',
        `Open a valve over HTTPS${cacert === certFile ? '' : ` (in ${launchDir})`}; it waits for the readback, up to 10 s:`,
        '',
        ...printedCurl({ cacert, base, token, key }),
        '',
        // The daemon has no MQTT intake: a command published anywhere would reach nothing.
        ...(brokerFrom === 'none'
          ? []
          : webSocket
            ? [
                `Or over MQTT. The broker is reached over WebSockets (${new URL(mqttUrl).protocol}//), which the`,
                'mosquitto clients (mosquitto_pub, mosquitto_sub) cannot reach: they speak MQTT over TCP',
                'only. sluicectl reaches it as the daemon does; it sends the command with the time it was',
                'issued (a command queued at the broker must not run late) and prints its result:',
                '',
                ...sluicectlSend(config, mqttUrl, brokerFrom, 'drain-valve', `${key}-mqtt`),
                '',
                'Run the same line again: same key, same command, so the stored result comes back',
                '(REPLAYED) and the valve is not moved twice. A new command needs a new key.',
                '',
              ]
            : [
                'Or over MQTT. Watch the results in a second terminal:',
                '',
                `  mosquitto_sub ${brokerOptions} -t '${topics}/result/#' -v`,
                '',
                'and send a command. An MQTT command carries the time it was issued (a command queued at',
                'the broker must not run late), so stamp it first:',
                '',
                `  ISSUED_AT=$(date -u +%Y-%m-%dT%H:%M:%S.000Z)`,
                `  mosquitto_pub ${brokerOptions} -q 1 -t ${topics}/cmd/drain-valve \\`,
                `    -m '{"key":"${key}-mqtt","action":"open","issuedAt":"'"$ISSUED_AT"'"}'`,
                '',
                'Run the same mosquitto_pub line again: same key, same command, so the stored result comes',
                'back with "replayed": true and the valve is not moved twice. A new command needs a new',
                'key and a new ISSUED_AT.',
                '',
              ]),
        'Ctrl-C stops everything.',
        '',
      ].join('\n'),
    );
  } catch (error) {
    await stopAll();
    throw error;
  }

  let stopping = false;
  const onSignal = (): void => {
    if (stopping) process.exit(1);
    stopping = true;
    process.stdout.write('\nstopping ...\n');
    stopAll().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

try {
  await main();
} catch (error) {
  if (error instanceof DemoError || error instanceof ConfigError) {
    process.stderr.write(`demo: ${error.message}\n`);
    process.exit(2);
  }
  throw error;
}
