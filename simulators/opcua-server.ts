/**
 * OPC UA front end of a simulated PLC (node-opcua OPCUAServer, SecurityMode None, anonymous).
 *
 * Address space: namespace `urn:sluice:sim:<plc>` (index 1: the server's own namespace is
 * skipped; after the plant file's `namespacesBefore`, if any), one object per device with
 * string node ids `ns=1;s=<device>.<Name>`. Status
 * variables serve the image the controller published at its last scan, with the controller
 * clock at the scan that changed them as SourceTimestamp. Server_ServerStatus_CurrentTime
 * reports the controller clock (offset and drift included).
 *
 * Link faults are applied around node-opcua's request dispatch: `on_request` is wrapped to
 * plan each Read/Write request (and to hold it on the link before dispatch for latency
 * `when: before` or a stall), and each channel's `send_response` is wrapped to add latency, swallow the
 * reply, cut the connection after processing or turn results Bad. Both are node-opcua 2.182
 * internals (public members, not documented API); the version is pinned.
 *
 * A request held on the link holds back every request behind it on the same secure channel
 * (CloseSession included), and is dispatched when its hold ends even if the client has
 * closed or dropped the connection meanwhile: node-opcua keeps a session whose channel died
 * until the session times out, so the write lands as it would on a PLC.
 *
 * A power cycle closes every session and aborts every channel; while the power is off, new
 * channels are aborted as soon as they open. A session loss closes every session and keeps
 * the channels; new sessions may be refused for a while (BadTooManySessions). A refusal of
 * connections closes every session, aborts every channel and stops listening for a while
 * (opcua-refusal.ts); requests held on the link then die with their sessions.
 *
 * A Write request changes the command variables all at once, when node-opcua has processed it,
 * with the values that request carried. node-opcua processes requests concurrently and awaits
 * between the nodes of one request, so two requests written back to back (even on one channel)
 * interleave node by node: had each node written the shared command image as it went, the
 * first request's CommandSeq would have been handed over with the second one's seq and code,
 * and its own seq would never have reached the write log.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, rmSync, type Dirent } from 'node:fs';
import { isIP } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CreateSessionRequest,
  DataType,
  DataValue,
  MessageSecurityMode,
  NodeIdType,
  OPCUACertificateManager,
  OPCUAServer,
  ReadRequest,
  ReadResponse,
  RegisterServerMethod,
  SecurityPolicy,
  ServiceFault,
  StatusCode,
  StatusCodes,
  Variant,
  VariableIds,
  WriteRequest,
  WriteResponse,
  extractFullyQualifiedDomainName,
  getFullyQualifiedDomainName,
  getHostname,
  getIpAddresses,
  makeNodeId,
} from 'node-opcua';
import type { NodeId, ServerSecureChannelLayer, UAVariable } from 'node-opcua';
import { AttributeIds } from 'node-opcua';
import type { Logger } from 'pino';
import { opcuaNamespaceUri } from './codes.js';
import type { OpcuaVariableName } from './codes.js';
import { FaultNotApplicableError } from './errors.js';
import { planRequest } from './faults.js';
import type { Direction, FaultSet, LinkPlan } from './faults.js';
import { OpcuaRefusal } from './opcua-refusal.js';
import type { OpcuaPlcConfig } from './plant-file.js';
import type { PlcEndpoint, PowerCycleResult, SimDevice, SimPlc } from './plc.js';
import { Timers } from './timers.js';

type Message = Parameters<OPCUAServer['on_request']>[0];
type SendResponse = ServerSecureChannelLayer['send_response'];
type Dispatch = (message: Message, channel: ServerSecureChannelLayer) => void;
/** Handles one request; a promise when the request is held on the link until it settles. */
type LinkTask = () => Promise<void> | undefined;

/** A request's arrival at the PLC (time source), and whether a held request was ahead of it. */
interface Arrival {
  at: number;
  behind: boolean;
}

/**
 * The requests of one secure channel in arrival order. While one is held on the link, the
 * ones behind it wait, as bytes behind it on the same TCP connection would.
 */
class ChannelLink {
  readonly #waiting: LinkTask[] = [];
  readonly #onError: (err: unknown) => void;
  #held = false;

  constructor(onError: (err: unknown) => void) {
    this.#onError = onError;
  }

  /** Whether a request is held on the link now: one submitted now waits behind it. */
  get holding(): boolean {
    return this.#held;
  }

  submit(task: LinkTask): void {
    this.#waiting.push(task);
    this.#drain();
  }

  #drain(): void {
    while (!this.#held) {
      const task = this.#waiting.shift();
      if (task === undefined) return;
      const held = task();
      if (held !== undefined) {
        this.#held = true;
        void held.catch(this.#onError).finally(() => {
          this.#held = false;
          this.#drain();
        });
      }
    }
  }
}

