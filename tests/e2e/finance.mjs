// End-to-end test of the finance dashboard (web/finance) against a running server.
//   BASE_URL=http://127.0.0.1:8080 FINANCE_TOKEN=demo-finance-token node finance.mjs
// Uses Debian's Chromium (CHROMIUM, default /usr/bin/chromium) through playwright-core; no browser download.
// Exit code 0 when every check passes, 1 with a message on the first failure or on any browser console error.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const BASE_URL = (process.env.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const TOKEN = process.env.FINANCE_TOKEN || 'demo-finance-token';
const SCREENSHOT = process.env.SCREENSHOT || '/tmp/finance.png';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TIMEOUT = Number(process.env.E2E_TIMEOUT_MS || 15000);
const RECON_FIELDS = ['billed_cents', 'expected_cents', 'paid_cents', 'contractual_cents', 'patient_responsibility_cents',
  'denied_cents', 'other_adjustment_cents', 'outstanding_cents'];
const CANVASES = ['chart-month', 'chart-denials', 'chart-aging', 'chart-sustainability'];

class Failure extends Error {}
const fail = (msg) => { throw new Failure(msg); };
const check = (cond, msg) => { if (!cond) fail(msg); };

async function api(p, accept = 'application/json') {
  const res = await fetch(BASE_URL + p, { headers: { Authorization: `Bearer ${TOKEN}`, Accept: accept } });
  const text = await res.text();
  check(res.ok, `GET ${p} answered HTTP ${res.status}: ${text.slice(0, 300)}`);
  return accept === 'application/json' ? JSON.parse(text) : text;
}

// Cents of every row of a report table, keyed by the row's data-key: { key: { field: "123", ... } }.
function tableCents(page, selector) {
  return page.$$eval(selector, (rows) => Object.fromEntries(rows.map((tr) => [tr.getAttribute('data-key'),
    Object.fromEntries([...tr.querySelectorAll('[data-cents]')].map((c) => [c.getAttribute('data-field'), c.getAttribute('data-cents')]))])));
}

function compareRow(where, pageRow, apiRow) {
  check(pageRow, `${where}: row missing from the page`);
  for (const f of RECON_FIELDS) {
    if (!(f in apiRow)) continue;
    check(pageRow[f] === String(apiRow[f]), `${where}: ${f} is ${pageRow[f]} on the page but ${apiRow[f]} in the API`);
  }
}

