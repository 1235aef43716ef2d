import type { X509Certificate } from 'node:crypto';
import { certificateName } from '../intake/https-certificate.js';
import { profilesDirOf, withoutPassword, type SluiceConfig } from '../config/config.js';
import { hostAndPort } from '../config/network-addresses.js';
import type { Preflight } from '../config/preflight.js';
import { mb, type JournalOutlook } from '../journal/upgrade-room.js';
import { registerMapLines } from '../drivers/modbus-map.js';
import { COMBINE_READS_DEFAULTS } from '../drivers/modbus-queue.js';

/**
 * What `sluiced --check` prints once everything passed: what the daemon would run, on one
 * screen — the gateway, its intakes, its PLCs, and every device with its profile and the
 * registers or nodes the driver will use. Loads no protocol stack.
 */
export function checkSummary(
  config: SluiceConfig,
  checked: Preflight,
  now: Date,
  journal: JournalOutlook = { kind: 'none' },
): string[] {
  const lines: string[] = [];
  /** Lines under one label, the label on the first. */
  const section = (label: string, texts: readonly string[]): void => {
    texts.forEach((text, i) => {
      lines.push(`  ${(i === 0 ? label : '').padEnd(9)} ${text}`);
    });
  };

  section('gateway', [config.gatewayId]);
  section('state', [
    `${config.stateDir} (journal ${config.journal.path ?? 'in the state folder'})`,
    ...journalLine(journal),
  ]);
  section('profiles', [`${profilesDirOf(config)}: ${[...checked.profiles.keys()].join(', ')}`]);

  const h = config.https;
  const certificate =
    checked.httpsTls === null
      ? ''
      : `, certificate ${certificateLine(checked.httpsTls.certificate, now)}`;
  const mutual =
    h?.clientCaFile === undefined ? '' : `, client certificates from ${h.clientCaFile}`;
  section('HTTPS', [
    h === undefined ? 'off' : `${hostAndPort(h.host, h.port)}${certificate}${mutual}`,
  ]);
  const m = config.mqtt;
  const protocol =
    m?.protocolVersion === 'auto'
      ? 'auto (5, else 3.1.1)'
      : m?.protocolVersion === 4
        ? '3.1.1'
        : '5';
  section('MQTT', [
    m === undefined
      ? 'off'
      : `${withoutPassword(m.url)}, topics ${m.topicRoot}/${config.gatewayId}/#, identity ${m.identity}, protocol ${protocol}`,
  ]);

  const plcs = Object.entries(config.plcs);
  const plcWidth = Math.max(0, ...plcs.map(([name]) => name.length));
  section(
    'PLCs',
    plcs.map(([name, plc]) => {
      const address =
        plc.protocol === 'modbus'
          ? `${hostAndPort(plc.host, plc.port)} unit ${plc.unitId}`
          : `${plc.endpointUrl}, security ${plc.securityMode}/${plc.securityPolicy}, namespace ${plc.namespaceUri}${serverCertificate(plc)}`;
      const line = `${name.padEnd(plcWidth)}  ${plc.protocol.padEnd(6)}  ${address}, timeout ${plc.requestTimeoutMs} ms`;
      // Named only where the PLC sets its own: every other PLC has the default (15 s).
      const grace =
        plc.unreachableGraceMs === undefined
          ? ''
          : `, unreachable grace ${plc.unreachableGraceMs} ms`;
      if (plc.protocol !== 'modbus') return `${line}${grace}`;
      const combine = plc.combineReads ?? COMBINE_READS_DEFAULTS;
      const connections = (plc.connections ?? 1) > 1 ? `, ${plc.connections} connections` : '';
      return `${line}, ${combine.enabled ? `block reads (gap ≤ ${combine.maxGap})` : 'no block reads'}${connections}${grace}`;
    }),
  );

  const devices = Object.entries(config.devices);
  const idWidth = Math.max(0, ...devices.map(([id]) => id.length));
  const profileWidth = Math.max(0, ...devices.map(([, d]) => d.profile.length));
  section(
    'devices',
    devices.flatMap(([id, device]) => {
      const plc = config.plcs[device.plc];
      const profile = checked.profiles.get(device.profile);
      // preflight has checked both: the summary is printed only for a configuration it passed.
      if (plc === undefined || profile === undefined) return [];
      const head = `${id.padEnd(idWidth)}  ${device.plc.padEnd(plcWidth)}  ${device.profile.padEnd(profileWidth)}`;
      switch (plc.protocol) {
        case 'modbus': {
          const base = device.base ?? 0;
          return [`${head}  base ${base}`, ...registerMapLines(profile, base).map((l) => `  ${l}`)];
        }
        case 'opcua': {
          const object = device.object ?? id;
          const ua = profile.opcua;
          return [
            `${head}  object ${object}`,
            `  nodes   nsu=${plc.namespaceUri};s=${object}.<name>`,
            ...(ua === undefined
              ? []
              : [`  status  ${nodeNames(ua.status)}`, `  command ${nodeNames(ua.command)}`]),
          ];
        }
      }
    }),
  );
  return lines;
}

