/**
 * Loopback HTTP control API of the simulated plant: device state, counters, the command log
 * and the full write log (the ground truth for I1), fault injection, the LOCAL switch, PLC
 * power cycles and refusals of connections. JSON in and out; errors are `{ code, message }`.
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { z } from 'zod';
import { InvalidRequestError, SimError } from './errors.js';
import { isFaultKind } from './faults.js';
import type { Plant } from './plant.js';
import type { SimDevice, SimPlc } from './plc.js';
import { zodIssues } from './zod-issues.js';

const MAX_BODY_BYTES = 64 * 1024;

const localBody = z.strictObject({
  local: z.boolean(),
  position: z.number().min(0).max(100).optional(),
});

class HttpError extends SimError {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;

  constructor(status: number, code: string, message: string, headers: Record<string, string> = {}) {
    super(code, message);
    this.status = status;
    this.headers = headers;
  }
}

const STATUS_BY_CODE: Readonly<Record<string, number>> = {
  UNKNOWN_DEVICE: 404,
  UNKNOWN_PLC: 404,
  UNKNOWN_FAULT: 404,
  INVALID_FAULT: 400,
  INVALID_REQUEST: 400,
  FAULT_NOT_APPLICABLE: 422,
};

type Route = (request: IncomingMessage, params: string[]) => unknown;

interface RouteEntry {
  method: string;
  pattern: RegExp;
  handler: Route;
}

export class ControlApi {
  readonly #plant: Plant;
  readonly #routes: RouteEntry[];
  readonly #sockets = new Set<Socket>();
  #server: Server | undefined;

  constructor(plant: Plant) {
    this.#plant = plant;
    const segment = '([^/]+)';
    const route = (method: string, path: string, handler: Route): RouteEntry => ({
      method,
      pattern: new RegExp(`^${path.replaceAll(':id', segment).replaceAll(':fault', segment)}$`),
      handler,
    });
    this.#routes = [
      route('GET', '/devices', () => ({ devices: plant.devices().map((d) => d.snapshot()) })),
      route('GET', '/devices/:id', (_req, [id]) => {
        const device = this.#device(id);
        return { ...device.snapshot(), log: device.log };
      }),
      route('GET', '/devices/:id/writes', (req, [id]) => {
        const device = this.#device(id);
        const seq = seqQuery(req);
        return {
          device: device.id,
          writesReceived: device.counters.writesReceived,
          dropped: device.writeLogDropped,
          ...(seq === undefined
            ? { writes: device.writeLog }
            : { seq, count: device.writesWithSeq(seq), writes: device.writesOfSeq(seq) }),
        };
      }),
      route('PUT', '/devices/:id/faults/:fault', async (req, [id, kind]) => {
        const device = this.#device(id);
        const fault = device.applyFault(kindOf(kind), await readJson(req));
        return { device: device.id, fault, faults: device.faults() };
      }),
      route('DELETE', '/devices/:id/faults/:fault', (_req, [id, kind]) => {
        const device = this.#device(id);
        const cleared = device.clearFault(kindOf(kind));
        return { device: device.id, cleared, faults: device.faults() };
      }),
      route('DELETE', '/devices/:id/faults', (_req, [id]) => {
        const device = this.#device(id);
        device.clearFaults();
        return { device: device.id, faults: device.faults() };
      }),
      route('POST', '/devices/:id/local', async (req, [id]) => {
        const device = this.#device(id);
        const parsed = localBody.safeParse(await readJson(req));
        if (!parsed.success) {
          const issues = zodIssues(parsed.error);
          throw new InvalidRequestError(
            issues.map((i) => `${i.path || '(body)'}: ${i.message}`).join('; '),
          );
        }
        device.setLocal(parsed.data.local, parsed.data.position);
        return {
          device: device.id,
          local: parsed.data.local,
          note: 'takes effect at the next scan',
        };
      }),
      route('POST', '/devices/:id/counters/reset', (_req, [id]) => {
        const device = this.#device(id);
        device.resetCounters();
        return { device: device.id, counters: device.counters };
      }),
      route('GET', '/plcs', () => ({ plcs: plant.plcs.map(plcView) })),
      route('GET', '/plcs/:id', (_req, [id]) => plcView(this.#plc(id))),
      route('POST', '/plcs/:id/power-cycle', async (req, [id]) => {
        const plc = this.#plc(id);
        const result = plc.applyPowerCycle(await readJson(req));
        return { plc: plc.name, ...result, powered: plc.powered };
      }),
      // { ms, afterReadOf? }: the PLC's communication module off the network for ms (Modbus
      // and OPC UA; OPC UA closes its sessions too), at once or after its next read of a
      // device; simulators/README.md, "Refusal of connections".
      route('POST', '/plcs/:id/refuse-connections', async (req, [id]) => {
        const plc = this.#plc(id);
        const result = plc.applyRefuseConnections(await readJson(req));
        return { plc: plc.name, ...result, refusingConnections: plc.refusingConnections };
      }),
      route('PUT', '/plcs/:id/faults/:fault', async (req, [id, kind]) => {
        const plc = this.#plc(id);
        const fault = plc.applyFault(kindOf(kind), await readJson(req));
        return { plc: plc.name, fault, faults: plc.faults() };
      }),
      route('DELETE', '/plcs/:id/faults/:fault', (_req, [id, kind]) => {
        const plc = this.#plc(id);
        const cleared = plc.clearFault(kindOf(kind));
        return { plc: plc.name, cleared, faults: plc.faults() };
      }),
      route('DELETE', '/plcs/:id/faults', (_req, [id]) => {
        const plc = this.#plc(id);
        plc.clearFaults();
        return { plc: plc.name, faults: plc.faults() };
      }),
    ];
  }

  async start(host: string, port: number): Promise<string> {
    const server = createServer((req, res) => {
      this.#handle(req, res).catch((err: unknown) => {
        this.#fail(res, err);
      });
    });
    server.on('connection', (socket) => {
      this.#sockets.add(socket);
      socket.on('close', () => this.#sockets.delete(socket));
    });
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const address = server.address() as AddressInfo;
    const shownHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;
    return `http://${shownHost}:${address.port}`;
  }

  async stop(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    if (server === undefined) return;
    const closed = new Promise<void>((resolve) => {
      server.close(() => {
        resolve();
      });
    });
    for (const socket of this.#sockets) socket.destroy();
    await closed;
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // Loopback only, and no DNS rebinding: a browser page must not reach the plant's faults.
    const host = (req.headers.host ?? '').replace(/:\d+$/, '');
    if (!['127.0.0.1', 'localhost', '[::1]'].includes(host)) {
      throw new HttpError(403, 'FORBIDDEN_HOST', `Host "${host}" is not a loopback name`);
    }
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const path = url.pathname.replace(/\/+$/, '') || '/';
    const matches = this.#routes
      .map((entry) => ({ entry, match: entry.pattern.exec(path) }))
      .filter((m) => m.match !== null);
    if (matches.length === 0) throw new HttpError(404, 'NOT_FOUND', `no route ${path}`);
    const hit = matches.find((m) => m.entry.method === req.method);
    if (hit === undefined || hit.match === null) {
      const allow = [...new Set(matches.map((m) => m.entry.method))].join(', ');
      throw new HttpError(405, 'METHOD_NOT_ALLOWED', `${req.method ?? '?'} ${path}`, {
        Allow: allow,
      });
    }
    const params = hit.match.slice(1).map((p) => decodeSegment(p));
    const body = await hit.entry.handler(req, params);
    send(res, 200, body);
  }

  #fail(res: ServerResponse, err: unknown): void {
    if (err instanceof HttpError) {
      send(res, err.status, { code: err.code, message: err.message }, err.headers);
    } else if (err instanceof SimError) {
      const extra = 'issues' in err ? { issues: err.issues } : {};
      send(res, STATUS_BY_CODE[err.code] ?? 400, {
        code: err.code,
        message: err.message,
        ...extra,
      });
    } else {
      const message = err instanceof Error ? err.message : String(err);
      send(res, 500, { code: 'INTERNAL', message });
    }
  }

  #device(id: string | undefined): SimDevice {
    return this.#plant.device(id ?? '');
  }

  #plc(id: string | undefined): SimPlc {
    return this.#plant.plc(id ?? '');
  }
}

/** A path segment, percent-decoded; a malformed escape is the client's error, not ours (500). */
function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new InvalidRequestError(`"${segment}" in the path is not valid percent-encoding`);
  }
}

