/**
 * A refusal of connections on an OPC UA PLC (SimPlc.refuseConnections): the PLC's communication
 * module drops off the network for a while, as when it reboots, while the controller runs on.
 *
 * The server's sessions are closed and every secure channel is aborted (a client's socket sees
 * its connection go), and the endpoints stop listening (OPCUABaseServer.suspendEndPoints, which
 * node-opcua 2.182 documents for tests: net.Server#close), so that a connect meets
 * ECONNREFUSED. Once `ms` have passed they listen on the same port again (resumeEndPoints). A
 * client that reconnects then finds its old session gone (ActivateSession is refused) and needs
 * a new one, as from a module that rebooted.
 *
 * Unlike the Modbus front end, requests held on the link when it starts die with their session:
 * node-opcua processes a request only within the session that sent it, and that session is
 * gone (it would answer BadSessionIdInvalid). The command variables are the controller's and are
 * kept, as the Modbus command registers are.
 */
import type { Server } from 'node:net';
import type { OPCUAServer, OPCUAServerEndPoint } from 'node-opcua';
import type { RefuseConnections, SimPlc } from './plc.js';
import { Timers } from './timers.js';

/** How long to wait before listening again when the port could not be bound. */
const RELISTEN_RETRY_MS = 50;

type Listener = (...args: unknown[]) => void;

/**
 * node-opcua's OPCUAServerEndPoint.listen adds an `error` and a `listening` listener to its
 * net.Server at every call, and resumeEndPoints calls it: the eleventh refusal of one server
 * printed MaxListenersExceededWarning, and each kept two closures. The ones a resume adds are
 * removed once it has settled, leaving those of the first listen (the net.Server is the
 * endpoint's `_server`: a private member in node-opcua 2.182, pinned).
 */
function shedAddedListeners(endpoints: readonly OPCUAServerEndPoint[]): () => void {
  const kept = endpoints.flatMap((endpoint) => {
    const listener = (endpoint as unknown as { _server?: Server })._server;
    if (listener === undefined) return [];
    return (['error', 'listening'] as const).map((event) => ({
      listener,
      event,
      before: new Set(listener.listeners(event)),
    }));
  });
  return () => {
    for (const { listener, event, before } of kept) {
      for (const added of listener.listeners(event)) {
        if (!before.has(added)) listener.off(event, added as Listener);
      }
    }
  };
}

export class OpcuaRefusal {
  readonly #plc: SimPlc;
  readonly #timers = new Timers();
  #server: OPCUAServer | undefined;
  /** While connections are refused: until when (performance.now()); null while listening. */
  #refusingUntil: number | null = null;
  /** A refusal that starts once the next read of `device` is answered (afterReadOf). */
  #armed: { readonly device: string; readonly ms: number } | null = null;
  /** Refusals so far: a request held on the link across one died with its session. */
  #count = 0;

  constructor(plc: SimPlc) {
    this.#plc = plc;
  }

  /** The server whose endpoints are suspended and resumed (set once it listens). */
  attach(server: OPCUAServer): void {
    this.#server = server;
  }

  /** The plant stops: no timer outlives it, and nothing listens again. */
  detach(): void {
    this.#timers.cancelAll();
    this.#server = undefined;
    this.#refusingUntil = null;
    this.#armed = null;
  }

  /** Refusals so far (a request held on the link compares it before it is delivered). */
  get count(): number {
    return this.#count;
  }

  /** SimPlc.refuseConnections: at once, or armed on the next read of a device. */
  apply({ ms, afterReadOf }: RefuseConnections): void {
    if (afterReadOf === undefined) this.#refuse(ms);
    else this.#armed = { device: afterReadOf, ms };
  }

  /**
   * A Read request's answer was handed to its channel; `devices` are those whose variables it
   * read. An armed refusal of one of them starts now, right after the answer.
   */
  answeredRead(devices: readonly string[]): void {
    const armed = this.#armed;
    if (armed === null || !devices.includes(armed.device)) return;
    this.#armed = null;
    this.#refuse(armed.ms);
  }

  #refuse(ms: number): void {
    const server = this.#server;
    if (server === undefined) return;
    this.#count++;
    const until = performance.now() + ms;
    const refusing = this.#refusingUntil !== null;
    this.#refusingUntil = Math.max(this.#refusingUntil ?? until, until);
    // The listener first, in the same turn as the channels: no connect is accepted between.
    if (!refusing) {
      this.#plc.refusingConnections = true;
      void server.suspendEndPoints().then(
        () => {
          this.#listenAgain(server);
        },
        (err: unknown) => {
          this.#plc.log.error({ err }, 'OPC UA endpoints not suspended');
          this.#listenAgain(server);
        },
      );
    }
    for (const session of server.engine.getSessions()) {
      server.engine.closeSession(session.authenticationToken, true, 'Terminated');
    }
    for (const endpoint of server.endpoints) endpoint.abruptlyInterruptChannels();
  }

  /** Listens again once the latest refusal's end has passed (retried while the port is taken). */
  #listenAgain(server: OPCUAServer): void {
    const until = this.#refusingUntil;
    if (this.#server !== server || until === null) return;
    const left = until - performance.now();
    if (left > 0) {
      // Not over yet, or extended meanwhile (a timer may also fire a little early).
      this.#timers.after(Math.ceil(left), () => {
        this.#listenAgain(server);
      });
      return;
    }
    const shed = shedAddedListeners(server.endpoints);
    void server.resumeEndPoints().then(
      () => {
        shed();
        if (this.#server !== server) return;
        this.#refusingUntil = null;
        this.#plc.refusingConnections = false;
        this.#plc.log.info({}, 'PLC accepts connections again');
      },
      (err: unknown) => {
        shed();
        this.#plc.log.error({ err }, 'OPC UA endpoint not listening again; retrying');
        this.#timers.after(RELISTEN_RETRY_MS, () => {
          this.#listenAgain(server);
        });
      },
    );
  }
}