export interface OpcuaServerOptions {
  /** Where the servers keep their PKI (one subdirectory per PLC); default: a temporary
   *  directory per server, removed on stop. */
  pkiDir?: string | undefined;
  /**
   * pkiDir is this plant's own, kept from one of its starts to the next (the demo's): locks
   * found there at start were left by a killed start and are removed, and a certificate that
   * can no longer serve (keptCertificateProblem) is made anew. Otherwise the folder is used as
   * found, as a PLC serves the certificate it was given: tests put expired ones there.
   */
  ownsPki?: boolean | undefined;
  /** Says when a kept certificate is not used, and why. */
  logger?: Logger | undefined;
}

interface CommandValue {
  value: number;
  /** Controller time of the write that set it. */
  at: number;
}

interface CommandImage {
  code: CommandValue;
  setpoint: CommandValue;
  seq: CommandValue;
}

/** One node of a Write request that writes a command variable's Value. */
interface CommandNodeWrite {
  /** Index in the original request. */
  index: number;
  device: SimDevice;
  slot: keyof CommandImage;
  /** The value the request carries; taken only if node-opcua answers the node Good. */
  value: unknown;
}

const COMMAND_SLOTS: Readonly<Record<keyof typeof COMMAND_TYPES, keyof CommandImage>> = {
  CommandCode: 'code',
  Setpoint: 'setpoint',
  CommandSeq: 'seq',
};

/** A node's status from a `bad-status` fault. */
interface NodeVerdict {
  status: StatusCode;
  /** `when: after`: the node is read or written all the same, then answered with `status`. */
  applied: boolean;
  /** `service`: the whole request is answered with a ServiceFault carrying `status`. */
  service: boolean;
}

/** What a Read/Write request suffers, decided when it arrives, applied when it is answered. */
interface PendingRequest {
  plan: LinkPlan;
  /** Per node of the original request: the Bad status it gets instead of being processed. */
  bad: (StatusCode | undefined)[];
  /** Per node of the original request: the status it is answered with once processed. */
  answered: (StatusCode | undefined)[];
  /** Write requests: original indexes of the nodes node-opcua was asked to write. */
  kept?: number[];
  /**
   * A ServiceFault answers the whole request: `applied` false, instead of processing it (nothing
   * read or written); true, once it has been processed, in place of its response.
   */
  serviceFault?: NodeVerdict;
  /** Write requests: the nodes that write a command variable, in request order. */
  commandWrites?: CommandNodeWrite[];
  /** Called once node-opcua has processed the request (its response is being sent). */
  processed?: () => void;
  /** How long a link fault held it before it was delivered (the write log's heldOnLinkMs). */
  heldOnLinkMs?: number;
  /** Read requests: the devices whose variables it reads (an armed refusal of connections). */
  readOf?: readonly string[];
}

const STATUS_TYPES: Readonly<
  Record<Exclude<OpcuaVariableName, 'CommandCode' | 'Setpoint' | 'CommandSeq'>, DataType>
> = {
  State: DataType.String,
  StateCode: DataType.Int32,
  Position: DataType.Double,
  FaultCode: DataType.UInt16,
  SeqEcho: DataType.UInt16,
  ScanTime: DataType.DateTime,
};

const COMMAND_TYPES = {
  CommandCode: DataType.UInt16,
  Setpoint: DataType.Double,
  CommandSeq: DataType.UInt16,
} as const;

/** The StatusCodes entry of that name (Good, Uncertain or Bad), if there is one. */
export function statusCodeNamed(name: string): StatusCode | undefined {
  const code = (StatusCodes as unknown as Record<string, unknown>)[name];
  return code instanceof StatusCode ? code : undefined;
}

/** A ServiceFault carrying `status`: the Service itself failed (OPC 10000-4 §5.3). */
function serviceFault(status: StatusCode): ServiceFault {
  return new ServiceFault({ responseHeader: { serviceResult: status } });
}

/**
 * Why a server certificate and private key kept from an earlier start cannot serve this one, or
 * null when they can, or when there is neither (made anew). Kept only as a pair that serves:
 * readable, the key the certificate's own, valid now, made for this application URI and these
 * DNS names (a host renamed since) and IP addresses (`ipAddresses`: one made before the
 * certificate named the loopback addresses).
 */
