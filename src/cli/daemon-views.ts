import { imageFrozen } from '../core/device-monitor.js';
import type { DeviceDocument } from '../intake/device-view.js';
import { AdminClient } from './admin-client.js';
import type { CliContext } from './context.js';
import { formatDuration, relative } from './durations.js';
import { CliError, EXIT, type ExitCode } from './errors.js';
import { dash, renderFields, renderTable, type Column, type Field } from './table.js';

/**
 * `devices`, `clock` and `health`: what the running daemon knows, through its admin
 * endpoint. `--json` prints the endpoint's documents as they are (docs/admin-api.md).
 */

function admin(ctx: CliContext): AdminClient {
  return new AdminClient(ctx.adminEndpoint());
}

function asObject(body: unknown, what: string): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new CliError(`the daemon's ${what} answer is not a JSON object`);
  }
  return body as Record<string, unknown>;
}

/** `+12ms ±3ms`, with drift when known. */
function skewText(skew: DeviceDocument['skew']): string {
  if (skew === null) return '-';
  const sign = skew.offsetMs >= 0 ? '+' : '';
  // Older daemons send no drift; `?? null` keeps the column honest about it.
  const ppm = (skew as { driftPpm?: number | null }).driftPpm ?? null;
  const drift = ppm === null ? '' : `, drift ${ppm} ppm`;
  return `${sign}${skew.offsetMs} ms ±${skew.uncertaintyMs} ms${drift}`;
}

function clockOffText(off: DeviceDocument['clockOff']): string {
  return off === null ? 'ok' : `OFF ${Math.round(off.offsetMs)}ms > ${off.maxMs}ms`;
}

export async function runDevices(ctx: CliContext): Promise<ExitCode> {
  const body = asObject((await admin(ctx).get('/v1/devices')).body, 'devices');
  const devices = (Array.isArray(body.devices) ? body.devices : []) as DeviceDocument[];
  if (ctx.json) {
    ctx.outJson({ devices });
    return EXIT.OK;
  }
  const columns: Column<DeviceDocument>[] = [
    { header: 'device', value: (d) => d.id },
    { header: 'profile', value: (d) => d.profile },
    {
      header: 'state',
      value: (d) => d.mirror?.state ?? '-',
      tone: (d) => (d.mirror === null ? 'warn' : d.mirror.faultCode !== null ? 'bad' : null),
    },
    {
      header: 'position',
      value: (d) =>
        d.mirror?.position === null || d.mirror === null ? '-' : `${d.mirror.position}%`,
      align: 'right',
    },
    { header: 'fault', value: (d) => dash(d.mirror?.faultCode) },
    { header: 'seq', value: (d) => dash(d.mirror?.seq), align: 'right' },
    {
      header: 'readback',
      value: (d) =>
        (d.readbackAgeMs === null ? 'never' : `${formatDuration(d.readbackAgeMs)} ago`) +
        (frozen(d) ? `, image frozen ${formatDuration(d.imageUnchangedMs ?? 0)}` : ''),
      tone: (d) => (frozen(d) ? 'bad' : null),
    },
    { header: 'skew', value: (d) => skewText(d.skew) },
    {
      header: 'clock',
      value: (d) => clockOffText(d.clockOff),
      tone: (d) => (d.clockOff === null ? null : 'bad'),
    },
    {
      header: 'connected',
      value: (d) => connectedText(d.connectivity),
      tone: (d) => (d.connectivity.connected && d.connectivity.readError === null ? 'good' : 'bad'),
    },
    { header: 'queued', value: (d) => String(d.queued), align: 'right' },
    { header: 'in flight', value: inFlightText, tone: (d) => (held(d) === null ? null : 'warn') },
  ];
  ctx.out(renderTable(columns, devices, ctx.style));
  return EXIT.OK;
}

/** The command a device is held for while no worker runs it (older daemons send none). */
function held(d: DeviceDocument): string | null {
  return d.inFlight === null ? ((d as { unresolved?: string | null }).unresolved ?? null) : null;
}

/**
 * The command in flight, or the one left open that the device waits for: a device held by a
 * command whose journal write failed has nothing in flight and still runs nothing else, and an
 * operator looking for what holds it needs its key.
 */
function inFlightText(d: DeviceDocument): string {
  const key = held(d);
  return key === null ? dash(d.inFlight) : `${key} (left open; the device waits for it)`;
}

/** Reads answered with the same scan of the image for IMAGE_FROZEN_MS: it is not published. */
function frozen(d: DeviceDocument): boolean {
  return imageFrozen(d.imageUnchangedMs);
}

/**
 * The connection, and this device's own reads: a PLC that answers and refuses every read of
 * the device (a wrong register map) is connected and still says why nothing is mirrored.
 */
export function connectedText(c: DeviceDocument['connectivity']): string {
  if (!c.connected) return `no${c.lastError === null ? '' : `: ${c.lastError}`}`;
  if (c.readError === null) return 'yes';
  return `yes, reads fail (${c.readError.failures}): ${c.readError.message}`;
}