async function main() {
  check(fs.existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM)`);
  const problems = []; // console errors and uncaught page errors
  let expectRejection = false; // the wrong-token step makes the browser log the 401 responses
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'finance-e2e-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    acceptDownloads: true,
    viewport: { width: 1280, height: 900 },
  });
  const summary = {};
  try {
    const page = context.pages()[0] || await context.newPage();
    page.setDefaultTimeout(TIMEOUT);
    page.on('console', (m) => {
      if (m.type() !== 'error') return;
      if (expectRejection && /status of 40[13]/.test(m.text())) return;
      problems.push(`console error: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    const noProblems = (step) => check(!problems.length, `${step}: ${problems.join(' | ')}`);

    // 1. The page loads and a wrong token is rejected.
    const resp = await page.goto(BASE_URL + '/finance');
    check(resp && resp.ok(), `GET /finance answered HTTP ${resp && resp.status()}`);
    await page.locator('#token').waitFor({ state: 'visible' });
    expectRejection = true;
    await page.fill('#token', 'wrong-token-' + Date.now());
    await page.click('#sign-in');
    await page.locator('#error').waitFor({ state: 'visible' }).catch(() => fail('a wrong token did not show #error'));
    const rejected = await page.textContent('#error');
    check(/token rejected/i.test(rejected), `#error after a wrong token says "${rejected}", not "token rejected"`);
    await page.locator('#token').waitFor({ state: 'visible' }).catch(() => fail('the sign-in form did not come back after a wrong token'));
    check(!(await page.evaluate(() => sessionStorage.length)), 'a rejected token was left in sessionStorage');
    // The wrong token's requests go out together and #error shows at the first 401: the others'
    // console errors may still arrive, and must not be taken for errors of the next step.
    await page.waitForLoadState('networkidle');
    await page.waitForTimeout(200);
    expectRejection = false;
    noProblems('wrong token');

    // 2. Sign in; the reports load without errors.
    await page.fill('#token', TOKEN);
    await page.click('#sign-in');
    await page.locator('#recon-site').waitFor({ state: 'visible' });
    await page.locator('#reports-view[data-loading="false"]').waitFor({ state: 'attached' })
      .catch(() => fail('the reports did not finish loading'));
    if (await page.locator('#error').isVisible()) fail(`#error after sign-in: ${await page.textContent('#error')}`);
    noProblems('reports');

    // 3. Site reconciliation: every row and the total equal the API to the cent.
    const recon = await api('/api/v1/reports/reconciliation?by=site');
    const shown = await tableCents(page, '#recon-site tbody tr[data-key]');
    check(Object.keys(shown).length === recon.rows.length,
      `#recon-site shows ${Object.keys(shown).length} site rows, the API has ${recon.rows.length}`);
    for (const row of recon.rows) compareRow(`#recon-site row ${row.key}`, shown[row.key], row);
    const total = (await tableCents(page, '#recon-site-total'))['total'];
    compareRow('#recon-site-total', total, recon.total);
    summary.sites = recon.rows.length;

    // 4. Charts exist and were drawn; the CSV download sends the token and gets CSV.
    for (const id of CANVASES) {
      const box = await page.locator('#' + id).boundingBox();
      check(box && box.width > 0 && box.height > 0, `canvas #${id} is missing or has no size`);
    }
    check(await page.evaluate(() => typeof window.Chart === 'function'), 'Chart.js did not load');
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('button[data-csv="site"]')]);
    const csv = fs.readFileSync(await download.path(), 'utf8');
    const header = csv.split(/\r?\n/)[0];
    check(header.includes('billed_cents'), `the site CSV's first line is "${header.slice(0, 200)}", without billed_cents`);
    summary.csv = download.suggestedFilename();
    await page.screenshot({ path: SCREENSHOT, fullPage: true });

    // 5. Drill down: the first site with claims -> its claims.
    const site = recon.rows.find((r) => r.claims > 0);
    check(site, 'no site has claims in /api/v1/reports/reconciliation?by=site: seed the server (e.g. serve --demo) before this test');
    const claims = await api(`/api/v1/claims?site=${encodeURIComponent(site.key)}&_count=1000`);
    await page.click(`#recon-site button[data-site=${JSON.stringify(site.key)}]`);
    await page.locator('#site-claims').waitFor({ state: 'visible' });
    await page.locator('#site-view[data-loading="false"]').waitFor({ state: 'attached' });
    const claimRows = await page.locator('#site-claims tbody tr[data-id]').count();
    check(claimRows === claims.length, `#site-claims shows ${claimRows} claims of ${site.key}, the API lists ${claims.length}`);
    check(claims.length > 0, `site ${site.key} has ${site.claims} claims in the report but /api/v1/claims?site= lists none`);
    summary.site = `${site.key}:${claims.length}`;

    // 6. A claim with payments if there is one (else the first): header and each 835 payment's paid cents.
    let claim = null;
    for (const c of claims.slice(0, 100)) {
      const full = await api(`/api/v1/claims/${encodeURIComponent(c.id)}`);
      if (!claim) claim = full;
      if ((full.remittances || []).length) { claim = full; break; }
    }
    await page.click(`#site-claims button[data-claim=${JSON.stringify(claim.id)}]`);
    await page.locator('#claim-detail').waitFor({ state: 'visible' });
    await page.locator('#claim-view[data-loading="false"]').waitFor({ state: 'attached' });
    const detail = await page.textContent('#claim-detail');
    check(detail.includes(claim.claim_number), `#claim-detail does not show claim number ${claim.claim_number}`);
    const paid = await page.$$eval('#claim-payments [data-remittance]', (boxes) =>
      boxes.map((b) => {
        const dd = b.querySelector('dd[data-field="paid_cents"]');
        return dd ? dd.getAttribute('data-cents') : null;
      }));
    const remits = claim.remittances || [];
    check(paid.length === remits.length, `#claim-payments shows ${paid.length} payments of ${claim.claim_number}, the API has ${remits.length}`);
    remits.forEach((r, i) => check(paid[i] === String(r.paid_cents),
      `#claim-payments payment ${i + 1} (${r.trace_number}) shows paid ${paid[i]}, the API says ${r.paid_cents}`));
    summary.claim = `${claim.claim_number}:${remits.length} payments`;
    await page.screenshot({ path: SCREENSHOT.replace(/(\.png)?$/, '-claim.png'), fullPage: true });

    // 7. Back twice, then sign out.
    await page.click('#back-to-site');
    await page.locator('#site-claims').waitFor({ state: 'visible' });
    await page.click('#back-to-reports');
    await page.locator('#recon-site').waitFor({ state: 'visible' });
    await page.click('#sign-out');
    await page.locator('#token').waitFor({ state: 'visible' });
    check(!(await page.evaluate(() => sessionStorage.length)), 'sign out left the token in sessionStorage');
    noProblems('end');
  } finally {
    await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  console.log(`finance e2e OK: ${summary.sites} sites match the API to the cent; ${summary.site} claims; claim ${summary.claim} match; ` +
    `4 charts; CSV ${summary.csv}; screenshot ${SCREENSHOT}`);
}

main().then(() => process.exit(0), (e) => {
  console.error(`finance e2e FAILED: ${e instanceof Failure ? e.message : (e && e.stack) || e}`);
  process.exit(1);
});
