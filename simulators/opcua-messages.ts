import { format } from 'node:util';
import { setErrorLogger, setWarningLogger } from 'node-opcua';
import type { Logger } from 'pino';

/**
 * node-opcua prints its own warnings and errors with console.log, on stdout, where sluice-sim
 * prints one line per PLC and the control API (simulators/README.md) for the operator and for
 * the scripts and tests that read the endpoints from it. `routeOpcuaMessages` sends them to the
 * plant's pino log on stderr instead, as `component: "node-opcua"` lines.
 *
 * NODE-OPCUA-W27 (this Node refuses RSA PKCS#1 v1.5 decryption, CVE-2023-46809) concerns only
 * the Basic128Rsa15 security policy, which the simulated server does not offer (None,
 * Basic256Sha256, Aes128_Sha256_RsaOaep): it is kept word for word at level info, not warn.
 * The simulators share no code with src/, so this is their own copy of the daemon's routing.
 */
export function routeOpcuaMessages(logger: Logger): void {
  const log = logger.child({ component: 'node-opcua' });
  // node-opcua calls these with its caller's file and line first, then the message.
  setWarningLogger((_where?: unknown, ...args: unknown[]) => {
    const text = format(...args);
    if (text.includes('NODE-OPCUA-W27') || text.includes('CVE-2023-46809')) log.info(text);
    else log.warn(text);
  });
  setErrorLogger((_where?: unknown, ...args: unknown[]) => {
    log.error(format(...args));
  });
}
