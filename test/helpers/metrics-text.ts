import type { Metrics } from '../../src/daemon/metrics.js';

/** sluice_command_confirm_seconds' sum and count for v1, as /metrics renders them. */
export async function confirmSeconds(metrics: Metrics): Promise<{ sum: number; count: number }> {
  const text = await metrics.registry.metrics();
  const value = (name: string): number => {
    const line = text.split('\n').find((l) => l.startsWith(`${name}{device="v1"}`));
    return line === undefined ? Number.NaN : Number(line.slice(line.lastIndexOf(' ') + 1));
  };
  return {
    sum: value('sluice_command_confirm_seconds_sum'),
    count: value('sluice_command_confirm_seconds_count'),
  };
}
