import { execFileSync } from 'node:child_process';
import { expect, it } from 'vitest';
import { nodeArgs } from '../helpers/entry.js';
import { ROOT } from '../helpers/fixtures.js';
import { hasCommand, isRoot, realComponent } from '../helpers/real.js';
import { shellWord } from '../../src/shell-word.js';

/**
 * The daemon's unit mounts /proc with ProcSubset=pid (systemd/sluiced.service): only the
 * processes' own folders are there, and /proc/net with the rest of the system's files is not.
 * https-peer.ts reads the kernel's TCP table to see a peer that vanished without a FIN (the
 * status page's event streams, the HTTPS answers a client never reads); read from /proc/net, it
 * found no table under the unit and those bounds silently did nothing. The process here runs
 * under a /proc mounted as the unit mounts it (`mount -t proc -o subset=pid`, in a mount
 * namespace of its own) and looks for its own loopback connection in the table.
 *
 * Needs root and util-linux's unshare (a mount namespace): skipped without them.
 */

const runnable = realComponent(
  'a mount namespace (root and unshare)',
  isRoot && hasCommand('unshare'),
  'run as root with util-linux installed',
);

it.skipIf(!runnable)(
  'finds its own TCP connection in the kernel table under a /proc mounted with subset=pid',
  () => {
    const node = [process.execPath, ...nodeArgs('test/helpers/tcp-peers-process.ts')]
      .map(shellWord)
      .join(' ');
    const script = `mount -t proc -o subset=pid proc /proc && test ! -e /proc/net && exec ${node}`;
    const out = execFileSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(JSON.parse(out.trim())).toMatchObject({ table: true, found: true });
  },
);
