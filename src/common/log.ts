/**
 * The node's log: one line per event on stderr. A JSON object per line
 * (`{"time":"<ISO 8601>","level":"info","msg":"...", ...fields}`) for collectors, or, when stderr
 * is a terminal, the same information for a person (`12:34:56.789 INFO  msg key=value ...`).
 * Levels, most severe first: error, warn, info, debug; lines below the configured level are
 * dropped before they are formatted. Events are rare (start, stop, failover, errors): nothing
 * logs per request or per write above debug.
 *
 * `log` is the process's root logger; `log.child({ node, shard, epoch })` adds fields to every
 * line it writes. `quiver serve` sets the level (--log-level) with configureLog.
 */

const SEVERITY = { error: 0, warn: 1, info: 2, debug: 3 } as const;
export type LogLevel = keyof typeof SEVERITY;
export const LOG_LEVELS = Object.keys(SEVERITY) as LogLevel[];

export type LogFields = Record<string, unknown>;

export interface Log {
  error(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  debug(msg: string, fields?: LogFields): void;
  /** A logger that adds `fields` to each line (the line's own fields win). */
  child(fields: LogFields): Log;
}

export interface LogOutput {
  level: LogLevel;
  /** Human-readable lines instead of JSON. */
  pretty: boolean;
  write(line: string): void;
}

/** Errors become their stack (JSON.stringify would make them `{}`). */
function plain(v: unknown): unknown {
  return v instanceof Error ? (v.stack ?? v.message) : v;
}

function formatPretty(time: string, level: LogLevel, msg: string, fields: LogFields): string {
  let line = `${time.slice(11, 23)} ${level.toUpperCase().padEnd(5)} ${msg}`;
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined) continue;
    const s = typeof v === 'string' ? v : JSON.stringify(v);
    line += /[\s"=]/.test(s) || s === '' ? ` ${k}=${JSON.stringify(s)}` : ` ${k}=${s}`;
  }
  return `${line}\n`;
}

/** A logger writing to `out` (read at each call: configureLog on the root applies to its children). */
export function createLog(out: LogOutput, base: LogFields = {}): Log {
  const at =
    (level: LogLevel) =>
    (msg: string, fields?: LogFields): void => {
      if (SEVERITY[level] > SEVERITY[out.level]) return;
      const all: LogFields = {};
      for (const [k, v] of Object.entries({ ...base, ...fields })) all[k] = plain(v);
      const time = new Date().toISOString();
      out.write(out.pretty ? formatPretty(time, level, msg, all) : `${JSON.stringify({ time, level, msg, ...all })}\n`);
    };
  return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug'), child: (fields) => createLog(out, { ...base, ...fields }) };
}

/** The process's output: stderr (a synchronous write for files, pipes and terminals on Linux). */
const stderr: LogOutput = { level: 'info', pretty: process.stderr.isTTY === true, write: (line) => void process.stderr.write(line) };

export const log: Log = createLog(stderr);

/** Sets the root logger's level (and whether lines are for a person); its children follow. */
export function configureLog(o: Partial<Pick<LogOutput, 'level' | 'pretty'>>): void {
  Object.assign(stderr, o);
}
