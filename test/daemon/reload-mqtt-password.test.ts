import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { SluiceConfig } from '../../src/config/config.js';
import { reloadTlsFiles } from '../../src/daemon/tls-reload.js';
import { tempDir } from '../helpers/fixtures.js';
import { intakeConfig } from '../helpers/mosquitto.js';
import { mosquittoAvailable, timed, until, useMqttSite } from '../helpers/mqtt-site.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * The MQTT password rotated on disk, then a reload (SIGHUP, `systemctl reload sluiced`: the
 * daemon's handler is reloadTlsFiles, called here on the real intake). mqtt.passwordFile was read
 * at start only: once the broker took the new password only, the gateway's next connection (a
 * broker restart, a network blip) was refused with the old one, and the gateway stayed
 * disconnected until a restart of sluiced. Now the reload reads it again for the next
 * connection, and the connection that is up stays. A real Mosquitto with a password file
 * (mosquitto_passwd), the real intake, the simulated plant; ground truth: the broker's
 * connections of the gateway's client id and the simulator's writes.
 */

const available = mosquittoAvailable();
const OLD = 'mqtt-password-before-rotation';
const NEW = 'mqtt-password-after-rotation';

describe.skipIf(!available)('mqtt.passwordFile rotated, then a reload', () => {
  const { dir, cleanup } = tempDir('sluice-mqtt-password-');
  afterAll(cleanup);
  const brokerPasswords = join(dir, 'broker.passwd');
  if (available) execFileSync('mosquitto_passwd', ['-c', '-b', brokerPasswords, 'gw', OLD]);
  const site = useMqttSite({ settings: [`password_file ${brokerPasswords}`] }, { opcua: false });

  it('the next connection uses the new password; the one up stays; a file not usable keeps it', async () => {
    const gateway = 'gwpassword';
    const clientId = `sluice-${gateway}`;
    const prefix = `sluice/${gateway}`;
    const passwordFile = join(dir, 'gateway.password');
    writeFileSync(passwordFile, `${OLD}\n`, { mode: 0o600 });
    const mqtt = { username: 'gw', passwordFile };
    const { logger, lines } = recordingLogger();
    const intake = site.intake({
      gatewayId: gateway,
      config: mqtt,
      logger,
      reconnect: { minMs: 100, maxMs: 300 },
    });
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    const config = {
      identities: {},
      mqtt: intakeConfig(site.broker.url, mqtt),
    } as unknown as SluiceConfig;
    const reload = (env: NodeJS.ProcessEnv = {}): ReturnType<typeof reloadTlsFiles> =>
      reloadTlsFiles(config, { https: null, mqtt: intake }, logger, env);

    const { plant, observer, writes } = await site.plantSide(prefix);
    const before = writes();
    const command = async (): Promise<void> => {
      const key = randomUUID();
      const action = site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';
      await plant.publish(`${prefix}/cmd/v1`, timed({ action, key, ttlMs: 60_000 }));
      const result = await observer.waitFor((m) => m.json().key === key, 10_000, 'result');
      expect(result.json()).toMatchObject({ state: 'confirmed' });
    };

    // Rotated on the gateway's side first (written beside, renamed over), then reloaded.
    writeFileSync(`${passwordFile}.new`, `${NEW}\n`, { mode: 0o600 });
    renameSync(`${passwordFile}.new`, passwordFile);
    const connections = site.broker.connectionsOf(clientId);
    expect(reload().mqttPassword).toBe('replaced');
    // The connection that was up carries a command, and the broker accepted no other.
    await command();
    expect(site.broker.connectionsOf(clientId)).toBe(connections);
    expect(intake.connected()).toBe(true);

    // The broker takes the new password only, from its restart on: the gateway connects again.
    await site.broker.stop();
    execFileSync('mosquitto_passwd', ['-b', brokerPasswords, 'gw', NEW]);
    await site.broker.restart();
    await until(
      () => (site.broker.connectionsOf(clientId) > connections ? true : undefined),
      10_000,
      'a connection accepted',
    );
    await until(() => (intake.connected() ? true : undefined), 10_000, 'connected again');
    await command();
    expect(writes()).toBe(before + 2);

    // A file the reload cannot use keeps the password in use, and says so, naming the file.
    writeFileSync(passwordFile, '\n');
    expect(reload().mqttPassword).toBe('kept');
    const refused = lines.find((l) => String(l.msg).startsWith('reload: mqtt.passwordFile not'));
    expect(refused).toMatchObject({ file: passwordFile });
    expect(String(refused?.msg)).toContain('it is empty');
    // Under $CREDENTIALS_DIRECTORY (systemd's copy, made at start): not read again, and said.
    const warned = lines.length;
    expect(reload({ CREDENTIALS_DIRECTORY: dir }).mqttPassword).toBe('credential');
    const said = lines
      .slice(warned)
      .find((l) => String(l.msg).startsWith('reload: token and password files are read at'));
    expect(said).toMatchObject({ files: [`mqtt.passwordFile: ${passwordFile}`] });
    // Never the password in the log.
    const log = JSON.stringify(lines);
    expect(log).not.toContain(OLD);
    expect(log).not.toContain(NEW);
    await intake.stop();
  }, 60_000);
});
