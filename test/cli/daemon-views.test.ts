import { describe, expect, it } from 'vitest';
import { connectedText } from '../../src/cli/daemon-views.js';

/** `sluicectl devices`: the connected column tells a refused device from a healthy one. */
describe('sluicectl devices: connected', () => {
  const base = { lastGoodReadAt: null, errorCount: 0, clockReadError: null } as const;

  it('says yes for a connection whose reads of the device succeed', () => {
    expect(connectedText({ ...base, connected: true, lastError: null, readError: null })).toBe(
      'yes',
    );
  });

  it("names the device's own read failure on a connection that is up", () => {
    expect(
      connectedText({
        ...base,
        connected: true,
        lastError: 'mb: read 500+8: Modbus exception 0x02 (illegal data address)',
        readError: {
          message: 'mb: read 500+8: Modbus exception 0x02 (illegal data address)',
          since: '2026-12-01T12:00:00.000Z',
          lastAt: '2026-12-01T12:00:07.000Z',
          failures: 7,
        },
      }),
    ).toBe('yes, reads fail (7): mb: read 500+8: Modbus exception 0x02 (illegal data address)');
  });

  it('says no with the connection error when the PLC is not reached', () => {
    expect(
      connectedText({
        ...base,
        connected: false,
        lastError: 'mb: connect to 127.0.0.1:5020 failed: connect ECONNREFUSED',
        readError: null,
      }),
    ).toBe('no: mb: connect to 127.0.0.1:5020 failed: connect ECONNREFUSED');
  });
});
