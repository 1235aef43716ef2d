/**
 * Small error classes that carry a stable `code`. Adapters translate library errors into
 * these at their boundary; intakes translate codes into HTTP statuses and MQTT answers.
 */
export class SluiceError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** The journal cannot durably record a command: intakes refuse (HTTP 503, no PUBACK). */
export class JournalUnavailableError extends SluiceError {
  constructor(message: string, options?: ErrorOptions) {
    super('JOURNAL_UNAVAILABLE', message, options);
  }
}

/**
 * The journal file is damaged, not a journal at all, or one the disk fails to read (an I/O
 * error at the start's check): the daemon does not start on it, and no restart mends it
 * (sluiced exits 3, which its unit does not restart on); an operator restores it or moves it
 * aside.
 */
export class JournalDamagedError extends JournalUnavailableError {}

/** The journal file was written by a newer Sluice; opening it could corrupt it. */
export class JournalVersionError extends SluiceError {
  constructor(message: string) {
    super('JOURNAL_VERSION', message);
  }
}

/** Another daemon holds the journal (src/journal/writer-lock.ts): a second one must not start. */
export class JournalInUseError extends SluiceError {
  constructor(message: string, options?: ErrorOptions) {
    super('JOURNAL_IN_USE', message, options);
  }
}

/**
 * A stop (SIGTERM, SIGINT) was asked for while the daemon started, and the start ended where it
 * was rather than running to its end first (the journal check, src/journal/integrity.ts, or an
 * older journal's upgrade, src/journal/upgrade.ts).
 * Nothing had been started: sluiced exits 0, as after a graceful stop.
 */
export class StartStoppedError extends SluiceError {
  constructor(message: string) {
    super('START_STOPPED', message);
  }
}

/** A guarded transition found the command in another state (settled elsewhere, e.g. by an operator). */
export class JournalConflictError extends SluiceError {
  constructor(message: string) {
    super('JOURNAL_CONFLICT', message);
  }
}

export class InvalidCommandError extends SluiceError {
  readonly errors: readonly string[];
  constructor(errors: readonly string[]) {
    super('INVALID_COMMAND', `invalid command: ${errors.join('; ')}`);
    this.errors = errors;
  }
}

export class InvalidKeyError extends SluiceError {
  constructor(message: string) {
    super('MISSING_IDEMPOTENCY_KEY', message);
  }
}

export class UnknownDeviceError extends SluiceError {
  readonly device: string;
  constructor(device: string) {
    super('UNKNOWN_DEVICE', `unknown device "${device}"`);
    this.device = device;
  }
}

/**
 * The device's queue of commands not yet dispatched is full (PipelineOptions.maxQueuedPerDevice):
 * the command is refused before it is journaled, so nothing of it is kept, and a later
 * submission of its key is a new command. A stop is never refused so.
 */
export class DeviceQueueFullError extends SluiceError {
  readonly device: string;
  /** Whole seconds after which a retry may find room: one confirm timeout of the device. */
  readonly retryAfterS: number;
  constructor(device: string, queued: number, retryAfterS: number) {
    super(
      'DEVICE_QUEUE_FULL',
      `device "${device}" has ${String(queued)} commands waiting, its bound (commands.maxQueuedPerDevice); nothing was accepted or written: retry after ${String(retryAfterS)} s (a retry with this key is a new command); a stop is always taken`,
    );
    this.device = device;
    this.retryAfterS = retryAfterS;
  }
}

/** The pipeline is shutting down and takes no new commands. */
export class ShuttingDownError extends SluiceError {
  constructor() {
    super('SHUTTING_DOWN', 'the gateway is shutting down and accepts no new commands');
  }
}

export class ProfileError extends SluiceError {
  readonly errors: readonly string[];
  constructor(source: string, errors: readonly string[]) {
    super('INVALID_PROFILE', `${source}: ${errors.join('; ')}`);
    this.errors = errors;
  }
}

/** No command with this key (in this scope). */
export class UnknownCommandError extends SluiceError {
  constructor(key: string) {
    super('UNKNOWN_COMMAND', `no command with key "${key}"`);
  }
}

/** An operator action on a command that is already terminal. */
export class AlreadySettledError extends SluiceError {
  readonly state: string;
  constructor(record: {
    readonly key: string;
    readonly state: string;
    readonly code: string | null;
  }) {
    super(
      'ALREADY_SETTLED',
      `command "${record.key}" is already ${record.state}${record.code === null ? '' : ` (${record.code})`}`,
    );
    this.state = record.state;
  }
}
