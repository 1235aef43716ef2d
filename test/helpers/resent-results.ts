import type { CommandRecord } from '../../src/core/journal.js';
import type { ResultSink } from '../../src/intake/mqtt-result-delivery.js';
import type { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { issuerCommand } from './new-command.js';

/**
 * For the tests of the results published again from the journal (mqtt-result-delivery.ts): a
 * settlement made through the journal's own API, and a sink that stands for the publisher.
 */

/** Claims `key` for `valve` 10 ms before `at`, and settles it `rejected` STALE_COMMAND at `at`. */
export function settleStale(j: SqliteJournal, key: string, at: number): void {
  j.claim(issuerCommand(key, 'valve', at - 10));
  j.settle({ scope: 'plant', key }, 'accepted', {
    to: 'rejected',
    code: 'STALE_COMMAND',
    faultCode: null,
    observed: null,
    detail: 'test',
    at,
    intake: 'https',
  });
}

/**
 * A sink in the publisher's place: it acknowledges every result at once, and `published` holds
 * the keys it was handed, in order.
 */
export function acknowledgingSink(): { readonly sink: ResultSink; readonly published: string[] } {
  const published: string[] = [];
  return {
    sink: {
      publishResult: (record: CommandRecord) => {
        published.push(record.key);
        return Promise.resolve('acknowledged');
      },
      flush: () => Promise.resolve(),
      linked: () => true,
    },
    published,
  };
}
