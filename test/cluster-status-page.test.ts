/**
 * The status page at `/` in a real browser (headless Chromium through playwright-core) against a
 * three-node cluster (etcd, nodes and sidecars): it names every shard's leader, and after one
 * node is killed with SIGKILL the page, refreshing by itself, marks that node down and shows the
 * shard's new leader among its recent failovers; another node, whose page nobody loaded before,
 * keeps that failover too (GET /v1/node, a fresh page). A screenshot goes to bench/results/status-page.png.
 */
import * as fs from 'fs';
import * as path from 'path';
import { chromium, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestCluster, TestNode, waitFor } from './cluster-harness';
import type { Failover } from '../src/query/types';
import { httpJson, tempDir } from './server-harness';

const CHROMIUM = '/usr/bin/chromium';
const missing = fs.existsSync(CHROMIUM) ? null : `no ${CHROMIUM} (apt-get install chromium)`;
const TTL = 2000;
const SCREENSHOT = path.join(__dirname, '..', 'bench', 'results', 'status-page.png');

/** The cells' text of each row of one of the page's tables (by its id). */
function rows(page: Page, table: string): Promise<string[][]> {
  return page.$$eval(`#${table} tbody tr`, (trs) => trs.map((tr) => Array.from((tr as unknown as { cells: ArrayLike<{ textContent: string | null }> }).cells, (td) => td.textContent ?? '')));
}

describe.skipIf(missing !== null)(`the status page in a browser${missing ? ` (skipped: ${missing})` : ''}`, () => {
  let cluster: TestCluster;
  let browser: BrowserContext;
  let page: Page;
  /** The leader of shard 0, killed in the second test; the page is served by another node. */
  let victim: TestNode;
  let viewer: TestNode;

  beforeAll(async () => {
    cluster = await TestCluster.start({ cluster: 'page', args: ['--lease-ttl-ms', String(TTL)] });
    const r = await httpJson(cluster.nodes[0].child.http, 'POST', '/v1/collections', { name: 'docs', dim: 4, shards: 3, replicationFactor: 3, index: { type: 'hnsw', m: 8 } });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    await cluster.waitConverged(cluster.nodes[0], 'docs', 'every shard of docs with a leader and three replicas', 3);
    victim = cluster.node((await cluster.shards(cluster.nodes[0], 'docs'))[0].leader);
    viewer = cluster.nodes.find((n) => n !== victim)!;
    browser = await chromium.launchPersistentContext(tempDir('quiver-chromium-'), { executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
    page = await browser.newPage();
    await page.goto(`${viewer.child.http}/`);
  });

  afterAll(async () => {
    await browser?.close(); // ends the browser's processes
    await cluster?.close();
  });

  /** "collection/shard" -> leader, as the shards table shows them (the shard's columns are on its first row). */
  async function leadersShown(): Promise<Record<string, string>> {
    const shown: Record<string, string> = {};
    for (const [collection, shard, , , leader] of await rows(page, 'shards')) if (collection) shown[`${collection}/${shard}`] = leader;
    return shown;
  }

  async function leadersNow(): Promise<Record<string, string>> {
    return Object.fromEntries((await cluster.shards(viewer, 'docs')).map((s) => [`docs/${s.shard}`, s.leader]));
  }

  it("shows every node up, the collection's index parameters and every shard's leader", async () => {
    // A node busy past the page's 1 s question shows as down on one rendering: the next one shows it up.
    let nodes: string[][] = [];
    const up = JSON.stringify(cluster.nodes.map((n) => [n.id, 'up']));
    await waitFor(async () => JSON.stringify((nodes = await rows(page, 'nodes')).map((r) => [r[0], r[4]])) === up, 'the page to show every node up', 10_000, () => JSON.stringify(nodes));
    for (const r of nodes) expect(r[6], JSON.stringify(r)).toMatch(/^\d+(\.\d)? (s|min)$/); // uptime
    expect((await rows(page, 'collections'))[0].slice(0, 4)).toEqual(['docs', '4', 'l2', 'hnsw m=8']);
    const want = await leadersNow();
    expect(Object.keys(want)).toEqual(['docs/0', 'docs/1', 'docs/2']);
    let shown: Record<string, string> = {};
    await waitFor(async () => JSON.stringify((shown = await leadersShown())) === JSON.stringify(want), 'the page to show the leaders of /v1/collections/docs/shards', 10_000, () => JSON.stringify(shown));
  });

  it('marks a node killed with SIGKILL down, and shows its shard under a new leader and among the failovers, by refreshing itself', async () => {
    const t0 = Date.now();
    await cluster.kill(victim);
    let seen: string[][] = [];
    await waitFor(async () => (seen = await rows(page, 'nodes')).some((r) => r[0] === victim.id && r[4].startsWith('DOWN')), `the page to mark ${victim.id} down`, 10_000, () => JSON.stringify(seen));
    console.log(`status page: ${victim.id} shown down ${Date.now() - t0} ms after SIGKILL`);
    expect(seen.filter((r) => r[0] !== victim.id).map((r) => r[4])).toEqual(['up', 'up']);

    // Shard 0 moves once the victim's lease ends; the page shows the change.
    let failovers: string[][] = [];
    await waitFor(
      async () => (failovers = await rows(page, 'failovers')).some(([, collection, shard, from]) => collection === 'docs' && shard === '0' && from === victim.id),
      `a failover of docs/0 away from ${victim.id}`,
      30_000,
      () => JSON.stringify(failovers),
    );
    const moved = failovers.find(([, collection, shard]) => collection === 'docs' && shard === '0')!;
    expect(moved[4]).not.toBe(victim.id);
    expect(moved[6], JSON.stringify(moved)).toMatch(/^\d+ ms$|^\d+\.\d s$/); // without leader, as the viewer saw it

    // Each node keeps the failovers it saw: the node no page was loaded from answers them in its
    // GET /v1/node and on a page loaded afresh.
    const other = cluster.nodes.find((n) => n !== victim && n !== viewer)!;
    let kept: Failover[] = [];
    await waitFor(async () => (kept = (await httpJson(other.child.http, 'GET', '/v1/node')).body.failovers as Failover[]).some((f) => f.collection === 'docs' && f.shard === 0), `${other.id} to keep the failover of docs/0`, 10_000, () => JSON.stringify(kept));
    const f = kept.find((x) => x.collection === 'docs' && x.shard === 0)!;
    expect(f).toMatchObject({ from: victim.id, to: moved[4], epoch: Number(moved[5]) });
    // It holds a replica of docs/0 (RF 3): from the victim's last message to the new leader, at least the part of the lease left.
    expect(f.withoutLeaderSeconds).toBeGreaterThan(0);
    expect(f.withoutLeaderSeconds).toBeLessThan(30);
    const fresh = await browser.newPage();
    await fresh.goto(`${other.child.http}/`);
    const listed = await rows(fresh, 'failovers');
    await fresh.close();
    expect(listed.find(([, collection, shard]) => collection === 'docs' && shard === '0')?.slice(1, 6)).toEqual(['docs', '0', victim.id, moved[4], moved[5]]);
    let shown: Record<string, string> = {};
    await waitFor(async () => {
      const want = await leadersNow();
      return JSON.stringify((shown = await leadersShown())) === JSON.stringify(want) && !Object.values(want).includes(victim.id);
    }, 'the page to show the new leaders', 30_000, () => JSON.stringify(shown));
    fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
  });
});
