import { ConfigError, type SluiceConfig } from '../config/config.js';
import type { OpenPage } from '../core/journal.js';
import { readMetaObject } from '../core/journal-meta.js';
import { modbusController, opcuaNamespace } from '../drivers/inventory-schema.js';

/**
 * A device renamed across a restart while the journal holds open commands of its former id.
 *
 * Everything the daemon knows of a valve's commands is journaled under the device's id: its
 * open commands, the writes they sent and their sequence numbers. A device whose id changed
 * while some of them were open is, to the next start, a new device on the same PLC registers:
 * the former id's open commands have no worker (they stay stuck until resolved), and the new
 * id's first command is written without waiting for, or knowing of, the write one of them may
 * have sent to that very valve (I1, I2). The start refuses that configuration, naming both ids
 * and what to do, rather than run it silently.
 *
 * The journal does not hold the configuration, so each start records there (meta table) the
 * address of every configured device: its PLC endpoint and its registers (Modbus: host, port,
 * unit, first register; OPC UA: endpoint, namespace, object). A former id's address is kept
 * for as long as the journal holds open commands of it, so that a rename a later restart makes
 * is still recognised. A device renamed with no open command of its former id starts, and
 * that id's address stays recorded while a configured device has it: the valve's last write
 * may be journaled under the former id (an operator resolved its command while the controller
 * held it), and recovery looks it up there too (formerIds; previous-write.ts, earlierLastWrite).
 * A journal written before this record existed knows no former address:
 * its first start cannot tell a rename from a new device (docs/configuration.md says so).
 */

export const DEVICE_ADDRESSES_META = 'device-addresses';

/** The journal's part this check reads and writes (SqliteJournal). */
export interface DeviceAddressJournal {
  openDevices(): string[];
  openOfDevice(device: string, afterId: number, limit: number): OpenPage;
  readMeta(key: string): string | null;
  writeMeta(key: string, value: string): void;
}

/**
 * Where a configured device's writes land: its PLC's endpoint and its registers or object. The
 * endpoint is the one the configuration check compares devices by (a host or endpoint URL in
 * one spelling for all that reach one controller): a device renamed while its PLC entry was
 * written another way (`::ffff:10.0.0.20` for `10.0.0.20`, a URL with a trailing "/") is still
 * at the address recorded.
 */
export function deviceAddress(config: SluiceConfig, id: string): string | null {
  const device = config.devices[id];
  const plc = device === undefined ? undefined : config.plcs[device.plc];
  if (device === undefined || plc === undefined) return null;
  switch (plc.protocol) {
    case 'modbus':
      return `modbus ${modbusController(plc)}, registers from ${device.base ?? 0}`;
    case 'opcua':
      return `opcua ${opcuaNamespace(plc)}, object ${device.object ?? id}`;
  }
}

/**
 * A recorded address in deviceAddress's spelling. An earlier Sluice recorded the host or the
 * endpoint URL as written in the configuration: read as written, a rename made together with
 * the upgrade and another spelling of the PLC's address would not be recognised.
 */
function respelled(address: string): string {
  const modbus = /^modbus (.+):(\d+) unit (\d+), registers from (\d+)$/.exec(address);
  if (modbus !== null) {
    const [, host = '', port = '', unitId = '', base = ''] = modbus;
    const controller = modbusController({ host, port: Number(port), unitId: Number(unitId) });
    return `modbus ${controller}, registers from ${base}`;
  }
  const opcua = /^opcua (\S+) namespace (.*), object (.*)$/s.exec(address);
  if (opcua !== null) {
    const [, endpointUrl = '', namespaceUri = '', object = ''] = opcua;
    return `opcua ${opcuaNamespace({ endpointUrl, namespaceUri })}, object ${object}`;
  }
  return address;
}

function recorded(journal: Pick<DeviceAddressJournal, 'readMeta'>): Record<string, string> {
  const value = readMetaObject(journal, DEVICE_ADDRESSES_META) ?? {};
  return Object.fromEntries(
    Object.entries(value).filter((e): e is [string, string] => typeof e[1] === 'string'),
  );
}

const NAMED_KEYS = 5;

/**
 * What the journal's record makes of this configuration, reading only (`sluiced --check` as
 * the start): an error for each configured device that has the address of a former id with
 * open commands in the journal, and the addresses to record for the next start (this
 * configuration's, and those of former ids that still have open commands).
 */