/**
 * How an OPC UA PLC's server certificate is bound to its endpoint (opcua-binding.ts), with
 * security on: pinned, or trusted and naming the endpoint's host, or trusted alone when
 * `acceptHostNameMismatch` weakens the binding. Nothing with security None (no certificate).
 */
function serverCertificate(plc: {
  readonly securityMode: string;
  readonly serverCertificateSha256?: string | undefined;
  readonly acceptHostNameMismatch?: boolean | undefined;
}): string {
  if (plc.securityMode === 'None') return '';
  if (plc.serverCertificateSha256 !== undefined) {
    return `, server certificate pinned (SHA-256 ${plc.serverCertificateSha256})`;
  }
  return plc.acceptHostNameMismatch === true
    ? ', server certificate trusted, its host name NOT checked (acceptHostNameMismatch: any certificate the trust folders trust speaks for this address)'
    : ", server certificate trusted and naming the endpoint's host";
}

function nodeNames(fields: Readonly<Record<string, string | undefined>>): string {
  return Object.entries(fields)
    .filter((entry): entry is [string, string] => entry[1] !== undefined)
    .map(([field, node]) => `${field} ${node}`)
    .join(', ');
}

/** `CN=localhost, valid until 2027-12-01` (or EXPIRED): what an operator checks first. */
function certificateLine(certificate: X509Certificate, now: Date): string {
  const cn = certificateName(certificate);
  const until = new Date(certificate.validTo);
  const day = Number.isNaN(until.getTime())
    ? certificate.validTo
    : until.toISOString().slice(0, 10);
  return until.getTime() < now.getTime()
    ? `CN=${cn}, EXPIRED on ${day}`
    : `CN=${cn}, valid until ${day}`;
}

/** What the start will make of the journal (journalOutlook); a refused one never gets here. */
function journalLine(journal: JournalOutlook): string[] {
  switch (journal.kind) {
    case 'none':
      return ['journal: none yet, created at start'];
    case 'other':
      return ['journal: a file the start checks (it is no Sluice journal this check can read)'];
    case 'current':
    case 'newer':
      return [`journal: schema version ${journal.version}`];
    case 'upgrade': {
      const sorts = journal.room?.sorts;
      const room =
        journal.room === null
          ? 'its free space could not be measured'
          : `needs about ${mb(journal.room.needed)} free, ${mb(journal.room.free)} are${
              sorts === null || sorts === undefined || sorts.shared
                ? ''
                : `; its sorts about ${mb(sorts.needed)} in ${sorts.folder}, ${mb(sorts.free)} are free there`
            }`;
      return [
        `journal: schema version ${journal.from}, upgraded to ${journal.to} at start (${room})`,
      ];
    }
  }
}
