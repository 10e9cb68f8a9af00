/**
 * Command-line flags of `quiver serve` and of every `quiver bench`: node:util's parseArgs, strict
 * (an unknown flag, a flag without its value or a value given to a switch is a UsageError that
 * names the flag; the CLI prints it and exits 2), long flags only, plus typed readers of the values.
 * Each command declares its flags once (`CommandSpec.flags`) and documents every one of them in
 * its usage text (test/cli.test.ts checks).
 */
import { parseArgs } from 'node:util';
import { QuiverError } from '../errors';

/** Bad command-line input: the command line, not the data, is wrong (exit code 2). */
export class UsageError extends QuiverError {
  constructor(message: string) {
    super('INVALID_ARGUMENT', message);
    this.name = 'UsageError';
  }
}

/** A flag takes a value (`--n 5`, `--n=5`) or is a switch (`--help`). */
export type FlagSpec = Record<string, { type: 'string' | 'boolean' }>;

export interface CommandSpec {
  /** The --help text: every flag of `flags` appears in it. */
  usage: string;
  flags: FlagSpec;
  /** Whether the command takes arguments that are not flags (none does yet). */
  positionals?: boolean;
}

export interface Flags {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
}

/**
 * Parses argv against the command's flags and --help. Returns null after printing the usage when
 * --help is given; throws UsageError for anything the spec does not allow.
 */
export function parseCommandLine(argv: string[], spec: CommandSpec): Flags | null {
  let parsed: { values: Record<string, string | boolean | undefined>; positionals: string[] };
  try {
    parsed = parseArgs({ args: argv, options: { ...spec.flags, help: { type: 'boolean' } }, strict: true, allowPositionals: spec.positionals ?? false });
  } catch (e) {
    const unknown = /^Unknown option '([^']+)'/.exec((e as Error).message);
    throw new UsageError(unknown ? `unknown flag ${unknown[1]}` : (e as Error).message.replace(/\s*\n\s*/g, ' '));
  }
  if (parsed.values.help) {
    process.stdout.write(spec.usage);
    return null;
  }
  return parsed;
}

export function stringFlag(f: Flags, name: string, fallback: string): string;
export function stringFlag(f: Flags, name: string): string | undefined;
export function stringFlag(f: Flags, name: string, fallback?: string): string | undefined {
  const v = f.values[name];
  return typeof v === 'string' ? v : fallback;
}

/** A whole number at least `min`. */
export function intFlag(f: Flags, name: string, fallback: number, min = Number.MIN_SAFE_INTEGER): number {
  const v = stringFlag(f, name);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (v.trim() === '' || !Number.isSafeInteger(n) || n < min) throw new UsageError(`--${name} must be a whole number${min > Number.MIN_SAFE_INTEGER ? ` >= ${min}` : ''}, got '${v}'`);
  return n;
}

/** A comma-separated list of numbers. */
export function listFlag(f: Flags, name: string, fallback: number[]): number[] {
  const v = stringFlag(f, name);
  if (v === undefined) return fallback;
  return v.split(',').map((s) => {
    const n = Number(s);
    if (s.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${name}: '${s}' is not a number`);
    return n;
  });
}

/** One of the allowed values. */
export function choiceFlag<T extends string>(f: Flags, name: string, choices: readonly T[], fallback: T): T {
  const v = stringFlag(f, name, fallback);
  if (!(choices as readonly string[]).includes(v)) throw new UsageError(`--${name} must be one of ${choices.join(', ')}, got '${v}'`);
  return v as T;
}
