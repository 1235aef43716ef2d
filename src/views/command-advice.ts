import type { DeviceProfile } from '../core/profile.js';
import type { CommandStory } from './command-story.js';

/**
 * What an operator can do about a command its device refused for the state it was in, or that
 * ended DEVICE_FAULT with the device gone to its fault state: the outcome's detail names the
 * rule ("move is not a legal transition from FAULT") or the fault code, not its meaning nor the
 * way out of it. From the readback the outcome was judged on and the device's profile (its fault
 * codes, and the actions its table takes in that state). Null for any other outcome, or without
 * the profile. `sluicectl show` prints it as `what to do`, and the status page's command page
 * shows it too.
 */
export function refusalAdvice(
  s: CommandStory,
  profile: DeviceProfile | null,
  /** How the command lines it gives begin (sluicectl's sluicectlWords: with its --config). */
  sluicectl = 'sluicectl',
): string | null {
  if (profile === null || s.outcome === null) return null;
  const seen = s.readbacks.find((r) => r.when === 'at settlement')?.observation ?? null;
  if (s.outcome.code === 'LOCAL_MODE') {
    return (
      `the device is in ${profile.localState}: switched to local (hand) control at its panel, ` +
      'it takes no remote command; once it is switched back to remote, send the command again'
    );
  }
  // Refused in FAULT, or sent to FAULT by the controller as it carried the command out (a
  // travel timeout, 0x81): either way the device takes no command now but the one that clears
  // it, which is what a person has to do next.
  const faulted = s.outcome.code === 'DEVICE_FAULT';
  if (!faulted && s.outcome.code !== 'ILLEGAL_TRANSITION') return null;
  if (seen?.state !== profile.faultState) return null;
  const code = seen.faultCode;
  const meaning =
    code === null
      ? undefined
      : Object.entries(profile.controller.faultCodes ?? {}).find(
          ([known]) => known.toLowerCase() === code.toLowerCase(),
        )?.[1];
  const fault =
    code === null ? '' : ` (fault ${code}${meaning === undefined ? '' : `: ${meaning}`})`;
  const clears = profile.actions.filter(
    (a) => profile.table[a]?.[profile.faultState]?.effect === 'write',
  );
  const way =
    clears.length === 0
      ? 'it takes no command that clears it: it is cleared at the controller'
      : `once its cause is fixed, clear it: ${clears.map((a) => `${sluicectl} send ${s.device} ${a}`).join(', or ')}; then send the command again${faulted ? ' if it is still wanted' : ''}`;
  return faulted
    ? `the device went to ${profile.faultState}${fault} carrying out this command; ${way}`
    : `the device is in ${profile.faultState}${fault}, where it refuses ${s.action}; ${way}`;
}
