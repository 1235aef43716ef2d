/** Errors of the simulated plant. Each carries a stable `code` the control API returns. */

export class SimError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

export interface PlantFileIssue {
  /** Dotted path into the plant file, e.g. `plcs.modbus-plc.devices.inlet-valve.base`. */
  path: string;
  message: string;
}

/** The plant file cannot be read, parsed or validated; `issues` lists every problem at once. */
export class PlantFileError extends SimError {
  readonly issues: readonly PlantFileIssue[];

  constructor(source: string, issues: readonly PlantFileIssue[], options?: ErrorOptions) {
    const lines = issues.map((issue) => `  ${issue.path || '(root)'}: ${issue.message}`);
    super('INVALID_PLANT', `invalid plant ${source}:\n${lines.join('\n')}`, options);
    this.issues = issues;
  }
}

export class UnknownDeviceError extends SimError {
  constructor(id: string) {
    super('UNKNOWN_DEVICE', `no device "${id}" in this plant`);
  }
}

export class UnknownPlcError extends SimError {
  constructor(id: string) {
    super('UNKNOWN_PLC', `no PLC "${id}" in this plant`);
  }
}

export class UnknownFaultError extends SimError {
  constructor(kind: string, target: string) {
    super('UNKNOWN_FAULT', `"${kind}" is not a fault that can be injected on ${target}`);
  }
}

export class InvalidFaultError extends SimError {
  readonly issues: readonly PlantFileIssue[];

  constructor(kind: string, issues: readonly PlantFileIssue[]) {
    super(
      'INVALID_FAULT',
      `invalid parameters for fault "${kind}": ${issues.map((i) => `${i.path || '(body)'}: ${i.message}`).join('; ')}`,
    );
    this.issues = issues;
  }
}

/** E.g. a Modbus exception on an OPC UA PLC. */
export class FaultNotApplicableError extends SimError {
  constructor(kind: string, target: string, why: string) {
    super('FAULT_NOT_APPLICABLE', `fault "${kind}" does not apply to ${target}: ${why}`);
  }
}

export class InvalidRequestError extends SimError {
  constructor(message: string) {
    super('INVALID_REQUEST', message);
  }
}
