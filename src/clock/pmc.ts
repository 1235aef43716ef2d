import { constants } from 'node:fs';
import { access, stat, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ClockProbe, PtpObservation, PtpPortObservation } from '../core/gateway-clock.js';
import { execBounded, type Exec } from './exec.js';

/**
 * linuxptp's management client `pmc`, asked over ptp4l's UNIX domain socket (SPEC §6):
 *
 *   pmc -u -b 0 -s <uds path> -i <client socket> -d <domain>
 *       'GET TIME_STATUS_NP' 'GET PORT_DATA_SET' 'GET CURRENT_DATA_SET'
 *
 * Facts of pmc 3.1.1 this module is built on (checked against the real pmc and ptp4l):
 * - `-b 0`: boundary hops 0, so only the ptp4l behind the socket answers; with the default 1 it
 *   also forwards the GETs to the network and every clock within one hop answers too.
 * - `-s` is the server's socket; `-i` is pmc's own reply socket, default `/var/run/pmc.<pid>`,
 *   which an unprivileged client cannot create ("uds: bind failed: Permission denied", exit
 *   255). ptp4l sends its answers to that path, resolved in ptp4l's mount namespace: under
 *   systemd's PrivateTmp= a socket in /tmp is unreachable for ptp4l and no answer ever comes.
 *   Keep it in a RuntimeDirectory= (/run/sluice).
 * - In batch mode pmc exits 100 ms after the last message, with status 0 even when nothing
 *   answered (no socket, a dead socket, a wrong domain, no permission to write the socket):
 *   silence is only visible as missing blocks, so the socket is checked first for a clear reason.
 * - The read-only socket `/var/run/ptp4lro` (`uds_ro_address`, GETs only) arrived in linuxptp 4.0;
 *   3.1.1 has only the read-write `/var/run/ptp4l`, mode 0660 root:root.
 */
export interface PmcOptions {
  /** ptp4l's `uds_address` (`/var/run/ptp4l`; `/var/run/ptp4lro` on linuxptp ≥ 4.0). */
  readonly udsPath: string;
  /** ptp4l's `domainNumber`: a management message for another domain is not answered. */
  readonly domain?: number;
  /** The pmc binary (default `pmc`; `/usr/sbin/pmc` when sbin is not on the PATH). */
  readonly command?: string;
  /** Kill pmc after this long (default 2000 ms). */
  readonly timeoutMs?: number;
  /** Where pmc creates its reply socket (default the OS temp dir; see above for systemd). */
  readonly clientSocketDir?: string;
  readonly exec?: Exec;
}

export const PMC_QUERY_IDS = ['TIME_STATUS_NP', 'PORT_DATA_SET', 'CURRENT_DATA_SET'];
export const PMC_QUERIES = PMC_QUERY_IDS.map((id) => `GET ${id}`);
const DEFAULT_TIMEOUT_MS = 2000;
/** sockaddr_un.sun_path is 108 bytes with the terminating NUL. */
const MAX_UDS_PATH = 107;

export function pmcArgs(udsPath: string, clientSocket: string, domain: number): string[] {
  return ['-u', '-b', '0', '-s', udsPath, '-i', clientSocket, '-d', String(domain), ...PMC_QUERIES];
}

/** One answer block of pmc's output. */
export interface PmcBlock {
  /** The answering port, e.g. `fe0fe1.fffe.75124f-1` (port 0: the clock itself). */
  readonly sourcePort: string;
  readonly clockIdentity: string;
  readonly seq: number;
  /** MANAGEMENT, or MANAGEMENT_ERROR_STATUS for a refused request. */
  readonly kind: string;
  /** TIME_STATUS_NP, PORT_DATA_SET, ...; empty when pmc did not print it (an error status). */
  readonly id: string;
  readonly fields: ReadonlyMap<string, string>;
  /** The indented lines as printed (an error status has no name/value pairs). */
  readonly lines: readonly string[];
}

// "\tfe0fe1.fffe.75124f-0 seq 0 RESPONSE MANAGEMENT TIME_STATUS_NP ", and for a refusal
// "\tfe0fe1.fffe.75124f-0 seq 1 RESPONSE MANAGEMENT_ERROR_STATUS " (pmc 3.1.1 prints neither
// the management ID nor the error: the sequence number says which request it answers).
const HEADER =
  /^\s+(([0-9a-f]{6}\.[0-9a-f]{4}\.[0-9a-f]{6})-(\d+))\s+seq\s+(\d+)\s+(\S+)\s+(MANAGEMENT\S*)(?:\s+(\S+))?\s*$/i;
