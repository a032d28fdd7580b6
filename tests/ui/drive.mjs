// The UI check's browser driver: opens the real matyan-ui (served by `matyan serve --ui-dir`) in
// headless Chromium through playwright-core, the way a person would: runs
// explorer, metrics explorer with `metric.name == "loss"`, a run page. Asserts the seeded runs
// appear and the chart renders, saves screenshots, and lists every API request the UI made with
// its status (so routes the UI needs but we lack show up as 404/405 lines). Served on the API's
// origin, the UI must call no other local origin (such as its default http://localhost:53800).
//
// Usage: node drive.mjs <ui-url> <api-url> <out-dir> <run-hash> <run-name>
// Exits 0 when every check passes, 1 otherwise (with the failing check's message).

import { chromium } from 'playwright-core';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const [ui, api, out, runHash, runName] = process.argv.slice(2);
if (!ui || !api || !out || !runHash || !runName) {
  console.error('usage: node drive.mjs <ui-url> <api-url> <out-dir> <run-hash> <run-name>');
  process.exit(2);
}
mkdirSync(out, { recursive: true });

const TIMEOUT = 45_000;
const failures = [];
const apiCalls = [];
const consoleErrors = [];
const otherOrigins = new Set();

function encodeSelect(state) {
  // The UI's "Matyan64": "O-" + base64(encodeURI(JSON)) with = dropped, + -> -, / -> _.
  const b64 = Buffer.from(encodeURI(JSON.stringify(state)), 'latin1').toString('base64');
  return 'O-' + b64.replaceAll('=', '').replaceAll('+', '-').replaceAll('/', '_');
}

async function errorToasts(page) {
  return page.evaluate(() =>
    Array.from(document.querySelectorAll('.NotificationContainer, .MuiAlert-standardError, .MuiAlert-filledError'))
      .map((e) => e.innerText.trim())
      .filter((t) => /error|fail/i.test(t)),
  );
}

async function check(name, page, fn) {
  const started = Date.now();
  try {
    await fn();
    const toasts = await errorToasts(page);
    if (toasts.length) throw new Error(`error toast shown: ${JSON.stringify(toasts)}`);
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    failures.push(`${name}: ${e.message.split('\n')[0]}`);
    console.log(`FAIL ${name}: ${e.message.split('\n')[0]}`);
  } finally {
    await page.screenshot({ path: join(out, `${name}.png`), fullPage: false }).catch(() => {});
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic', '--disable-dev-shm-usage',
  ],
});
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  // The page loads pyodide and fonts from the internet; offline they fail. Fail them fast
  // instead of waiting for network timeouts.
  await context.route(/^https?:\/\/(?!127\.0\.0\.1|localhost)/, (route) => route.abort());
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('response', (r) => {
    const u = r.url();
    if (u.startsWith(api)) apiCalls.push(`${r.status()} ${r.request().method()} ${u.slice(api.length)}`);
  });
  page.on('request', (r) => {
    const u = r.url();
    if (/^https?:\/\/(127\.0\.0\.1|localhost)[:/]/.test(u) && new URL(u).origin !== new URL(ui).origin) {
      otherOrigins.add(`${r.method()} ${u}`);
    }
  });
  page.on('requestfailed', (r) => {
    const u = r.url();
    if (u.startsWith(api)) apiCalls.push(`FAILED ${r.request().method()} ${u.slice(api.length)} (${r.failure()?.errorText})`);
  });

  await check('1-runs-explorer', page, async () => {
    await page.goto(`${ui}/runs`, { waitUntil: 'domcontentloaded' });
    await page.getByText(runName, { exact: true }).first().waitFor({ state: 'visible' });
    await page.waitForTimeout(1500);
  });

  await check('2-metrics-explorer', page, async () => {
    const select = encodeSelect({
      options: [], query: '', advancedMode: true, advancedQuery: 'metric.name == "loss"',
    });
    await page.goto(`${ui}/metrics?select=${select}`, { waitUntil: 'domcontentloaded' });
    // Lines of the chart: SVG paths with real geometry inside a chart, one per trace (the seeded
    // runs have a train and a val `loss` each).
    const want = Number(process.env.UI_CHECK_LINES || 6);
    await page.waitForFunction((want) => {
      let lines = 0;
      for (const p of document.querySelectorAll('svg path')) {
        const d = p.getAttribute('d') || '';
        if (d.length > 200 && p.closest('[class*="Chart"], [class*="chart"]')) lines += 1;
      }
      return lines >= want;
    }, want, { timeout: TIMEOUT });
    // The table under the chart groups the traces; the experiment name shows in it.
    await page.getByText('baseline', { exact: true }).first().waitFor({ state: 'visible' });
    await page.waitForTimeout(1500);
  });

  await check('3-run-page', page, async () => {
    await page.goto(`${ui}/runs/${runHash}`, { waitUntil: 'domcontentloaded' });
    // The header shows "<experiment> / <run name>"; the params table shows the hparams.
    await page.getByText(runName, { exact: false }).filter({ visible: true }).first().waitFor();
    await page.getByText('hparams.lr', { exact: true }).filter({ visible: true }).first().waitFor();
    await page.waitForTimeout(1500);
  });

  await check('4-run-metrics-tab', page, async () => {
    await page.goto(`${ui}/runs/${runHash}/metrics`, { waitUntil: 'domcontentloaded' });
    await page.waitForFunction(() => {
      for (const p of document.querySelectorAll('svg path')) {
        if ((p.getAttribute('d') || '').length > 200) return true;
      }
      return false;
    }, null, { timeout: TIMEOUT });
    await page.waitForTimeout(1500);
  });

  // Pages visited without assertions, for their screenshots and the API calls they make (a
  // missing route shows in api-calls.txt without failing the check).
  for (const [name, path] of [['5-home', '/'], ['6-tags', '/tags'], ['7-experiment', `/experiments/${process.env.UI_CHECK_EXPERIMENT || ''}`]]) {
    if (name === '7-experiment' && !process.env.UI_CHECK_EXPERIMENT) continue;
    try {
      await page.goto(`${ui}${path}`, { waitUntil: 'domcontentloaded' });
      await page.waitForTimeout(3000);
      const toasts = await errorToasts(page);
      console.log(`seen ${name}${toasts.length ? ` (error toasts: ${JSON.stringify(toasts)})` : ''}`);
    } catch (e) {
      console.log(`seen ${name}: ${e.message.split('\n')[0]}`);
    }
    await page.screenshot({ path: join(out, `${name}.png`) }).catch(() => {});
  }
} finally {
  await browser.close();
}

const summary = [...new Set(apiCalls)].sort();
writeFileSync(join(out, 'api-calls.txt'), summary.join('\n') + '\n');
writeFileSync(join(out, 'console-errors.txt'), consoleErrors.join('\n') + '\n');
console.log('API calls made by the UI (status method path):');
for (const c of summary) console.log(`  ${c}`);
const missing = summary.filter((c) => /^(404|405|FAILED|5\d\d) /.test(c));
if (missing.length) console.log(`API calls that failed or hit missing routes: ${missing.length}`);
if (otherOrigins.size) {
  failures.push(`the UI called other origins than ${new URL(ui).origin}: ${[...otherOrigins].slice(0, 5).join(', ')}`);
}
if (failures.length) {
  console.log(`UI check failed:\n  ${failures.join('\n  ')}`);
  process.exit(1);
}
console.log('UI check passed');
