import { execFileSync } from 'node:child_process';
import { realComponent } from './real.js';

/** Runs a command (ip, tc) and throws with its stderr when it fails. */
export function run(command: string, ...args: string[]): void {
  execFileSync(command, args, { stdio: 'pipe' });
}

function netnsAndTcRunnable(): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    run('ip', 'netns', 'list');
    run('tc', '-V');
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether this machine lets a test make a network namespace of its own with a shaped veth link
 * (root, iproute2: `ip netns`, `tc`); skipped with a clear line when not, a failure under
 * SLUICE_REQUIRE_REAL=1 (realComponent).
 */
export function vethNamespaceAvailable(): boolean {
  return realComponent(
    'network namespaces and tc (root, iproute2)',
    netnsAndTcRunnable(),
    'run as root with iproute2 installed',
  );
}

/** A namespace of the test's own, joined to this one by a veth pair on a /30. */
export interface VethNamespace {
  /** The namespace's name (`ip netns exec NAME …`). */
  readonly ns: string;
  /** The veth end in this namespace, where `tc` shapes what goes towards the namespace. */
  readonly hostLink: string;
  readonly nsLink: string;
  /** This namespace's address on the pair, and the other end's. */
  readonly hostIp: string;
  readonly nsIp: string;
}

/**
 * The names and addresses of a test's namespace: `tag` names it (`sluice-TAG-PID`), `code` (a letter) its
 * links (interface names are at most 15 characters), `net` the second octet of its
 * 10.x.y.0/30 (each test file its own, so that files running at once do not meet).
 */
export function vethNamespace(tag: string, code: string, net: number): VethNamespace {
  const id = (process.pid % 250) + 1;
  return {
    ns: `sluice-${tag}-${process.pid}`,
    hostLink: `sl${code}h${process.pid}`.slice(0, 15),
    nsLink: `sl${code}n${process.pid}`.slice(0, 15),
    hostIp: `10.${net}.${id}.1`,
    nsIp: `10.${net}.${id}.2`,
  };
}

/** Makes the namespace and its veth pair, both ends up with their addresses. */
export function addVethNamespace(v: VethNamespace): void {
  run('ip', 'netns', 'add', v.ns);
  run('ip', 'link', 'add', v.hostLink, 'type', 'veth', 'peer', 'name', v.nsLink);
  run('ip', 'link', 'set', v.nsLink, 'netns', v.ns);
  run('ip', 'addr', 'add', `${v.hostIp}/30`, 'dev', v.hostLink);
  run('ip', 'link', 'set', v.hostLink, 'up');
  run('ip', '-n', v.ns, 'addr', 'add', `${v.nsIp}/30`, 'dev', v.nsLink);
  run('ip', '-n', v.ns, 'link', 'set', v.nsLink, 'up');
}

/** Removes the pair (if the namespace's removal has not taken it already) and the namespace. */
export function removeVethNamespace(v: VethNamespace): void {
  try {
    run('ip', 'link', 'del', v.hostLink);
  } catch {
    // Gone with the namespace already.
  }
  run('ip', 'netns', 'del', v.ns);
}