/** A time from the endpoint: epoch ms or RFC 3339; shown as both instant and age. */
function when(value: unknown, now: number): string {
  const ms =
    typeof value === 'number' ? value : typeof value === 'string' ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(ms)) return '-';
  return `${new Date(ms).toISOString()} (${relative(ms, now)})`;
}

function offsetText(ns: unknown): string {
  if (typeof ns !== 'number') return '-';
  const abs = Math.abs(ns);
  const unit =
    abs >= 1e9
      ? `${(ns / 1e9).toFixed(3)} s`
      : abs >= 1e6
        ? `${(ns / 1e6).toFixed(3)} ms`
        : abs >= 1e3
          ? `${(ns / 1e3).toFixed(1)} µs`
          : `${ns} ns`;
  return `${ns} ns${abs >= 1e3 ? ` (${unit})` : ''}`;
}

interface ClockDevice {
  readonly id: string;
  readonly skew: DeviceDocument['skew'];
  readonly clockOff: DeviceDocument['clockOff'];
}

export async function runClock(ctx: CliContext): Promise<ExitCode> {
  const body = asObject((await admin(ctx).get('/v1/clock')).body, 'clock');
  if (ctx.json) {
    ctx.outJson(body);
    return EXIT.OK;
  }
  const now = ctx.now();
  const g = asObject(body.gateway ?? {}, 'clock');
  const policy = asObject(body.policy ?? {}, 'clock');
  const state = typeof g.state === 'string' ? g.state : '-';
  const gatewayFields: Field[] = [
    ['source', dash(g.source as string | null | undefined)],
    [
      'state',
      state,
      state === 'LOCKED'
        ? 'good'
        : state === 'HOLDOVER'
          ? 'warn'
          : g.source === 'none'
            ? null
            : 'bad',
    ],
    ['offset', offsetText(g.offsetNs)],
    ['grandmaster', dash(g.grandmaster as string | null | undefined)],
    ['port state', dash(g.portState as string | null | undefined)],
    ['detail', dash(g.detail as string | null | undefined)],
    ['since', when(g.since, now)],
    ['checked', when(g.checkedAt, now)],
    ['last locked', g.lastLockedAt === null ? 'never' : when(g.lastLockedAt, now)],
  ];
  ctx.out('Gateway clock\n');
  ctx.out(renderFields(gatewayFields, ctx.style));
  ctx.out('\nPolicy\n');
  ctx.out(
    renderFields(
      [
        ['on unsynced', dash(policy.onUnsynced as string | undefined)],
        [
          'max controller skew',
          typeof policy.maxControllerSkewMs === 'number' ? `${policy.maxControllerSkewMs} ms` : '-',
        ],
      ],
      ctx.style,
    ),
  );
  const devices = (Array.isArray(body.devices) ? body.devices : []) as ClockDevice[];
  ctx.out('\nController clocks\n');
  ctx.out(
    renderTable(
      [
        { header: 'device', value: (d: ClockDevice) => d.id },
        { header: 'skew', value: (d) => skewText(d.skew) },
        {
          header: 'measured',
          value: (d) => (d.skew === null ? 'never' : relative(Date.parse(d.skew.measuredAt), now)),
        },
        {
          header: 'clock',
          value: (d) => clockOffText(d.clockOff),
          tone: (d) => (d.clockOff === null ? null : 'bad'),
        },
      ],
      devices,
      ctx.style,
      '  ',
    ),
  );
  return EXIT.OK;
}

interface Check {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
}

/** `health`: the daemon's readiness, check by check; exit 1 when it is not ready. */
export async function runHealth(ctx: CliContext): Promise<ExitCode> {
  const body = asObject((await admin(ctx).get('/v1/health', [503])).body, 'health');
  const ready = body.ready === true;
  const code = ready ? EXIT.OK : EXIT.ERROR;
  if (ctx.json) {
    ctx.outJson(body);
    return code;
  }
  const checks: Check[] = Object.entries(asObject(body.checks ?? {}, 'health')).map(([name, c]) => {
    const check = (c ?? {}) as { ok?: unknown; detail?: unknown };
    return {
      name,
      ok: check.ok === true,
      detail: typeof check.detail === 'string' ? check.detail : '',
    };
  });
  ctx.out(
    renderTable(
      [
        { header: 'check', value: (c: Check) => c.name },
        {
          header: 'ok',
          value: (c) => (c.ok ? 'ok' : 'FAIL'),
          tone: (c) => (c.ok ? 'good' : 'bad'),
        },
        { header: 'detail', value: (c) => c.detail },
      ],
      checks,
      ctx.style,
    ),
  );
  const failing = checks.filter((c) => !c.ok).length;
  ctx.out(
    `\n${ctx.style.paint(ready ? 'ready' : 'NOT READY', ready ? 'good' : 'bad')}` +
      (ready ? '\n' : ` (${failing} check${failing === 1 ? '' : 's'} failing)\n`),
  );
  return code;
}
