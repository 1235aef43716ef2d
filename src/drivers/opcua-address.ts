import { createConnection } from 'node:net';
import { hostname } from 'node:os';
import {
  ClientTransportBase,
  MessageSecurityMode,
  OPCUAClient,
  type IClientTransportFactory,
  type ISocketLike,
  type OPCUACertificateManager,
  type SecurityPolicy,
} from 'node-opcua';

/**
 * The TCP connection to an OPC UA endpoint whose URL names its host by an IPv6 address
 * (`opc.tcp://[fe80::1]:4840`). node-opcua 2.182's own transport (ClientTCP_transport) hands
 * the socket the URL's host as the WHATWG URL parser gives it, brackets included, and the
 * connection fails with "getaddrinfo ENOTFOUND [fe80::1]": such a PLC was never reached. This
 * transport connects to the address without its brackets; everything else is node-opcua's
 * (ClientTransportBase: the HEL/ACK handshake and the watch of the link once it is up). The
 * endpoint URL is kept as configured: the HEL message gives it to the server as written, and the
 * server certificate's host name check (opcua-binding.ts) reads it.
 *
 * node-opcua takes the transport (its transportFactory option) for the secure channels of the
 * client, but not for the one it opens first to fetch the server certificate for a Sign or
 * SignAndEncrypt endpoint (findEndpoint's own client): fetchServerCertificate does that here.
 */

/**
 * The address to open a socket to for an endpoint URL whose host is an IPv6 address (written in
 * brackets), or null for any other host (node-opcua's own transport connects to those).
 */
export function ipv6SocketAddress(endpointUrl: string): { host: string; port: number } | null {
  let url: URL;
  try {
    url = new URL(endpointUrl);
  } catch {
    return null;
  }
  const host = /^\[(.*)\]$/.exec(url.hostname)?.[1];
  if (host === undefined) return null;
  // node-opcua's default port, as its own transport takes it when the URL gives none.
  return { host, port: url.port === '' ? 4840 : Number(url.port) };
}

/** node-opcua's ClientTCP_transport, connecting to an IPv6 address without its brackets. */
class Ipv6AddressTransport extends ClientTransportBase {
  connect(endpointUrl: string, callback: (err?: Error) => void): void {
    this.endpointUrl = endpointUrl;
    // As ClientTCP_transport sets it.
    this.serverUri = `urn:${hostname()}:Sample`;
    const address = ipv6SocketAddress(endpointUrl);
    if (address === null) {
      callback(new Error(`${endpointUrl} does not name its host by an IPv6 address`));
      return;
    }
    const socket = createConnection({ ...address, timeout: this.timeout });
    socket.setNoDelay(false);
    socket.setKeepAlive(true, this.timeout >> 1);
    socket.setTimeout(this.timeout >> 1, () => {
      this.forceConnectionBreak();
    });
    const removeListeners = (): void => {
      socket.removeListener('error', onError);
    };
    const onError = (error: Error): void => {
      removeListeners();
      callback(error);
    };
    const onConnect = (): void => {
      removeListeners();
      this._perform_HEL_ACK_transaction((error) => {
        if (error === undefined) {
          if (this._socket === null) {
            callback(new Error('Abandoned'));
            return;
          }
          this._install_post_connect_error_handler(endpointUrl);
          this.emit('connect');
        }
        callback(error);
      });
    };
    // ISocketLike's remoteAddress is optional without `| undefined`: a type mismatch only.
    this._install_socket(socket as ISocketLike);
    socket.once('error', onError);
    socket.once('connect', onConnect);
  }
}

/** The transport factory for an endpoint URL: null when node-opcua's own serves it. */
export function transportFactoryFor(endpointUrl: string): IClientTransportFactory | null {
  if (ipv6SocketAddress(endpointUrl) === null) return null;
  return { create: (settings) => new Ipv6AddressTransport(settings) };
}

/**
 * The certificate of the server at `endpointUrl` for a secured connection, as node-opcua's
 * client fetches it before it opens its secure channel (findEndpoint): read from the endpoint
 * descriptions over a channel with security None, that of the endpoint with `securityMode` and
 * `securityPolicy`, and checked by `store` (the trust folders, the binding to the endpoint); the
 * errors as node-opcua's. One attempt: the caller's backoff paces the next.
 */
export async function fetchServerCertificate(o: {
  readonly endpointUrl: string;
  readonly transportFactory: IClientTransportFactory;
  readonly securityMode: MessageSecurityMode;
  readonly securityPolicy: SecurityPolicy;
  readonly applicationName: string;
  readonly applicationUri: string;
  readonly store: OPCUACertificateManager;
}): Promise<Buffer> {
  const client = OPCUAClient.create({
    applicationName: o.applicationName,
    applicationUri: o.applicationUri,
    clientName: 'EndpointFetcher',
    clientCertificateManager: o.store,
    endpointMustExist: false,
    securityMode: MessageSecurityMode.None,
    connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 100 },
    transportFactory: o.transportFactory,
  });
  let certificate: Buffer | undefined;
  try {
    await client.connect(o.endpointUrl);
    for (const endpoint of await client.getEndpoints()) {
      if (
        endpoint.securityMode === o.securityMode &&
        endpoint.securityPolicyUri === o.securityPolicy
      ) {
        certificate = endpoint.serverCertificate;
      }
    }
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(
      `Fail to connect to server at ${o.endpointUrl} to collect server's certificate (${message})`,
      { cause: error },
    );
  } finally {
    await client.disconnect().catch(() => undefined);
  }
  if (certificate === undefined || certificate.length === 0) {
    throw new Error(
      `cannot find endpoint for securityMode=${MessageSecurityMode[o.securityMode]} policy = ${o.securityPolicy}`,
    );
  }
  const status = await o.store.checkCertificate(certificate);
  if (!status.isGood()) {
    throw new Error(`server Certificate verification failed with err ${status.toString()}`);
  }
  return certificate;
}