function kindOf(kind: string | undefined): Parameters<SimDevice['clearFault']>[0] {
  const value = kind ?? '';
  if (!isFaultKind(value)) throw new HttpError(404, 'UNKNOWN_FAULT', `no fault "${value}"`);
  return value;
}

function plcView(plc: SimPlc): unknown {
  return {
    name: plc.name,
    protocol: plc.protocol,
    endpoint: plc.endpoint,
    scanMs: plc.config.scanMs,
    controllerTime: plc.controllerTime(),
    clock: plc.clock.settings,
    faults: plc.faults(),
    powered: plc.powered,
    powerCycles: plc.powerCycles,
    refusingConnections: plc.refusingConnections,
    devices: plc.devices.map((d) => d.id),
  };
}

/** `?seq=N` of GET /devices/{id}/writes: a sequence number 0..65535, or absent. */
function seqQuery(req: IncomingMessage): number | undefined {
  const raw = new URL(req.url ?? '/', 'http://127.0.0.1').searchParams.get('seq');
  if (raw === null) return undefined;
  const seq = Number(raw);
  if (raw.trim() === '' || !Number.isInteger(seq) || seq < 0 || seq > 65535) {
    throw new InvalidRequestError(`seq must be an integer 0..65535, got "${raw}"`);
  }
  return seq;
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const buffer = chunk as Buffer;
    size += buffer.length;
    if (size > MAX_BODY_BYTES)
      throw new HttpError(413, 'BODY_TOO_LARGE', `body over ${MAX_BODY_BYTES} bytes`);
    chunks.push(buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8').trim();
  if (text === '') return {};
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new HttpError(400, 'INVALID_JSON', 'the body is not valid JSON');
  }
}

function send(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'Cache-Control': 'no-store',
    ...headers,
  });
  res.end(text);
}
