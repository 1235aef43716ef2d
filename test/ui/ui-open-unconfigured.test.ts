import { afterAll, beforeAll, expect, it } from 'vitest';
import { sluicectl } from '../cli/helpers.js';
import { call, login, ORPHAN, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * Why the status page says an open command of a device no longer in the configuration is open.
 * The daemon has no worker for such a device: nothing runs its commands, in turn or otherwise.
 * The second of two such commands was said to "wait behind" the first "on its device, which runs
 * one command at a time", as if it would run once the first had. Now it is said as the sweep
 * says it, and `sluicectl show` says the same. The real daemon and its status page over TLS,
 * its journal seeded with the two commands before the start, sluicectl (a process) on the same
 * site file; ground truth: what the page's API answers a logged-in operator, and what sluicectl
 * prints.
 */

const LATER = 'later-orphan';

let site: UiSite;

beforeAll(async () => {
  // Accepted 30 s before the start, its deadline ten minutes after it: not stuck in any run,
  // however loaded the machine (a start alone may take seconds).
  site = await startUiSite({
    mqtt: false,
    opcua: false,
    laterOrphans: [{ key: LATER, inMs: 600_000 }],
  });
}, 60_000);

afterAll(async () => {
  await site.stop();
});

it('says a queued command of a device not in the configuration has no worker, not what it waits behind', async () => {
  const { cookie } = await login(site, TOKENS.ops);
  const answer = await call(site, 'GET', '/ui/api/commands', { cookie });
  expect(answer.status, answer.body).toBe(200);
  const open = answer.json<{
    open: { key: string; device: string; stuck: boolean; why: string }[];
  }>().open;
  const later = open.find((c) => c.key === LATER);
  expect(later).toMatchObject({ device: ORPHAN.device, stuck: false });
  expect(later?.why).toMatch(/^its device is not in the configuration: no worker can settle it/);
  expect(later?.why).not.toContain('waits behind');
});

it('is said by sluicectl show to wait for nothing, as the page says, not what it waits behind', async () => {
  const show = await sluicectl(
    ['--config', site.configPath, '--no-color', 'show', '--scope', ORPHAN.scope, LATER],
    { timeoutMs: 30_000 },
  );
  expect(show.code, show.stderr).toBe(0);
  expect(show.stdout).toMatch(
    /^ {2}waiting for {2}nothing: its device is not in the configuration: no worker can settle it; an operator resolves it: sluicectl .*resolve --as failed --reason "…" /m,
  );
  expect(show.stdout).not.toContain('waits behind');
  expect(show.stdout).not.toContain('runs one command at a time');
}, 60_000);

it('has sluicectl show advise no reverify for a stuck command of such a device (no readback can settle it), only resolve', async () => {
  const show = await sluicectl(
    ['--config', site.configPath, '--no-color', 'show', '--scope', ORPHAN.scope, ORPHAN.key],
    { timeoutMs: 30_000 },
  );
  expect(show.code, show.stderr).toBe(0);
  const outcome = /^ {2}outcome {2,}(.*)$/m.exec(show.stdout)?.[1];
  expect(outcome, show.stdout).toMatch(
    /^STUCK: still accepted, .*settle it: sluicectl .*resolve --as failed --reason "…" /,
  );
  expect(outcome).not.toContain('reverify');
  // Asked, the daemon reads nothing for it: the advice left out is one that could not work.
  const reverify = await sluicectl(
    ['--config', site.configPath, '--no-color', 'reverify', '--scope', ORPHAN.scope, ORPHAN.key],
    { timeoutMs: 30_000 },
  );
  expect(reverify.stdout + reverify.stderr).toContain(
    'is not in the configuration: no readback can settle it',
  );
}, 60_000);
