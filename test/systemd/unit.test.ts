import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { ROOT } from '../helpers/fixtures.js';
import { hasCommand, realComponent } from '../helpers/real.js';

const UNIT = join(ROOT, 'systemd', 'sluiced.service');
const analyze = realComponent(
  'systemd-analyze',
  hasCommand('systemd-analyze'),
  'apt-get install systemd',
);

it.runIf(analyze)('the unit is hardened: systemd-analyze security scores it low', () => {
  const r = spawnSync('systemd-analyze', ['security', '--offline=yes', UNIT], { encoding: 'utf8' });
  const match = /Overall exposure level for sluiced\.service: ([\d.]+)/.exec(r.stdout);
  expect(match, r.stdout + r.stderr).not.toBeNull();
  expect(Number(match![1])).toBeLessThanOrEqual(2.0);
});

it('runs the built daemon unprivileged, with its journal under its StateDirectory', () => {
  const unit = readFileSync(UNIT, 'utf8');
  expect(unit).toMatch(/^ExecStart=.*dist\/src\/daemon\/cli\.js --config /m);
  expect(unit).toMatch(/^DynamicUser=yes$/m);
  expect(unit).toMatch(/^StateDirectory=sluice$/m);
  expect(unit).toMatch(/^KillSignal=SIGTERM$/m);
  // V8's JIT needs writable executable memory: this option kills Node.
  expect(unit).not.toMatch(/^MemoryDenyWriteExecute=/m);
});
