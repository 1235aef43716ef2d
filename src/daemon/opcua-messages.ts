import { format } from 'node:util';
import { setErrorLogger, setWarningLogger } from 'node-opcua';
import type { Logger } from '../core/logger.js';

/**
 * node-opcua prints its own warnings and errors with console.log, on stdout: in `sluiced` they
 * would break the JSON log, in the demo they would land in the middle of its instructions.
 * `routeOpcuaMessages` sends them to the logger instead, as `component: "node-opcua"` lines.
 *
 * Importing this module loads node-opcua (seconds on a small gateway): import it only where an
 * OPC UA stack runs, and call routeOpcuaMessages before anything else happens, because
 * node-opcua starts the check behind W27 (below) as it loads and reports it a moment later.
 */

/**
 * NODE-OPCUA-W27 says that this Node refuses RSA PKCS#1 v1.5 decryption (CVE-2023-46809;
 * `--security-revert` would turn the fix off). Among OPC UA security policies only the obsolete
 * Basic128Rsa15 uses that padding, and Sluice offers none that does: its policies are None,
 * Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss (RSA-OAEP), the simulators'
 * server offers None, Basic256Sha256 and Aes128_Sha256_RsaOaep, and the demo connects with
 * security mode None. So the warning is kept, word for word, at level info with this note, and
 * no flag is needed.
 */
const W27_NOTE =
  'does not apply: only the Basic128Rsa15 security policy uses RSA PKCS#1 v1.5, and Sluice offers no such policy; no --security-revert flag is needed';

function isW27(text: string): boolean {
  return text.includes('NODE-OPCUA-W27') || text.includes('CVE-2023-46809');
}

export function routeOpcuaMessages(logger: Logger): void {
  const log = logger.child({ component: 'node-opcua' });
  // node-opcua calls these with its caller's file and line first, then the message.
  setWarningLogger((_where?: unknown, ...args: unknown[]) => {
    const text = format(...args);
    if (isW27(text)) log.info({ note: W27_NOTE }, text);
    else log.warn({}, text);
  });
  setErrorLogger((_where?: unknown, ...args: unknown[]) => {
    log.error({}, format(...args));
  });
}