export function keptCertificateProblem(
  certificateFile: string,
  privateKeyFile: string,
  wanted: {
    applicationUri: string;
    dnsNames: readonly string[];
    ipAddresses?: readonly string[];
    now: number;
  },
): string | null {
  // A file's contents, or why it could not be read (its error code: ENOENT when missing).
  const read = (file: string): Buffer | string => {
    try {
      return readFileSync(file);
    } catch (error) {
      return (error as NodeJS.ErrnoException).code ?? String(error);
    }
  };
  const pem = read(certificateFile);
  const keyPem = read(privateKeyFile);
  if (pem === 'ENOENT') return keyPem === 'ENOENT' ? null : 'a private key without its certificate';
  if (!Buffer.isBuffer(pem)) return `the certificate cannot be read (${pem})`;
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(pem);
  } catch {
    return 'the certificate file holds no readable certificate';
  }
  if (wanted.now < Date.parse(certificate.validFrom)) {
    return `the certificate is not valid before ${certificate.validFrom}`;
  }
  if (wanted.now >= Date.parse(certificate.validTo)) {
    return `the certificate expired on ${certificate.validTo}`;
  }
  const names = (certificate.subjectAltName ?? '').split(', ');
  if (!names.includes(`URI:${wanted.applicationUri}`)) {
    return `the certificate was made for another application URI than ${wanted.applicationUri}`;
  }
  const unnamed = [
    ...wanted.dnsNames.filter((name) => !names.includes(`DNS:${name}`)),
    ...(wanted.ipAddresses ?? []).filter((ip) => certificate.checkIP(ip) === undefined),
  ];
  if (unnamed.length > 0) return `the certificate does not name ${unnamed.join(', ')}`;
  if (!Buffer.isBuffer(keyPem)) return `the private key cannot be read (${keyPem})`;
  try {
    if (!certificate.checkPrivateKey(createPrivateKey(keyPem))) {
      return 'the private key does not belong to the certificate';
    }
  } catch {
    return 'the private key file holds no readable key';
  }
  return null;
}

/** The application URI of the simulated PLC `plc`'s server: one per PLC, as in a plant. */
export function simulatorApplicationUri(plc: string): string {
  return `urn:sluice-sim:${plc}`;
}

/**
 * The hosts a simulated PLC's server certificate names (subjectAltName), so that a client that
 * checks the host of the endpoint URL against it (OPC 10000-4, 6.1.3; sluiced does) connects by
 * the addresses the demo and the tests use: node-opcua's own names (the machine's host name and
 * fully qualified name, its IPv4 addresses other than loopback), the loopback ones (localhost,
 * 127.0.0.1, ::1), and the host the PLC listens on when it is not a wildcard.
 */
export function simulatorCertificateHosts(host: string): { dns: string[]; ip: string[] } {
  const listens = ['0.0.0.0', '::', ''].includes(host) ? [] : [host];
  const unique = (names: string[]): string[] => [...new Set(names)].sort();
  return {
    dns: unique([
      getFullyQualifiedDomainName(),
      getHostname(),
      'localhost',
      ...listens.filter((h) => isIP(h) === 0),
    ]),
    ip: unique(['127.0.0.1', '::1', ...getIpAddresses(), ...listens.filter((h) => isIP(h) !== 0)]),
  };
}

/** Lock files and directories (`*.lock`) under a PKI folder, a few levels deep. */
function staleLocks(dir: string, depth = 0): string[] {
  let entries: Dirent[];
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  return entries.flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.name.endsWith('.lock')) return [path];
    return entry.isDirectory() && depth < 4 ? staleLocks(path, depth + 1) : [];
  });
}

/** The policies offered with Sign and SignAndEncrypt. */
const SECURE_POLICIES = [SecurityPolicy.Basic256Sha256, SecurityPolicy.Aes128_Sha256_RsaOaep];

export class OpcuaPlcServer {
  readonly #plc: SimPlc;
  readonly #config: OpcuaPlcConfig;
  readonly #options: OpcuaServerOptions;
  readonly #timers = new Timers();
  readonly #commands = new Map<string, CommandImage>();
  readonly #pending = new WeakMap<Message, PendingRequest>();
  readonly #hookedChannels = new WeakSet<ServerSecureChannelLayer>();
  readonly #links = new WeakMap<ServerSecureChannelLayer, ChannelLink>();
  #server: OPCUAServer | undefined;
  #ownPkiDir: string | undefined;
  #namespaceIndex = 1;
  /** Time-source reading until which new sessions are refused (loseSessions' refuseMs). */
  #refuseSessionsUntil = Number.NEGATIVE_INFINITY;
  readonly #refusal: OpcuaRefusal;

  constructor(plc: SimPlc, config: OpcuaPlcConfig, options: OpcuaServerOptions = {}) {
    this.#plc = plc;
    this.#config = config;
    this.#options = options;
    plc.frontEndFaultCheck = (fault, target) => {
      if (fault.kind !== 'bad-status') return;
      const status = statusCodeNamed(fault.status);
      if (status === undefined) {
        throw new FaultNotApplicableError(
          fault.kind,
          target,
          `${fault.status} is not an OPC UA status code`,
        );
      }
      if (fault.service && !status.isBad()) {
        throw new FaultNotApplicableError(
          fault.kind,
          target,
          `${fault.status} is not a Bad status: a ServiceFault says the Service failed`,
        );
      }
      // A Good or Uncertain status does not refuse anything: the node is processed.
      if (!status.isBad() && fault.when !== 'after') {
        throw new FaultNotApplicableError(
          fault.kind,
          target,
          `${fault.status} is not a Bad status: it answers a request that was applied (when: after)`,
        );
      }
    };
    plc.onPowerCycle((result) => {
      this.#powerCycled(result);
    });
    plc.onSessionLoss((refuseUntil) => {
      this.#loseSessions(refuseUntil);
    });
    this.#refusal = new OpcuaRefusal(plc);
    plc.onRefuseConnections((refusal) => {
      this.#refusal.apply(refusal);
    });
  }

