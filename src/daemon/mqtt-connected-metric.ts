import { Gauge, type Registry } from 'prom-client';

/**
 * `sluice_mqtt_connected`: 1 while the MQTT intake is connected to the broker with its command
 * subscription granted (what /readyz's mqtt check asks), 0 otherwise — a broker away, a refused
 * CONNECT (a wrong password), a refused or unanswered command subscription. Read at each scrape.
 * Registered only when MQTT is configured. Until 2026-12-06 no metric told a scraper that the
 * gateway heard no command: only /readyz and the log did.
 */
export function registerMqttConnected(registry: Registry, connected: () => boolean): void {
  new Gauge({
    name: 'sluice_mqtt_connected',
    help: 'Whether the MQTT intake is connected to the broker with its command subscription granted (1) or not (0): commands are heard only at 1.',
    registers: [registry],
    collect() {
      this.set(connected() ? 1 : 0);
    },
  });
}