// "\t\tmaster_offset              131"
const FIELD = /^\s+(\S+)\s+(.*?)\s*$/;

/** Splits pmc's text into answer blocks; "sending:" lines, errors and noise end a block. */
export function parsePmcBlocks(text: string): PmcBlock[] {
  const blocks: PmcBlock[] = [];
  let current: { block: PmcBlock; fields: Map<string, string>; lines: string[] } | null = null;
  for (const line of text.split(/\r?\n/)) {
    const header = HEADER.exec(line);
    if (header !== null) {
      const fields = new Map<string, string>();
      const lines: string[] = [];
      current = {
        fields,
        lines,
        block: {
          sourcePort: header[1] ?? '',
          clockIdentity: header[2] ?? '',
          seq: Number(header[4]),
          kind: (header[6] ?? '').toUpperCase(),
          id: (header[7] ?? '').toUpperCase(),
          fields,
          lines,
        },
      };
      blocks.push(current.block);
      continue;
    }
    if (current !== null && /^\s/.test(line) && line.trim() !== '') {
      current.lines.push(line.trim());
      const field = FIELD.exec(line);
      if (field?.[1] !== undefined && field[2] !== undefined && !current.fields.has(field[1]))
        current.fields.set(field[1], field[2]);
      continue;
    }
    current = null;
  }
  return blocks;
}

export type PmcParse =
  | { readonly ok: true; readonly observation: PtpObservation }
  | { readonly ok: false; readonly error: string; readonly answered: boolean };

const INTEGER = /^[+-]?\d+$/;
const DECIMAL = /^[+-]?\d+(\.\d+)?$/;

function integerField(block: PmcBlock | undefined, name: string): number | null {
  const raw = block?.fields.get(name);
  return raw !== undefined && INTEGER.test(raw) ? Number(raw) : null;
}

function decimalField(block: PmcBlock | undefined, name: string): number | null {
  const raw = block?.fields.get(name);
  return raw !== undefined && DECIMAL.test(raw) ? Number(raw) : null;
}

function refusal(block: PmcBlock, id: string): string {
  return `ptp4l refused GET ${id}: ${block.lines.join(' ') || block.kind}`;
}

/**
 * pmc's text output into an observation of the clock behind the socket. TIME_STATUS_NP and at
 * least one PORT_DATA_SET are required; CURRENT_DATA_SET is optional (a note when missing).
 */
export function parsePmcOutput(text: string): PmcParse {
  const all = parsePmcBlocks(text);
  if (all.length === 0) return { ok: false, answered: false, error: 'no answer from ptp4l' };

  // With -b 0 only the local ptp4l answers. Should other clocks answer anyway (boundary hops
  // above 0), the local one is the first: its answers come over the socket, theirs over the wire.
  const clockIdentity = all[0]?.clockIdentity ?? '';
  const blocks = all.filter((b) => b.clockIdentity === clockIdentity);
  const notes: string[] = [];
  const others = new Set(all.map((b) => b.clockIdentity).filter((c) => c !== clockIdentity));
  if (others.size > 0)
    notes.push(`answers from other clocks ignored (${[...others].join(', ')}): is -b 0 set?`);

  // pmc numbers its requests 0, 1, 2 in the order given: an answer without an ID is matched
  // to its request by that number.
  const idOf = (b: PmcBlock): string => b.id || (PMC_QUERY_IDS[b.seq] ?? '');
  const answers = (id: string): PmcBlock[] => blocks.filter((b) => idOf(b) === id);
  const timeStatus = answers('TIME_STATUS_NP');
  const timeStatusAnswer = timeStatus.find((b) => b.kind === 'MANAGEMENT');
  if (timeStatusAnswer === undefined) {
    const refused = timeStatus[0];
    return {
      ok: false,
      answered: true,
      error:
        refused !== undefined
          ? refusal(refused, 'TIME_STATUS_NP')
          : 'no TIME_STATUS_NP answer from ptp4l',
    };
  }
  const gmPresentRaw = timeStatusAnswer.fields.get('gmPresent');
  if (gmPresentRaw !== 'true' && gmPresentRaw !== 'false')
    return { ok: false, answered: true, error: 'TIME_STATUS_NP answer without gmPresent' };

  const portBlocks = answers('PORT_DATA_SET');
  const ports: PtpPortObservation[] = [];
  for (const block of portBlocks) {
    if (block.kind !== 'MANAGEMENT') {
      notes.push(refusal(block, 'PORT_DATA_SET'));
      continue;
    }
    const state = block.fields.get('portState');
    if (state === undefined) {
      notes.push(`PORT_DATA_SET of ${block.sourcePort} without portState`);
      continue;
    }
    ports.push({ identity: block.fields.get('portIdentity') ?? block.sourcePort, state });
  }
  if (ports.length === 0) {
    const refused = portBlocks.find((b) => b.kind !== 'MANAGEMENT');
    return {
      ok: false,
      answered: true,
      error:
        refused !== undefined
          ? refusal(refused, 'PORT_DATA_SET')
          : 'no PORT_DATA_SET answer with a portState',
    };
  }

  const current = answers('CURRENT_DATA_SET').find((b) => b.kind === 'MANAGEMENT');
  if (current === undefined) notes.push('no CURRENT_DATA_SET answer');
  const masterOffsetNs = integerField(timeStatusAnswer, 'master_offset');
  if (masterOffsetNs === null) notes.push('TIME_STATUS_NP without a readable master_offset');

  return {
    ok: true,
    observation: {
      source: 'ptp',
      clockIdentity,
      ports,
      gmPresent: gmPresentRaw === 'true',
      gmIdentity: timeStatusAnswer.fields.get('gmIdentity') ?? null,
      masterOffsetNs,
      offsetFromMasterNs: decimalField(current, 'offsetFromMaster'),
      stepsRemoved: integerField(current, 'stepsRemoved'),
      notes,
    },
  };
}

