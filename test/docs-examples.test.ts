/**
 * Every example of README.md and docs/API.md, run in document order (README.md first, as a reader
 * following both would) against one `quiver serve` child on loopback with a fresh data dir.
 *
 * A fenced block runs unless the line right before it is `<!-- not run: reason -->` (such blocks
 * are listed, with their reasons, in one test). `sh` blocks: each command is a `curl` (the flags `-s`,
 * `-d`, `-X`, `-H`), sent with fetch and answered 2xx; a following `# {json}` line is the answer
 * the doc shows, and the real one must have its shape (the same keys, arrays of the same length,
 * the same strings and booleans; numbers and timestamps may differ). `ts` / `js` blocks run as a
 * script in a child Node process (top-level await allowed, `quiverdb` resolved from this
 * package) that must exit 0; `console.log(x); // json` checks x against the json the same way.
 * The `ts` blocks are also type-checked (strict) as modules of a project that installed the package.
 * The docs' default addresses (localhost:7401, 127.0.0.1:7400) stand for the child's ports.
 */
import { execFile } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ServeChild, startServe } from './serve-child';

const ROOT = path.resolve(__dirname, '..');
const DOCS = ['README.md', 'docs/API.md'];
const DOC_HTTP = 'localhost:7401';
const DOC_GRPC = '127.0.0.1:7400';

interface Block {
  doc: string;
  line: number;
  lang: string;
  text: string;
  /** The reason given by a `<!-- not run: ... -->` marker. */
  notRun?: string;
}

function blocksOf(doc: string): Block[] {
  const lines = fs.readFileSync(path.join(ROOT, doc), 'utf8').split('\n');
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\S*)\s*$/.exec(lines[i]);
    if (!open) continue;
    let end = i + 1;
    while (end < lines.length && lines[end].trimEnd() !== '```') end++;
    const marker = /^<!-- not run: (.+) -->$/.exec(lines[i - 1]?.trim() ?? '');
    blocks.push({ doc, line: i + 1, lang: open[1], text: lines.slice(i + 1, end).join('\n'), notRun: marker?.[1] });
    i = end;
  }
  return blocks;
}

const ISO_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;

/** The real answer has the shape of the one the doc shows. */
function expectShape(real: unknown, shown: unknown, at = 'answer'): void {
  if (Array.isArray(shown)) {
    expect(Array.isArray(real), `${at} is an array`).toBe(true);
    expect((real as unknown[]).length, `${at}.length`).toBe(shown.length);
    shown.forEach((s, i) => expectShape((real as unknown[])[i], s, `${at}[${i}]`));
  } else if (shown !== null && typeof shown === 'object') {
    expect(real !== null && typeof real === 'object' && !Array.isArray(real), `${at} is an object`).toBe(true);
    expect(Object.keys(real as object).sort(), `${at}'s keys`).toEqual(Object.keys(shown).sort());
    for (const [k, s] of Object.entries(shown)) expectShape((real as Record<string, unknown>)[k], s, `${at}.${k}`);
  } else if (typeof shown === 'number') {
    expect(typeof real, at).toBe('number');
  } else if (typeof shown === 'string' && ISO_TIME.test(shown)) {
    expect(real, at).toMatch(ISO_TIME);
  } else {
    expect(real, at).toEqual(shown);
  }
}

/** Words of one shell command line: whitespace-separated, with '...' and "..." quoting. */
function shellWords(line: string): string[] {
  const words: string[] = [];
  const re = /'([^']*)'|"((?:[^"\\]|\\.)*)"|(\S+)/g;
  let word: string | undefined;
  let last = 0;
  for (let m; (m = re.exec(line)); ) {
    const piece = m[1] ?? m[2]?.replace(/\\(.)/g, '$1') ?? m[3];
    if (word !== undefined && m.index === last) {
      word += piece; // pieces with nothing between them are one word: -d'{"a":1}'
    } else {
      if (word !== undefined) words.push(word);
      word = piece;
    }
    last = re.lastIndex;
  }
  if (word !== undefined) words.push(word);
  return words;
}

