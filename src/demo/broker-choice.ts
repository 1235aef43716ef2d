// Which MQTT broker the demo uses: kept apart from main.ts (which starts the demo when it is
// loaded) so that the choice can be tested by itself.
import type { SluiceConfig } from '../config/config.js';

/** The demo site file's own broker URL, which the embedded broker serves. */
export const EMBEDDED_BROKER_URL = 'mqtt://127.0.0.1:1883';

/**
 * Where the demo's broker comes from: SLUICE_MQTT_URL, the site file's mqtt.url when the user
 * changed it, or the embedded broker on the site file's own URL. The site file's URL was once
 * not consulted: a ws:// (or any other) URL put there started the embedded broker on 1883
 * all the same, which nothing used, and the banner called the site's broker "(embedded broker)".
 */
export function brokerChoice(
  env: NodeJS.ProcessEnv,
  config: SluiceConfig,
): 'environment' | 'site' | 'embedded' {
  if ((env.SLUICE_MQTT_URL ?? '') !== '') return 'environment';
  const url = config.mqtt?.url;
  return url === undefined || url === EMBEDDED_BROKER_URL ? 'embedded' : 'site';
}