export function renamedDeviceErrors(
  journal: Omit<DeviceAddressJournal, 'writeMeta'>,
  config: SluiceConfig,
): {
  errors: string[];
  kept: Record<string, string>;
  before: Record<string, string>;
  formerIds: Record<string, string[]>;
} {
  const before = recorded(journal);
  const openDevices = journal.openDevices();
  const open = openDevices.filter((d) => !Object.hasOwn(config.devices, d));
  const errors: string[] = [];
  const kept: Record<string, string> = {};
  for (const former of open) {
    const recordedAddress = Object.hasOwn(before, former) ? before[former] : undefined;
    if (recordedAddress === undefined) continue;
    const address = respelled(recordedAddress);
    kept[former] = address;
    const renamed = Object.keys(config.devices).filter(
      (id) => deviceAddress(config, id) === address,
    );
    if (renamed.length === 0) continue;
    const page = journal.openOfDevice(former, 0, NAMED_KEYS + 1);
    const refs = page.refs.slice(0, NAMED_KEYS);
    const keys = refs.map((r) => `${r.key} (identity ${r.scope}, ${r.state})`).join(', ');
    const more = page.refs.length > NAMED_KEYS || page.next !== null ? ', and more' : '';
    const sent = page.refs.some((r) => r.state === 'dispatched')
      ? ' A dispatched one may have written to the valve.'
      : '';
    for (const id of renamed) {
      errors.push(
        `devices.${id}: has the address of device "${former}" (${address}), and the journal holds open commands of "${former}": ${keys}${more}.${sent} Under another id they would never be settled, and "${id}" would write to the valve knowing nothing of them. Start with the device named "${former}" again until they are settled (recovery reads the valve; \`sluicectl list --device ${former}\` shows them; or \`sluicectl resolve KEY --scope IDENTITY --as failed --reason "…"\`), then rename it`,
      );
    }
  }
  // A former id with no open command whose address a configured device has: renamed, and
  // allowed. Its last write may still reach the valve (an operator resolved its command while
  // the controller held it): the new id's first command waits for it as for its own
  // (previous-write.ts, earlierLastWrite). Its address stays recorded while the rename stands,
  // so that a later restart still finds that write when the new id has dispatched nothing.
  const formerIds: Record<string, string[]> = {};
  const withOpen = new Set(openDevices);
  for (const [former, recordedAddress] of Object.entries(before)) {
    if (Object.hasOwn(config.devices, former) || withOpen.has(former)) continue;
    const address = respelled(recordedAddress);
    const renamed = Object.keys(config.devices).filter(
      (id) => deviceAddress(config, id) === address,
    );
    if (renamed.length === 0) continue;
    kept[former] = address;
    for (const id of renamed) (formerIds[id] ??= []).push(former);
  }
  for (const id of Object.keys(config.devices)) {
    const address = deviceAddress(config, id);
    if (address !== null) kept[id] = address;
  }
  return { errors, kept, before, formerIds };
}

/** The heading of the refusal, at start and under `sluiced --check`. */
export const RENAMED_DEVICES_HEADING = 'configuration against the journal';

/**
 * Throws ConfigError when a configured device has the address of a former id with open
 * commands in the journal; otherwise records this configuration's addresses (and those of
 * former ids that still have open commands, or whose address a configured device has) for the
 * next start, and returns the former ids of each renamed device (PipelineOptions.formerDeviceIds).
 */
export function checkRenamedDevices(
  journal: DeviceAddressJournal,
  config: SluiceConfig,
  // A record that cannot be written (a full disk) does not stop the start: the daemon fails
  // closed on such a journal and says so; the next start that can write records the addresses.
  recordFailed: (error: unknown) => void,
): Record<string, string[]> {
  const { errors, kept, before, formerIds } = renamedDeviceErrors(journal, config);
  if (errors.length > 0) throw new ConfigError(RENAMED_DEVICES_HEADING, errors);
  const text = JSON.stringify(kept);
  if (text === JSON.stringify(before)) return formerIds;
  try {
    journal.writeMeta(DEVICE_ADDRESSES_META, text);
  } catch (error) {
    recordFailed(error);
  }
  return formerIds;
}
