// Which MQTT broker the demo uses: kept apart from main.ts (which starts the demo when it is
// loaded) so that the choice can be tested by itself.
import type { SluiceConfig } from '../config/config.js';

/** The demo site file's own broker URL, which the embedded broker serves. */
export const EMBEDDED_BROKER_URL = 'mqtt://127.0.0.1:1883';

/**
 * Where the demo's broker comes from: SLUICE_MQTT_URL, the site file's mqtt.url when the user
 * changed it, or the embedded broker on the site file's own URL; none when the site file has no
 * mqtt section (the daemon then has no MQTT intake). The site file's URL was once not consulted:
 * a ws:// (or any other) URL put there started the embedded broker on 1883 all the same, which
 * nothing used, and the banner called the site's broker "(embedded broker)"; and a site file
 * without an mqtt section had the embedded broker started, and MQTT commands printed, that
 * reached no daemon.
 */
export function brokerChoice(
  env: NodeJS.ProcessEnv,
  config: SluiceConfig,
): 'environment' | 'site' | 'embedded' | 'none' {
  // The configuration refuses SLUICE_MQTT_URL without an mqtt section: there is one here.
  if (config.mqtt === undefined) return 'none';
  if ((env.SLUICE_MQTT_URL ?? '') !== '') return 'environment';
  return config.mqtt.url === EMBEDDED_BROKER_URL ? 'embedded' : 'site';
}
