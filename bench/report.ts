/**
 * Writing benchmark results: JSON and self-contained HTML reports under bench/results/, aligned
 * tables on stdout, progress lines and bars on stderr.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { esc } from './svg';

export const RESULTS_DIR = process.env.QUIVER_BENCH_OUT ?? path.resolve(__dirname, '..', '..', 'bench', 'results');

export function machine(): Record<string, unknown> {
  return {
    cpu: os.cpus()[0]?.model,
    cores: os.cpus().length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    loadavg: os.loadavg().map((x) => Math.round(x * 100) / 100),
    node: process.version,
    date: new Date().toISOString(),
  };
}

export function writeJson(name: string, data: unknown): string {
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, `${name}.json`);
  fs.writeFileSync(file, JSON.stringify(data, null, 2) + '\n');
  return file;
}

/** A table cell: whole numbers as they are, others to 3 decimals under 10 and 1 above. */
function fmt(v: string | number): string {
  return typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(v < 10 ? 3 : 1)) : v;
}

export function table(rows: Record<string, string | number>[]): string {
  if (rows.length === 0) return '';
  const cols = Object.keys(rows[0]);
  const width = cols.map((c) => Math.max(c.length, ...rows.map((r) => fmt(r[c]).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padStart(width[i])).join('  ');
  return [line(cols), line(width.map((w) => '-'.repeat(w))), ...rows.map((r) => line(cols.map((c) => fmt(r[c]))))].join('\n');
}

export function progress(msg: string): void {
  process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

/**
 * A progress bar on stderr for a phase of `total` steps, redrawn in place; nothing when stderr is
 * not a terminal (a log or a pipe gets the progress() lines only).
 */
export function progressBar(label: string, total: number): { tick: (n?: number) => void; done: () => void } {
  if (!process.stderr.isTTY) return { tick: () => {}, done: () => {} };
  const width = 30;
  let count = 0;
  let shown = -1;
  const draw = (): void => {
    const filled = Math.round((Math.min(count, total) / total) * width);
    if (filled === shown && count < total) return;
    shown = filled;
    process.stderr.write(`\r${label} [${'#'.repeat(filled)}${' '.repeat(width - filled)}] ${count}/${total}`);
  };
  draw();
  return {
    tick: (n = 1) => {
      count += n;
      draw();
    },
    done: () => void process.stderr.write('\n'),
  };
}

/** A report section: a heading, then an optional note, table and inline SVG plots. */
export interface HtmlSection {
  title: string;
  note?: string;
  rows?: Record<string, string | number>[];
  svgs?: string[];
}

/** Writes bench/results/<name>.html: one self-contained file (inline CSS and SVG, no scripts). */
export function writeHtml(name: string, title: string, sections: HtmlSection[]): string {
  const body = sections.map((s) => {
    const parts = [`<h2>${esc(s.title)}</h2>`];
    if (s.note) parts.push(`<p>${esc(s.note)}</p>`);
    if (s.rows && s.rows.length > 0) {
      const cols = Object.keys(s.rows[0]);
      parts.push(`<table><tr>${cols.map((c) => `<th>${esc(c)}</th>`).join('')}</tr>`);
      for (const r of s.rows) parts.push(`<tr>${cols.map((c) => `<td>${esc(fmt(r[c]))}</td>`).join('')}</tr>`);
      parts.push('</table>');
    }
    parts.push(...(s.svgs ?? []));
    return parts.join('\n');
  });
  const html = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>body{font-family:sans-serif;margin:2em;max-width:1000px}table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}svg{display:block;margin:1em 0}</style>
</head><body>
<h1>${esc(title)}</h1>
${body.join('\n')}
</body></html>
`;
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, `${name}.html`);
  fs.writeFileSync(file, html);
  return file;
}
