/**
 * A small SVG line chart for the benchmarks (no dependencies): one polyline with point markers
 * per series, linear or log axes, a legend. Enough to read recall against QPS at a glance.
 */

export interface Series {
  name: string;
  /** [x, y] pairs; drawn in the order given. */
  points: [number, number][];
  dashed?: boolean;
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  logY?: boolean;
  width?: number;
  height?: number;
  /** Vertical guide lines (e.g. a recall goal). */
  xMarks?: { x: number; label: string }[];
}

const COLORS = ['#d62728', '#1f77b4', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f'];

/** Text escaped for XML and HTML text nodes. */
export function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function niceTicks(lo: number, hi: number, count: number): number[] {
  const span = hi - lo || 1;
  const raw = span / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-12; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function fmt(v: number): string {
  if (Math.abs(v) >= 1000) return `${Math.round(v / 100) / 10}k`;
  return String(Number(v.toPrecision(3)));
}

export function lineChart(series: Series[], opts: ChartOptions): string {
  const W = opts.width ?? 760;
  const H = opts.height ?? 480;
  const m = { l: 70, r: 190, t: 40, b: 50 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const all = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!opts.logY || y > 0));
  let xlo = Math.min(...all.map((p) => p[0]));
  let xhi = Math.max(...all.map((p) => p[0]));
  for (const mk of opts.xMarks ?? []) {
    xlo = Math.min(xlo, mk.x);
    xhi = Math.max(xhi, mk.x);
  }
  if (!Number.isFinite(xlo)) {
    xlo = 0;
    xhi = 1;
  }
  const pad = (xhi - xlo) * 0.03 || 0.01;
  xlo -= pad;
  xhi += pad;
  const ys = all.map((p) => p[1]);
  let ylo = ys.length ? Math.min(...ys) : 1;
  let yhi = ys.length ? Math.max(...ys) : 10;
  const ty = (v: number) => (opts.logY ? Math.log10(v) : v);
  if (opts.logY) {
    ylo = Math.pow(10, Math.floor(Math.log10(ylo)));
    yhi = Math.pow(10, Math.ceil(Math.log10(yhi)));
  } else {
    ylo = 0;
    yhi *= 1.05;
  }
  const X = (x: number) => m.l + ((x - xlo) / (xhi - xlo)) * pw;
  const Y = (y: number) => m.t + ph - ((ty(y) - ty(ylo)) / (ty(yhi) - ty(ylo) || 1)) * ph;

  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(`<text x="${W / 2 - m.r / 2}" y="22" text-anchor="middle" font-size="15">${esc(opts.title)}</text>`);
  // Grid and ticks.
  for (const x of niceTicks(xlo, xhi, 8)) {
    parts.push(`<line x1="${X(x)}" y1="${m.t}" x2="${X(x)}" y2="${m.t + ph}" stroke="#eee"/>`);
    parts.push(`<text x="${X(x)}" y="${m.t + ph + 16}" text-anchor="middle">${fmt(x)}</text>`);
  }
  const yticks: number[] = [];
  if (opts.logY) {
    for (let d = Math.log10(ylo); d <= Math.log10(yhi) + 1e-9; d++) {
      for (const k of [1, 2, 5]) {
        const v = k * Math.pow(10, d);
        if (v >= ylo && v <= yhi) yticks.push(v);
      }
    }
  } else {
    yticks.push(...niceTicks(ylo, yhi, 6));
  }
  for (const y of yticks) {
    parts.push(`<line x1="${m.l}" y1="${Y(y)}" x2="${m.l + pw}" y2="${Y(y)}" stroke="#eee"/>`);
    parts.push(`<text x="${m.l - 6}" y="${Y(y) + 4}" text-anchor="end">${fmt(y)}</text>`);
  }
  parts.push(`<rect x="${m.l}" y="${m.t}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  for (const mk of opts.xMarks ?? []) {
    parts.push(`<line x1="${X(mk.x)}" y1="${m.t}" x2="${X(mk.x)}" y2="${m.t + ph}" stroke="#999" stroke-dasharray="4 3"/>`);
    parts.push(`<text x="${X(mk.x) + 3}" y="${m.t + 12}" fill="#666">${esc(mk.label)}</text>`);
  }
  parts.push(`<text x="${m.l + pw / 2}" y="${H - 12}" text-anchor="middle">${esc(opts.xLabel)}</text>`);
  parts.push(
    `<text x="16" y="${m.t + ph / 2}" text-anchor="middle" transform="rotate(-90 16 ${m.t + ph / 2})">${esc(opts.yLabel)}</text>`,
  );
  // Series.
  series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length];
    const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!opts.logY || y > 0));
    if (pts.length > 0) {
      const d = pts.map(([x, y]) => `${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(' ');
      parts.push(`<polyline points="${d}" fill="none" stroke="${c}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
      for (const [x, y] of pts) parts.push(`<circle cx="${X(x).toFixed(1)}" cy="${Y(y).toFixed(1)}" r="3" fill="${c}"/>`);
    }
    const ly = m.t + 14 + i * 20;
    parts.push(`<line x1="${m.l + pw + 12}" y1="${ly - 4}" x2="${m.l + pw + 36}" y2="${ly - 4}" stroke="${c}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
    parts.push(`<text x="${m.l + pw + 42}" y="${ly}">${esc(s.name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