async function socketProblem(udsPath: string): Promise<string | null> {
  try {
    const info = await stat(udsPath);
    if (!info.isSocket()) return `${udsPath} is not a socket`;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code === 'ENOENT'
      ? `no ptp4l socket at ${udsPath} (ptp4l not running, or another uds_address)`
      : `cannot reach ${udsPath}: ${code ?? String(error)}`;
  }
  try {
    await access(udsPath, constants.W_OK);
  } catch {
    return `no permission to write ${udsPath} (linuxptp ≥ 4.0 offers the read-only /var/run/ptp4lro; on 3.1.1 the daemon needs the socket's group)`;
  }
  return null;
}

let clientSockets = 0;

/**
 * A reader for the poller: one pmc run per call, never throwing. A missing or partial answer is
 * asked once more at once, since pmc waits only 100 ms for ptp4l after its last request.
 */
export function ptpReader(options: PmcOptions): (signal?: AbortSignal) => Promise<ClockProbe> {
  const exec = options.exec ?? execBounded;
  const command = options.command ?? 'pmc';
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const domain = options.domain ?? 0;
  const dir = options.clientSocketDir ?? tmpdir();
  const longest = join(dir, `sluice-pmc-${process.pid}-${Number.MAX_SAFE_INTEGER}.sock`);
  if (Buffer.byteLength(longest) > MAX_UDS_PATH)
    throw new Error(`pmc client socket directory ${dir} is too long for a UNIX socket path`);

  const unreachable = (error: string): ClockProbe => ({
    kind: 'unreachable',
    source: 'ptp',
    error,
  });

  const once = async (signal?: AbortSignal): Promise<PmcParse | ClockProbe> => {
    clientSockets += 1;
    const clientSocket = join(dir, `sluice-pmc-${process.pid}-${clientSockets}.sock`);
    try {
      const result = await exec(command, pmcArgs(options.udsPath, clientSocket, domain), {
        timeoutMs,
        ...(signal === undefined ? {} : { signal }),
      });
      if (result.timedOut) return unreachable(`pmc timed out after ${timeoutMs} ms`);
      if (result.error !== null) return unreachable(`pmc could not run: ${result.error}`);
      if (result.code !== 0) {
        const stderr = result.stderr.trim().split('\n').join('; ');
        return unreachable(`pmc exited with status ${result.code}${stderr ? `: ${stderr}` : ''}`);
      }
      return parsePmcOutput(result.stdout);
    } finally {
      // pmc removes its socket when it exits by itself, not when it is killed.
      await unlink(clientSocket).catch(() => undefined);
    }
  };

  return async (signal?: AbortSignal): Promise<ClockProbe> => {
    const problem = await socketProblem(options.udsPath);
    if (problem !== null) return unreachable(problem);
    let outcome = await once(signal);
    if ('ok' in outcome && !outcome.ok && signal?.aborted !== true) outcome = await once(signal);
    if (!('ok' in outcome)) return outcome;
    if (outcome.ok) return { kind: 'observed', observation: outcome.observation };
    return unreachable(
      outcome.answered
        ? `partial answer from ptp4l at ${options.udsPath}: ${outcome.error}`
        : `ptp4l did not answer at ${options.udsPath} (domain ${domain}? pmc's reply socket ${dir} reachable by ptp4l?)`,
    );
  };
}