  async start(): Promise<PlcEndpoint> {
    let pkiDir: string;
    if (this.#options.pkiDir === undefined) {
      this.#ownPkiDir = await mkdtemp(join(tmpdir(), `sluice-sim-${this.#plc.name}-`));
      pkiDir = this.#ownPkiDir;
    } else {
      pkiDir = join(this.#options.pkiDir, this.#plc.name);
    }
    const ownsPki = this.#options.pkiDir !== undefined && this.#options.ownsPki === true;
    if (ownsPki) {
      // node-opcua-pki serialises its changes with lock directories that a process killed while
      // making the certificate leaves behind, and the next start waited minutes for them to
      // look stale. The folder is this plant's alone (OpcuaServerOptions.ownsPki), so locks
      // found before its stores are opened are stale.
      for (const lock of staleLocks(pkiDir)) rmSync(lock, { recursive: true, force: true });
    }
    // Both stores live under pkiDir: left to itself node-opcua would put its user PKI in the
    // home directory. Nobody edits these folders while the plant runs, so no file watchers.
    const certificateManager = new OPCUACertificateManager({
      rootFolder: join(pkiDir, 'pki'),
      automaticallyAcceptUnknownCertificate: true,
      disableFileWatchers: true,
    });
    const userCertificateManager = new OPCUACertificateManager({
      rootFolder: join(pkiDir, 'user-pki'),
      automaticallyAcceptUnknownCertificate: true,
      disableFileWatchers: true,
    });
    const wildcard = ['0.0.0.0', '::', ''].includes(this.#config.host);
    const server = new OPCUAServer({
      port: this.#config.port,
      host: this.#config.host,
      // The host its endpoint URLs name: an IPv6 address in brackets (RFC 3986).
      ...(wildcard
        ? {}
        : {
            hostname: isIP(this.#config.host) === 6 ? `[${this.#config.host}]` : this.#config.host,
          }),
      securityModes: this.#config.securityModes.map((mode) => MessageSecurityMode[mode]),
      securityPolicies: [
        ...(this.#config.securityModes.includes('None') ? [SecurityPolicy.None] : []),
        ...(this.#config.securityModes.some((m) => m !== 'None') ? SECURE_POLICIES : []),
      ],
      allowAnonymous: true,
      // The plant namespace must be index 1 (`ns=1;s=<device>.<Name>`), or the one after the
      // plant file's namespacesBefore, so the server's own default namespace is not created.
      skipOwnNamespace: true,
      serverCertificateManager: certificateManager,
      userCertificateManager,
      registerServerMethod: RegisterServerMethod.HIDDEN,
      disableDiscovery: true,
      maxConnectionsPerEndpoint: 100,
      serverCapabilities: { maxSessions: 100 },
      buildInfo: { productName: 'sluice-sim', manufacturerName: 'Sluice' },
      serverInfo: {
        applicationName: { text: `sluice-sim ${this.#plc.name}` },
        applicationUri: this.#config.applicationUri ?? simulatorApplicationUri(this.#plc.name),
      },
    });
    this.#server = server;
    await extractFullyQualifiedDomainName();
    const hosts = simulatorCertificateHosts(this.#config.host);
    if (ownsPki) this.#checkKeptCertificate(server, hosts);
    await this.#makeCertificate(server, certificateManager, hosts);
    await server.initialize();
    this.#buildAddressSpace(server);
    this.#bindControllerClock(server);
    this.#interceptRequests(server);
    server.on('newChannel', (channel) => {
      // No power, no server: a connection that got this far is cut before it can be used.
      if (!this.#plc.powered) {
        setImmediate(() => {
          channel.abruptlyInterrupt();
        });
      }
    });
    await server.start();
    this.#refusal.attach(server);
    const endpoint = server.endpoints[0];
    const port = endpoint?.port ?? this.#config.port;
    const host = wildcard ? '127.0.0.1' : this.#config.host;
    return {
      protocol: 'opcua',
      endpointUrl: `opc.tcp://${host.includes(':') ? `[${host}]` : host}:${port}`,
      namespaceUri: opcuaNamespaceUri(this.#plc.name),
    };
  }

  async stop(): Promise<void> {
    this.#timers.cancelAll();
    this.#refusal.detach();
    const server = this.#server;
    this.#server = undefined;
    try {
      if (server !== undefined) await server.shutdown(0);
    } finally {
      if (this.#ownPkiDir !== undefined) {
        await rm(this.#ownPkiDir, { recursive: true, force: true });
        this.#ownPkiDir = undefined;
      }
    }
  }

  /**
   * node-opcua uses the certificate and key it finds in its PKI folder as they are, and makes
   * them only when the certificate file is missing: an expired one, one made under another
   * host name, or one whose key was lost would be served for ever (node-opcua only warns). They
   * are removed here when they cannot serve this start, so that both are made anew.
   */
  #checkKeptCertificate(server: OPCUAServer, hosts: { dns: string[]; ip: string[] }): void {
    // The names #makeCertificate puts in the certificate (its application URI and hosts);
    // the machine's own IPv4 addresses change with its network and are not required.
    const problem = keptCertificateProblem(server.certificateFile, server.privateKeyFile, {
      applicationUri: server.serverInfo.applicationUri ?? '',
      dnsNames: hosts.dns,
      ipAddresses: ['127.0.0.1', '::1'],
      now: Date.now(),
    });
    if (problem === null) return;
    this.#options.logger?.info(
      { plc: this.#plc.name, certificateFile: server.certificateFile, problem },
      'OPC UA server certificate kept from an earlier start not used; making a new one',
    );
    rmSync(server.certificateFile, { force: true });
    rmSync(server.privateKeyFile, { force: true });
  }

  /**
   * Makes the server's self-signed certificate when its PKI folder has none, as node-opcua's
   * initialize() would (ten years, the application URI, the machine's names), but naming the
   * hosts of simulatorCertificateHosts too: node-opcua's names no loopback address, and a client
   * that checks the endpoint URL's host against the certificate refused every simulated PLC
   * reached at 127.0.0.1. A certificate found there is served as it is (tests put their own).
   */
  async #makeCertificate(
    server: OPCUAServer,
    store: OPCUACertificateManager,
    hosts: { dns: string[]; ip: string[] },
  ): Promise<void> {
    if (existsSync(server.certificateFile)) return;
    await store.initialize();
    await store.createSelfSignedCertificate({
      applicationUri: server.serverInfo.applicationUri ?? simulatorApplicationUri(this.#plc.name),
      dns: hosts.dns,
      ip: hosts.ip,
      outputFile: server.certificateFile,
      subject: `/CN=sluice-sim ${this.#plc.name}/DC=${getHostname()}`,
      startDate: new Date(),
      validity: 365 * 10,
    });
  }

  #buildAddressSpace(server: OPCUAServer): void {
    const addressSpace = server.engine.addressSpace;
    if (addressSpace === null) throw new Error('OPC UA address space missing after initialize');
    // Registered first, they take the indexes from 1 and move the plant's after them.
    for (const uri of this.#config.namespacesBefore) addressSpace.registerNamespace(uri);
    const namespace = addressSpace.registerNamespace(opcuaNamespaceUri(this.#plc.name));
    this.#namespaceIndex = namespace.index;
    const controllerTime = this.#plc.controllerTime();
    for (const device of this.#plc.devices) {
      const object = namespace.addObject({
        organizedBy: addressSpace.rootFolder.objects,
        browseName: device.id,
        nodeId: `s=${device.id}`,
      });
      const addVariable = (
        name: OpcuaVariableName,
        dataType: DataType,
        writable: boolean,
      ): UAVariable =>
        namespace.addVariable({
          componentOf: object,
          browseName: name,
          nodeId: `s=${device.id}.${name}`,
          dataType: DataType[dataType],
          accessLevel: writable ? 'CurrentRead | CurrentWrite' : 'CurrentRead',
          userAccessLevel: writable ? 'CurrentRead | CurrentWrite' : 'CurrentRead',
          minimumSamplingInterval: this.#config.scanMs,
        });

      for (const [name, dataType] of Object.entries(STATUS_TYPES) as [
        keyof typeof STATUS_TYPES,
        DataType,
      ][]) {
        addVariable(name, dataType, false).bindVariable(
          { timestamped_get: () => statusDataValue(device, name, dataType) },
          true,
        );
      }

      const image: CommandImage = {
        code: { value: 0, at: controllerTime },
        setpoint: { value: 0, at: controllerTime },
        seq: { value: 0, at: controllerTime },
      };
      this.#commands.set(device.id, image);
      for (const [name, dataType] of Object.entries(COMMAND_TYPES) as [
        keyof typeof COMMAND_TYPES,
        DataType,
      ][]) {
        const slot = image[COMMAND_SLOTS[name]];
        addVariable(name, dataType, true).bindVariable(
          {
            timestamped_get: () =>
              new DataValue({
                value: new Variant({ dataType, value: slot.value }),
                sourceTimestamp: new Date(slot.at),
                statusCode: StatusCodes.Good,
              }),
            // Only checks the value: the request's values are written to the image all at
            // once when the whole request has been processed (#complete).
            timestamped_set: (dataValue: DataValue): Promise<StatusCode> => {
              const variant = dataValue.value;
              if (variant.dataType !== dataType || typeof variant.value !== 'number') {
                return Promise.resolve(StatusCodes.BadTypeMismatch);
              }
              return Promise.resolve(StatusCodes.Good);
            },
          },
          true,
        );
      }
    }
  }

  /**
   * node-opcua answers ServerStatus.CurrentTime from a Proxy over the ServerStatus extension
   * object that returns `new Date()`; a second Proxy in front of it substitutes the controller
   * clock, still letting the inner one touch the variable so subscriptions see it change.
   */
  #bindControllerClock(server: OPCUAServer): void {
    const node = server.engine.addressSpace?.findNode(
      makeNodeId(VariableIds.Server_ServerStatus),
    ) as { $extensionObject?: object } | null | undefined;
    const inner = node?.$extensionObject;
    if (node == null || inner === undefined) throw new Error('ServerStatus node not found');
    node.$extensionObject = new Proxy(inner, {
      get: (target, property) => {
        const value: unknown = Reflect.get(target, property);
        return property === 'currentTime' ? new Date(this.#plc.controllerTime()) : value;
      },
    });
  }

  /**
   * Power lost: sessions and channels die with the server, and the command variables are
   * volatile memory (0 again, stamped with the power-up time).
   */
  #powerCycled(result: PowerCycleResult): void {
    const server = this.#server;
    if (server === undefined) return;
    for (const session of server.engine.getSessions()) {
      server.engine.closeSession(session.authenticationToken, true, 'Terminated');
    }
    for (const endpoint of server.endpoints) endpoint.abruptlyInterruptChannels();
    for (const image of this.#commands.values()) {
      for (const slot of [image.code, image.setpoint, image.seq]) {
        slot.value = 0;
        slot.at = result.powerUpControllerTime;
      }
    }
  }

  /**
   * The server forgets its sessions and keeps its channels: a request on one of them is
   * answered BadSessionIdInvalid by node-opcua, as by a server whose sessions timed out.
   */
  #loseSessions(refuseUntil: number): void {
    const server = this.#server;
    if (server === undefined) return;
    this.#refuseSessionsUntil = refuseUntil;
    for (const session of server.engine.getSessions()) {
      server.engine.closeSession(session.authenticationToken, true, 'Terminated');
    }
  }

  #interceptRequests(server: OPCUAServer): void {
    const dispatch: Dispatch = server.on_request.bind(server);
    server.on_request = (message, channel) => {
      const powerCycles = this.#plc.powerCycles;
      let link = this.#links.get(channel);
      if (link === undefined) {
        link = new ChannelLink((err: unknown) => {
          this.#plc.log.error({ err }, 'OPC UA request held on the link failed');
        });
        this.#links.set(channel, link);
      }
      const refusals = this.#refusal.count;
      // When it reached the PLC, and whether it waits behind a request held on the link: the
      // write log's heldOnLinkMs counts from its arrival.
      const arrival: Arrival = { at: this.#plc.time.now(), behind: link.holding };
      link.submit(() => {
        // Requests still waiting behind a held one when the power went, or the communication
        // module dropped off the network, died with the link.
        if (this.#plc.powerCycles !== powerCycles || this.#refusal.count !== refusals) {
          return undefined;
        }
        if (!this.#plc.powered) {
          channel.abruptlyInterrupt();
          return undefined;
        }
        if (
          message.request instanceof CreateSessionRequest &&
          this.#plc.time.now() < this.#refuseSessionsUntil
        ) {
          const refusal = new ServiceFault({
            responseHeader: { serviceResult: StatusCodes.BadTooManySessions },
          });
          channel.send_response('MSG', refusal, message);
          return undefined;
        }
        return this.#onRequest(message, channel, dispatch, arrival);
      });
    };
  }

  /**
   * Plans a request's link faults and hands it to node-opcua, at once or, when it is held on
   * the link, once the delay ends (then the returned promise settles).
   */
  #onRequest(
    message: Message,
    channel: ServerSecureChannelLayer,
    dispatch: Dispatch,
    arrival: Arrival,
  ): Promise<void> | undefined {
    const request = message.request;
    let direction: Direction;
    let nodeIds: NodeId[];
    let attributeIds: number[];
    if (request instanceof ReadRequest) {
      direction = 'read';
      nodeIds = (request.nodesToRead ?? []).map((node) => node.nodeId);
      attributeIds = (request.nodesToRead ?? []).map((node) => node.attributeId);
    } else if (request instanceof WriteRequest) {
      direction = 'write';
      nodeIds = (request.nodesToWrite ?? []).map((node) => node.nodeId);
      attributeIds = (request.nodesToWrite ?? []).map((node) => node.attributeId);
    } else {
      dispatch(message, channel);
      return undefined;
    }
    this.#hookChannel(channel);

    const nodeDevices = nodeIds.map((nodeId) => this.#deviceOf(nodeId));
    const devices = [...new Set(nodeDevices.filter((d): d is SimDevice => d !== undefined))];
    const sets: FaultSet[] = [...devices.map((d) => d.faultSet), this.#plc.faultSet];
    const plan = planRequest(sets, direction, this.#plc.random, undefined);
    if (plan.resetBefore) {
      channel.abruptlyInterrupt();
      return undefined;
    }

    // Bad status is per node: a device's fault hits its own nodes, the PLC's hits all of them
    // (with `node`, only the nodes of that variable, and only requests that carry one).
    // Each fault set is asked once per request so a `count` wears down once per request.
    const variableOf = (nodeId: NodeId): string => {
      const value = String(nodeId.value);
      return value.slice(value.indexOf('.') + 1);
    };
    const targets = (set: FaultSet, i: number): boolean => {
      const node = set.get('bad-status')?.node;
      const nodeId = nodeIds[i];
      return (
        node === undefined ||
        (nodeDevices[i] !== undefined && nodeId !== undefined && variableOf(nodeId) === node)
      );
    };
    const verdicts = new Map<FaultSet, NodeVerdict | undefined>();
    const verdict = (set: FaultSet): NodeVerdict | undefined => {
      if (!verdicts.has(set)) {
        const carried = nodeIds.some((_, i) => targets(set, i));
        const fault = carried ? set.hit('bad-status', direction, this.#plc.random) : undefined;
        const status = fault === undefined ? undefined : statusCodeNamed(fault.status);
        verdicts.set(
          set,
          fault === undefined || status === undefined
            ? undefined
            : { status, applied: fault.when === 'after', service: fault.service },
        );
      }
      return verdicts.get(set);
    };
    const nodeVerdicts = nodeDevices.map((device, i) => {
      const sets =
        device === undefined ? [this.#plc.faultSet] : [device.faultSet, this.#plc.faultSet];
      for (const set of sets) {
        const v = targets(set, i) ? verdict(set) : undefined;
        if (v !== undefined) return v;
      }
      return undefined;
    });
    // A service-level fault answers the request as a whole: no status per node then.
    const failed = nodeVerdicts.find((v) => v?.service === true);
    const perNode = failed === undefined ? nodeVerdicts : [];
    const bad = perNode.map((v) => (v !== undefined && !v.applied ? v.status : undefined));
    const answered = perNode.map((v) => (v?.applied === true ? v.status : undefined));
    const pending: PendingRequest = { plan, bad, answered };
    if (failed !== undefined) pending.serviceFault = failed;
    if (direction === 'read') pending.readOf = devices.map((d) => d.id);

    if (request instanceof WriteRequest) {
      const nodesToWrite = request.nodesToWrite ?? [];
      pending.commandWrites = nodesToWrite.flatMap((writeValue, i): CommandNodeWrite[] => {
        const device = nodeDevices[i];
        const nodeId = nodeIds[i];
        if (device === undefined || nodeId === undefined) return [];
        if (attributeIds[i] !== AttributeIds.Value) return [];
        const name = variableOf(nodeId);
        if (
          String(nodeId.value) !== `${device.id}.${name}` ||
          !Object.hasOwn(COMMAND_SLOTS, name)
        ) {
          return [];
        }
        const slot = COMMAND_SLOTS[name as keyof typeof COMMAND_SLOTS];
        return [{ index: i, device, slot, value: writeValue.value.value.value }];
      });
      if (bad.some((status) => status !== undefined)) {
        // Refused nodes must not be written at all: hand node-opcua only the others and put
        // the Bad results back in place when the response goes out.
        pending.kept = nodesToWrite.flatMap((_, i) => (bad[i] === undefined ? [i] : []));
        request.nodesToWrite = pending.kept
          .map((i) => nodesToWrite[i])
          .filter((n) => n !== undefined);
      }
    }
    const deliver = (): void => {
      this.#pending.set(message, pending);
      if (pending.serviceFault?.applied === false) {
        // The Service failed: nothing of the request is read or written.
        channel.send_response('MSG', serviceFault(pending.serviceFault.status), message);
      } else if (pending.kept?.length === 0) {
        channel.send_response('MSG', new WriteResponse({ results: [] }), message);
      } else {
        dispatch(message, channel);
      }
    };
    if (plan.latencyBeforeMs <= 0 && plan.stalledUntil === undefined) {
      // Not held itself, but held all the same if it waited behind a held request.
      if (arrival.behind) pending.heldOnLinkMs = this.#plc.time.now() - arrival.at;
      deliver();
      return undefined;
    }
    return this.#heldOnLink(plan.latencyBeforeMs, plan.stalledUntil, pending, deliver, arrival);
  }

  /**
   * Holds a request on the link `ms`, then until `stalled` settles, then delivers it, whatever
   * became of the client's connection meanwhile, unless a power cycle, a refusal of connections
   * (its session is gone) or the plant's stop took the link and what was on it. Settles once node-opcua has processed it, not just received
   * it: node-opcua processes requests concurrently, a PLC's communication task in order, and
   * the ones behind it wait. Its heldOnLinkMs counts from its `arrival`, the time it waited
   * behind the requests before it on the channel included.
   */
  async #heldOnLink(
    ms: number,
    stalled: Promise<void> | undefined,
    pending: PendingRequest,
    deliver: () => void,
    arrival: Arrival,
  ): Promise<void> {
    const powerCycles = this.#plc.powerCycles;
    const refusals = this.#refusal.count;
    if (ms > 0) await this.#timers.delay(ms);
    if (stalled !== undefined) await this.#timers.until(stalled);
    if (
      this.#server === undefined ||
      this.#plc.powerCycles !== powerCycles ||
      this.#refusal.count !== refusals
    ) {
      return;
    }
    pending.heldOnLinkMs = this.#plc.time.now() - arrival.at;
    await new Promise<void>((resolve) => {
      pending.processed = resolve;
      deliver();
    });
  }

  #hookChannel(channel: ServerSecureChannelLayer): void {
    if (this.#hookedChannels.has(channel)) return;
    this.#hookedChannels.add(channel);
    const send: SendResponse = channel.send_response.bind(channel);
    channel.send_response = (msgType, response, message, callback) => {
      const pending = this.#pending.get(message);
      if (pending === undefined) {
        send(msgType, response, message, callback);
        return;
      }
      this.#pending.delete(message);
      this.#complete(pending, response);
      pending.processed?.();
      // Processed (`when: after`), then answered with the ServiceFault instead.
      const answer =
        pending.serviceFault?.applied === true
          ? serviceFault(pending.serviceFault.status)
          : response;
      const finish = (): void => {
        if (pending.plan.drop) {
          callback?.();
        } else if (pending.plan.resetAfter) {
          channel.abruptlyInterrupt();
          callback?.();
        } else {
          send(msgType, answer, message, callback);
          // An armed refusal of connections starts right after the answer is handed over.
          if (pending.readOf !== undefined) this.#refusal.answeredRead(pending.readOf);
        }
      };
      if (pending.plan.latencyMs > 0) this.#timers.after(pending.plan.latencyMs, finish);
      else finish();
    };
  }

  /**
   * The request has been processed: merge refused nodes back, hand commands over, then answer
   * the nodes processed all the same (`when: after`) with their fault's status.
   */
  #complete(pending: PendingRequest, response: unknown): void {
    if (response instanceof ReadResponse) {
      const results = response.results ?? [];
      pending.bad.forEach((status, i) => {
        if (status !== undefined && i < results.length)
          results[i] = new DataValue({ statusCode: status });
      });
      pending.answered.forEach((status, i) => {
        const result = results[i];
        if (status !== undefined && result !== undefined) result.statusCode = status;
      });
      return;
    }
    if (!(response instanceof WriteResponse)) return;
    let results = response.results ?? [];
    if (pending.kept !== undefined) {
      const written = results;
      const merged: StatusCode[] = pending.bad.map(
        (status) => status ?? StatusCodes.BadInternalError,
      );
      pending.kept.forEach((original, j) => {
        merged[original] = written[j] ?? StatusCodes.BadInternalError;
      });
      results = merged;
      response.results = merged;
    }
    // The nodes written take their values now, all of one request at once (see the file's
    // comment); then every CommandSeq written hands over the block as the whole request left
    // it, each with the seq it wrote.
    const taken = (pending.commandWrites ?? []).filter(
      (w) => results[w.index]?.isGood() === true && typeof w.value === 'number',
    );
    const at = this.#plc.controllerTime();
    for (const { device, slot, value } of taken) {
      const command = this.#commands.get(device.id)?.[slot];
      if (command === undefined) continue;
      command.value = value as number;
      command.at = at;
    }
    for (const { device, slot, value } of taken) {
      const image = this.#commands.get(device.id);
      if (slot !== 'seq' || image === undefined) continue;
      device.receiveWrite(
        {
          code: image.code.value,
          setpoint: image.setpoint.value,
          seq: value as number,
        },
        pending.heldOnLinkMs,
      );
    }
    pending.answered.forEach((status, i) => {
      if (status !== undefined && results[i]?.isGood() === true) results[i] = status;
    });
    response.results = results;
  }

  #deviceOf(nodeId: NodeId): SimDevice | undefined {
    if (nodeId.namespace !== this.#namespaceIndex || nodeId.identifierType !== NodeIdType.STRING) {
      return undefined;
    }
    const value = String(nodeId.value);
    const dot = value.indexOf('.');
    return this.#plc.device(dot === -1 ? value : value.slice(0, dot));
  }
}

function statusDataValue(
  device: SimDevice,
  name: keyof typeof STATUS_TYPES,
  dataType: DataType,
): DataValue {
  const image = device.published;
  let value: string | number | Date;
  let changedAt: number;
  switch (name) {
    case 'State':
      value = image.state;
      changedAt = image.changedAt.state;
      break;
    case 'StateCode':
      value = image.stateCode;
      changedAt = image.changedAt.state;
      break;
    case 'Position':
      value = image.position;
      changedAt = image.changedAt.position;
      break;
    case 'FaultCode':
      value = image.faultCode;
      changedAt = image.changedAt.faultCode;
      break;
    case 'SeqEcho':
      value = image.seqEcho;
      changedAt = image.changedAt.seqEcho;
      break;
    case 'ScanTime':
      // The controller time of the scan that published this image: it moves every scan, so
      // a client can tell a fresh image from a frozen one even when no value changed.
      value = new Date(image.scanTime);
      changedAt = image.scanTime;
      break;
  }
  return new DataValue({
    value: new Variant({ dataType, value }),
    sourceTimestamp: new Date(changedAt),
    statusCode: StatusCodes.Good,
  });
}