interface Curl {
  url: string;
  method: string;
  headers: Record<string, string>;
  body?: string;
}

function parseCurl(words: string[], http: string): Curl {
  expect(words[0], `"${words.join(' ')}": a shell example runs curl only (else mark it not run)`).toBe('curl');
  const c: Curl = { url: '', method: 'GET', headers: {} };
  for (let i = 1; i < words.length; i++) {
    const w = words[i];
    if (w === '-s' || w === '-sS' || w === '-S') continue;
    if (w === '-d' || w === '--data') {
      c.body = words[++i];
      c.headers['content-type'] ??= 'application/x-www-form-urlencoded'; // what curl sends with -d
      if (c.method === 'GET') c.method = 'POST';
    } else if (w === '-X') c.method = words[++i];
    else if (w === '-H') {
      const [k, ...v] = words[++i].split(':');
      c.headers[k.trim().toLowerCase()] = v.join(':').trim();
    } else if (!w.startsWith('-') && c.url === '') c.url = w;
    else throw new Error(`curl flag ${w} is not understood by this test`);
  }
  expect(c.url.startsWith(DOC_HTTP), `${c.url} is on ${DOC_HTTP}`).toBe(true);
  c.url = http + c.url.slice(DOC_HTTP.length);
  return c;
}

async function runShell(text: string, http: string): Promise<number> {
  const lines = text.replace(/\\\n\s*/g, '').split('\n');
  let commands = 0;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '' || line.startsWith('#')) continue;
    const c = parseCurl(shellWords(line), http);
    const res = await fetch(c.url, { method: c.method, headers: c.headers, body: c.body });
    const body = await res.text();
    expect(res.status, `${line}\n-> ${res.status} ${body}`).toBeGreaterThanOrEqual(200);
    expect(res.status, `${line}\n-> ${res.status} ${body}`).toBeLessThan(300);
    const shown = /^#\s*([[{].*)$/.exec(lines[i + 1]?.trim() ?? '');
    if (shown) expectShape(JSON.parse(body), JSON.parse(shown[1]), line);
    commands++;
  }
  return commands;
}

const SHOWN = '\u0001shown ';

