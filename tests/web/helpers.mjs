// Shared helpers for the browser tests: the environment, launching
// Chromium, opening the page (entering the API key when asked), and
// recording console errors, page errors and requests to other hosts.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';

export const BASE = (process.env.HEARTH_URL || 'http://127.0.0.1:18080').replace(/\/+$/, '');
export const API_KEY = process.env.HEARTH_API_KEY || '';
export const ADMIN_KEY = process.env.HEARTH_ADMIN_KEY || '';
export const SHOTS = process.env.HEARTH_SCREENSHOTS || '';
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ORIGIN = new URL(BASE).origin;

export async function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--no-first-run',
      '--disable-sync',
    ],
  });
}

/**
 * Opens the page in a fresh context (or `options.context`), entering the
 * API key when the page asks for it. Returns {context, page, problems}:
 * `problems` collects console errors, page errors and requests to any host
 * other than the server.
 */
export async function openPage(browser, { hash = '#/chat', contextOptions = {}, context = null, expectKeyPrompt = true } = {}) {
  const ctx = context ?? (await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true, ...contextOptions }));
  const page = await ctx.newPage();
  const problems = watch(page);
  await page.goto(`${BASE}/${hash}`);
  if (expectKeyPrompt && API_KEY) await enterApiKey(page);
  await page.locator('[data-testid="view-chat"], [data-testid="view-plugins"], [data-testid="view-status"]').first().waitFor({ state: 'attached' });
  return { context: ctx, page, problems };
}

/** Records what a test must not see. */
export function watch(page) {
  const problems = { console: [], pageErrors: [], foreign: [], dialogs: [] };
  page.on('console', (msg) => {
    if (msg.type() === 'error') {
      const text = msg.text();
      // A 401 the page answers by asking for the key is expected, as are
      // error answers the tests provoke on purpose (listed by the test).
      if (problems.allow && problems.allow.some((re) => re.test(text))) return;
      if (/Failed to load resource: the server responded with a status of 401/.test(text)) return;
      problems.console.push(text);
    }
  });
  page.on('pageerror', (err) => problems.pageErrors.push(String(err && err.stack ? err.stack : err)));
  page.on('request', (req) => {
    const url = req.url();
    if (url.startsWith('data:') || url.startsWith('blob:') || url.startsWith('about:')) return;
    try {
      if (new URL(url).origin !== ORIGIN) problems.foreign.push(url);
    } catch {
      problems.foreign.push(url);
    }
  });
  page.on('dialog', async (d) => {
    problems.dialogs.push(`${d.type()}: ${d.message()}`);
    await d.dismiss().catch(() => {});
  });
  return problems;
}

/** Fails on console errors, page errors, dialogs or foreign requests. */
export function assertClean(problems) {
  assert.deepEqual(problems.pageErrors, [], 'page errors');
  assert.deepEqual(problems.console, [], 'console errors');
  assert.deepEqual(problems.foreign, [], 'requests to other hosts');
  assert.deepEqual(problems.dialogs, [], 'alert/confirm/prompt dialogs');
}

/** Waits for the API key prompt and answers it. */
export async function enterApiKey(page) {
  const input = page.getByTestId('api-key-input');
  await input.waitFor({ state: 'visible', timeout: 10_000 });
  await input.fill(API_KEY);
  await input.press('Enter');
  await input.waitFor({ state: 'hidden', timeout: 10_000 }).catch(() => {});
  await page.locator('#key-dialog').waitFor({ state: 'hidden', timeout: 10_000 });
}

/** Answers the admin key prompt. */
export async function enterAdminKey(page) {
  const input = page.getByTestId('admin-key-input');
  await input.waitFor({ state: 'visible', timeout: 10_000 });
  await input.fill(ADMIN_KEY);
  await input.press('Enter');
  await page.locator('#key-dialog').waitFor({ state: 'hidden', timeout: 10_000 });
}

/** A full-page screenshot in HEARTH_SCREENSHOTS (when set). */
export async function shot(page, name) {
  if (!SHOTS) return null;
  mkdirSync(SHOTS, { recursive: true });
  const path = join(SHOTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/** Opens the settings panel and sets fields: {max_tokens, tool_choice, temperature, seed}. */
export async function setSettings(page, s) {
  const details = page.getByTestId('settings');
  if (!(await details.evaluate((d) => d.open))) await details.locator('summary').click();
  if (s.tool_choice !== undefined) {
    // The tool list arrives from /v1/plugins: wait for the option.
    if (!['auto', 'none', 'required'].includes(s.tool_choice)) {
      await page.locator(`[data-testid="tool-choice"] option[value="${s.tool_choice}"]`).waitFor({ state: 'attached', timeout: 10_000 });
    }
    await page.getByTestId('tool-choice').selectOption(s.tool_choice);
  }
  for (const [key, testid] of [
    ['max_tokens', 'max-tokens'],
    ['temperature', 'temperature'],
    ['top_p', 'top-p'],
    ['seed', 'seed'],
  ]) {
    if (s[key] !== undefined) {
      const input = page.getByTestId(testid);
      await input.fill(String(s[key]));
      await input.dispatchEvent('change');
    }
  }
}

/** Types `text` into the message box and presses Enter. */
export async function sendMessage(page, text) {
  const input = page.getByTestId('message-input');
  await input.fill(text);
  await input.press('Enter');
}

/** Waits until no answer is being generated (Send is back). */
export async function waitIdle(page, timeout = 60_000) {
  await page.getByTestId('send').waitFor({ state: 'visible', timeout });
  await page.waitForFunction(() => !document.querySelector('[data-testid="generating"]'), null, { timeout });
}

/** GET /v1/status from node. */
export async function serverStatus() {
  const r = await fetch(`${BASE}/v1/status`, { headers: { Authorization: `Bearer ${API_KEY}` } });
  assert.equal(r.status, 200, 'GET /v1/status');
  return r.json();
}

/** Waits until the server has no generation in flight (so tests do not overlap). */
export async function waitServerIdle(timeout = 60_000) {
  const until = Date.now() + timeout;
  for (;;) {
    const s = await serverStatus();
    if (s.queue.in_flight === 0 && s.queue.queued.every((n) => n === 0)) return s;
    if (Date.now() > until) throw new Error(`server still busy: ${JSON.stringify(s.queue)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** An admin request from node. */
export async function admin(method, path, body) {
  const r = await fetch(`${BASE}${path}`, {
    method,
    headers: { Authorization: `Bearer ${ADMIN_KEY}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: r.status, body: await r.json().catch(() => null) };
}
