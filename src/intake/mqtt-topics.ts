/**
 * The MQTT topic tree of one gateway (SPEC §5), under `sluice/{gatewayId}`:
 * `cmd/{device}` (in), `result/{device}`, `state/{device}` and `status` (out).
 */
export class GatewayTopics {
  readonly prefix: string;
  readonly commandFilter: string;
  readonly status: string;
  private readonly commandPrefix: string;

  constructor(gatewayId: string) {
    if (gatewayId.length === 0 || hasAny(gatewayId, ['/', '+', '#', '\u0000'])) {
      throw new Error(`gatewayId "${gatewayId}" cannot be an MQTT topic level`);
    }
    this.prefix = `sluice/${gatewayId}`;
    this.commandPrefix = `${this.prefix}/cmd/`;
    this.commandFilter = `${this.prefix}/cmd/+`;
    this.status = `${this.prefix}/status`;
  }

  command(device: string): string {
    return `${this.commandPrefix}${device}`;
  }

  result(device: string): string {
    return `${this.prefix}/result/${device}`;
  }

  state(device: string): string {
    return `${this.prefix}/state/${device}`;
  }

  /** The device a command topic names; null when the topic is not a command topic of ours. */
  commandDevice(topic: string): string | null {
    if (!topic.startsWith(this.commandPrefix)) return null;
    const device = topic.slice(this.commandPrefix.length);
    return device.length === 0 || device.includes('/') ? null : device;
  }

  /**
   * Whether a requester's MQTT 5 Response Topic may be published to. Wildcards make a PUBLISH
   * malformed (the broker would drop the connection, MQTT 5 §3.3.2.1), `$` topics belong to
   * the broker, and nothing under our own prefix may be written by a requester's choice:
   * a result must not be able to pose as a command, a state or the status.
   */
  isResponseTopic(topic: string): boolean {
    return (
      topic.length > 0 &&
      Buffer.byteLength(topic) <= 65_535 &&
      !hasAny(topic, ['+', '#', '\u0000']) &&
      !topic.startsWith('$') &&
      topic !== this.prefix &&
      !topic.startsWith(`${this.prefix}/`)
    );
  }
}

function hasAny(text: string, characters: readonly string[]): boolean {
  return characters.some((c) => text.includes(c));
}
