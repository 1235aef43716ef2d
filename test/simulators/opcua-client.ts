/**
 * The independent OPC UA client of the simulator tests (node-opcua's OPCUAClient), apart from
 * helpers.ts so that a Modbus-only test file does not load node-opcua (seconds on a busy
 * machine). It shares no code with the simulators or with src/.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AttributeIds, DataType, OPCUACertificateManager, OPCUAClient } from 'node-opcua';
import type { ClientSecureChannelLayer } from 'node-opcua';
import type { ClientSession, DataValue, StatusCode } from 'node-opcua';
import type { PlcEndpoint } from '../../simulators/plant.js';
import type { Wire } from './helpers.js';

export type OpcuaEndpoint = Extract<PlcEndpoint, { protocol: 'opcua' }>;

export function opcuaEndpoint(endpoint: PlcEndpoint): OpcuaEndpoint {
  if (endpoint.protocol !== 'opcua') throw new Error('not an OPC UA PLC');
  return endpoint;
}

export interface UaConnection {
  client: OPCUAClient;
  session: ClientSession;
  close(): Promise<void>;
}

let sharedPki: { dir: string; manager: OPCUACertificateManager } | undefined;

/**
 * One client PKI per test process, in a temporary directory: node-opcua creates a client
 * certificate on first use, which is slow, and must not land in the user's home.
 */
async function clientPki(): Promise<OPCUACertificateManager> {
  if (sharedPki === undefined) {
    const dir = await mkdtemp(join(tmpdir(), 'sluice-sim-test-client-'));
    const manager = new OPCUACertificateManager({
      rootFolder: join(dir, 'pki'),
      automaticallyAcceptUnknownCertificate: true,
      disableFileWatchers: true,
    });
    sharedPki = { dir, manager };
  }
  return sharedPki.manager;
}

/** Call from afterAll in files that used connectOpcua. */
export async function releaseClientPki(): Promise<void> {
  const pki = sharedPki;
  sharedPki = undefined;
  if (pki === undefined) return;
  await pki.manager.dispose();
  await rm(pki.dir, { recursive: true, force: true });
}

/**
 * Makes the client certificate of connectOpcua's PKI now (seconds of key generation), so that
 * a test can do it while it starts the server it will connect to.
 */
export async function prepareClientCertificate(): Promise<void> {
  const manager = await clientPki();
  await manager.initialize();
  const client = OPCUAClient.create({
    applicationName: 'sluice-sim-test',
    endpointMustExist: false,
    clientCertificateManager: manager,
  });
  await client.createDefaultCertificate();
}

/**
 * A node-opcua client session on an endpoint. With `transactionTimeoutMs`, the requests made on
 * the session time out after it; the connection and the session are made with the default
 * timeout (on a loaded machine a session's activation alone can take longer than a short one).
 */
export async function connectOpcua(
  endpointUrl: string,
  options: { transactionTimeoutMs?: number } = {},
): Promise<UaConnection> {
  const client = OPCUAClient.create({
    applicationName: 'sluice-sim-test',
    endpointMustExist: false,
    connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 },
    clientCertificateManager: await clientPki(),
  });
  await client.connect(endpointUrl);
  const session = await client.createSession();
  if (options.transactionTimeoutMs !== undefined) {
    // node-opcua's client has no public setter; its channel's timeout is a public field.
    const channel = (client as unknown as { _secureChannel: ClientSecureChannelLayer | null })
      ._secureChannel;
    if (channel === null) throw new Error('the client has no secure channel after connecting');
    channel.defaultTransactionTimeout = options.transactionTimeoutMs;
  }
  return {
    client,
    session,
    close: async () => {
      await session.close().catch(() => undefined);
      await client.disconnect();
    },
  };
}

export function nodeId(device: string, name: string): string {
  return `ns=1;s=${device}.${name}`;
}

export function uaCommandWrites(device: string, code: number, setpoint: number, seq: number) {
  return [
    {
      nodeId: nodeId(device, 'CommandCode'),
      attributeId: AttributeIds.Value,
      value: { value: { dataType: DataType.UInt16, value: code } },
    },
    {
      nodeId: nodeId(device, 'Setpoint'),
      attributeId: AttributeIds.Value,
      value: { value: { dataType: DataType.Double, value: setpoint } },
    },
    {
      nodeId: nodeId(device, 'CommandSeq'),
      attributeId: AttributeIds.Value,
      value: { value: { dataType: DataType.UInt16, value: seq } },
    },
  ];
}

/** Writes CommandCode, Setpoint and CommandSeq in one Write request. */
export async function uaCommand(
  session: ClientSession,
  device: string,
  code: number,
  setpoint: number,
  seq: number,
): Promise<StatusCode[]> {
  return session.write(uaCommandWrites(device, code, setpoint, seq));
}

export async function uaRead(session: ClientSession, ids: readonly string[]): Promise<DataValue[]> {
  return session.read(
    ids.map((id) => ({ nodeId: id, attributeId: AttributeIds.Value })),
    0,
  );
}

export function opcuaWire(session: ClientSession): Wire {
  return {
    command: async (device, code, setpoint, seq) => {
      const results = await uaCommand(session, device, code, setpoint, seq);
      const bad = results.find((r) => !r.isGood());
      if (bad !== undefined) throw new Error(`OPC UA write failed: ${bad.toString()}`);
    },
    status: async (device) => {
      const values = await session.read(
        ['StateCode', 'Position', 'FaultCode', 'SeqEcho'].map((name) => ({
          nodeId: nodeId(device, name),
          attributeId: AttributeIds.Value,
        })),
        0,
      );
      const num = (i: number): number => Number(values[i]?.value.value);
      return { stateCode: num(0), position: num(1), faultCode: num(2), seqEcho: num(3) };
    },
  };
}
