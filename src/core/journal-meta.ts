import type { Journal } from './journal.js';

/**
 * A JSON object saved in a journal meta row, as the start reads it back: null when the text is
 * not JSON or not an object (an array, a number, null). What the object holds is the reader's
 * to check.
 */
export function parseMetaObject(text: string): Record<string, unknown> | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  return value as Record<string, unknown>;
}

/** The JSON object in the journal's meta row `key`: null when there is none or it is not one. */
export function readMetaObject(
  journal: Pick<Journal, 'readMeta'>,
  key: string,
): Record<string, unknown> | null {
  const text = journal.readMeta(key);
  return text === null ? null : parseMetaObject(text);
}
