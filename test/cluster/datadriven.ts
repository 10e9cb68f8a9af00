/**
 * Data-driven test files in the style of etcd-io/raft's testdata (cockroachdb/datadriven):
 *
 *   # comment lines and blank lines between cases
 *   command arg key=value
 *   ----
 *   expected output (ends at a blank line)
 *
 * runFile runs every case through `run` and returns the file as it should read; with
 * QUIVER_REWRITE=1 the caller writes that back (review the diff before committing it).
 */
export interface Case {
  line: number;
  command: string;
  expected: string;
}

export function parseFile(text: string): { cases: Case[]; prelude: string[] } {
  const lines = text.split('\n');
  const cases: Case[] = [];
  let i = 0;
  while (i < lines.length) {
    const l = lines[i];
    if (l.trim() === '' || l.startsWith('#')) {
      i++;
      continue;
    }
    const start = i;
    const cmd: string[] = [];
    while (i < lines.length && lines[i] !== '----') cmd.push(lines[i++]);
    if (i >= lines.length) throw new Error(`line ${start + 1}: command without ----`);
    i++;
    const out: string[] = [];
    while (i < lines.length && lines[i] !== '') out.push(lines[i++]);
    cases.push({ line: start + 1, command: cmd.join('\n'), expected: out.join('\n') });
  }
  return { cases, prelude: [] };
}

/** Rebuilds the file with each case's output replaced by `outputs[i]`, comments kept. */
export function rewriteFile(text: string, outputs: string[]): string {
  const lines = text.split('\n');
  const result: string[] = [];
  let i = 0;
  let k = 0;
  while (i < lines.length) {
    const l = lines[i];
    if (l.trim() === '' || l.startsWith('#')) {
      result.push(l);
      i++;
      continue;
    }
    while (i < lines.length && lines[i] !== '----') result.push(lines[i++]);
    result.push('----');
    i++;
    while (i < lines.length && lines[i] !== '') i++;
    if (outputs[k] !== '') result.push(...outputs[k].split('\n'));
    k++;
  }
  return result.join('\n');
}

/** `cmd a b k=v` -> { name: 'cmd', args: ['a', 'b'], kv: { k: 'v' } }. */
export function parseCommand(line: string): { name: string; args: string[]; kv: Record<string, string> } {
  const words = line.trim().split(/\s+/);
  const args: string[] = [];
  const kv: Record<string, string> = {};
  for (const w of words.slice(1)) {
    const eq = w.indexOf('=');
    if (eq > 0) kv[w.slice(0, eq)] = w.slice(eq + 1);
    else args.push(w);
  }
  return { name: words[0], args, kv };
}
