/**
 * A word as a POSIX shell reads it back: as it is when it holds only name and path characters,
 * else in single quotes. For the command lines Sluice prints for a user to run (the demo's
 * first commands, sluicectl's retry line).
 */
export function shellWord(word: string): string {
  return /^[\w./:@%+,=-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}