/** Runs a TypeScript or JavaScript example in a child Node; the JSON each console.log prints. */
function runScript(text: string, grpc: string, dir: string, name: string): Promise<unknown[]> {
  const js = ts.transpileModule(text.split(DOC_GRPC).join(grpc), {
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
  }).outputText;
  const file = path.join(dir, `${name}.js`);
  fs.writeFileSync(
    file,
    [
      `const show = (...a) => process.stdout.write(${JSON.stringify(SHOWN)} + JSON.stringify(a.length === 1 ? a[0] : a) + '\\n');`,
      `(async (require, console) => {`,
      js,
      `})(require('module').createRequire(${JSON.stringify(ROOT + path.sep)}), { ...console, log: show })`,
      `  .catch((e) => { console.error(e); process.exit(1); });`,
    ].join('\n'),
  );
  return new Promise((resolve, reject) =>
    execFile(process.execPath, [file], { cwd: dir, timeout: 120_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${name} failed (${err.code ?? err.signal}):\n${stderr}${stdout}`));
      else resolve(stdout.split('\n').filter((l) => l.startsWith(SHOWN)).map((l) => JSON.parse(l.slice(SHOWN.length))));
    }),
  );
}

/** The answers a script's `console.log(x); // json` lines show, in order. */
function shownLogs(text: string): { line: string; shown?: unknown }[] {
  return text
    .split('\n')
    .filter((l) => /^\s*console\.log\(/.test(l))
    .map((l) => {
      const m = /\/\/\s*(.+)$/.exec(l);
      try {
        return { line: l.trim(), shown: m ? JSON.parse(m[1]) : undefined };
      } catch {
        return { line: l.trim() }; // a comment in words, not an answer
      }
    });
}

const blocks = DOCS.flatMap(blocksOf);
let dir: string;
let node: ServeChild;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-docs-'));
  node = await startServe(['--data', path.join(dir, 'data'), '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0']);
});

afterAll(async () => {
  if (node) {
    node.child.kill('SIGTERM');
    expect(await node.exited).toBe(0);
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('the examples of README.md and docs/API.md, in order, against one fresh node', () => {
  it('finds the blocks, and every block runs or says why not', () => {
    expect(blocks.filter((b) => b.doc === 'README.md').length).toBeGreaterThan(0);
    expect(blocks.filter((b) => b.doc === 'docs/API.md').length).toBeGreaterThan(0);
    const unknown = blocks.filter((b) => !b.notRun && !/^(sh|ts|js)$/.test(b.lang));
    expect(unknown.map((b) => `${b.doc}:${b.line} \`\`\`${b.lang}`), 'a block of no runnable language needs a not-run marker').toEqual([]);
  });

  it('the TypeScript blocks type-check as modules of a project that installed this package (strict, node16)', async () => {
    const project = path.join(dir, 'types');
    fs.mkdirSync(path.join(project, 'node_modules'), { recursive: true });
    fs.symlinkSync(ROOT, path.join(project, 'node_modules', 'quiverdb'), 'dir');
    const files = blocks
      .filter((b) => !b.notRun && b.lang === 'ts')
      .map((b) => {
        const file = `${path.basename(b.doc, '.md')}-${b.line}.mts`; // a module: top-level await
        fs.writeFileSync(path.join(project, file), b.text);
        return file;
      });
    expect(files.length).toBeGreaterThan(0);
    const compilerOptions = { module: 'node16', moduleResolution: 'node16', target: 'ES2022', strict: true, noEmit: true, types: ['node'] };
    fs.writeFileSync(path.join(project, 'tsconfig.json'), JSON.stringify({ compilerOptions: { ...compilerOptions, typeRoots: [path.join(ROOT, 'node_modules', '@types')] }, files }));
    const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    const out = await new Promise<{ code: number; stdout: string }>((resolve) =>
      execFile(process.execPath, [tsc, '-p', project], (err, stdout) => resolve({ code: err ? Number(err.code) : 0, stdout })),
    );
    expect(out.stdout, 'tsc').toBe('');
    expect(out.code).toBe(0);
  });

  // Blocks marked not run are no tests (a skip is for a missing machine feature): they are listed,
  // each with its reason, in one that checks every marker gives one.
  it(`blocks not run, each with its reason: ${blocks.filter((b) => b.notRun).map((b) => `${b.doc}:${b.line}`).join(', ')}`, () => {
    for (const b of blocks.filter((x) => x.notRun)) expect(b.notRun!.trim().length, `${b.doc}:${b.line}`).toBeGreaterThan(3);
  });

  for (const b of blocks) {
    const title = `${b.doc}:${b.line} (${b.lang || 'no language'})`;
    if (b.notRun) {
      continue;
    } else if (b.lang === 'sh') {
      it(`${title}: every curl answers 2xx with the answer's shape the doc shows`, async () => {
        expect(await runShell(b.text, node.http)).toBeGreaterThan(0);
      });
    } else if (b.lang === 'ts' || b.lang === 'js') {
      it(`${title}: runs without an error; console.log shows what the doc says`, async () => {
        const printed = await runScript(b.text, node.grpc, dir, `${path.basename(b.doc, '.md')}-${b.line}`);
        const logs = shownLogs(b.text);
        expect(printed.length, 'one answer per console.log').toBe(logs.length);
        logs.forEach((l, i) => l.shown !== undefined && expectShape(printed[i], l.shown, l.line));
      });
    } else {
      it(`${title}: has no runner`, () => expect.fail('give the block the language sh, ts or js, or a not-run marker'));
    }
  }
});
