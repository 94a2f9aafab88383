// Status view: after some chats it shows the model, queue numbers, plugin
// calls and a latency chart (an SVG polyline with a text summary); it polls
// only while shown.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, openPage, assertClean, shot, setSettings, sendMessage, waitIdle, serverStatus, waitServerIdle } from './helpers.mjs';

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

test('status: model, queue, plugin calls and the latency chart', async () => {
  await waitServerIdle();
  const { context, page, problems } = await openPage(browser);
  try {
    await setSettings(page, { max_tokens: 8, tool_choice: 'none' });
    for (const text of ['One', 'Two']) {
      await sendMessage(page, text);
      await waitIdle(page);
    }
    const server = await serverStatus();

    // No polling while another view is shown.
    let polls = 0;
    page.on('request', (r) => {
      if (r.url().endsWith('/v1/status')) polls++;
    });
    await page.waitForTimeout(2500);
    assert.equal(polls, 0, 'the chat view does not poll /v1/status');

    await page.getByTestId('nav-status').click();
    await page.getByTestId('status-model').waitFor();
    assert.equal(await page.getByTestId('status-model').innerText(), server.model);
    const queue = page.getByTestId('status-queue');
    assert.match(await queue.innerText(), /Queued/);
    assert.match(await page.getByTestId('status-queue-depth').innerText(), /^\d+$/);
    assert.match(await page.getByTestId('status-queued-interactive').innerText(), /^\d+$/);
    assert.match(await page.getByTestId('status-in-flight').innerText(), /^\d+$/);
    assert.ok(Number(await page.getByTestId('status-completed').innerText()) >= 2, 'completed counts the chats');
    assert.equal(await page.getByTestId('status-context').innerText(), String(server.context));
    assert.equal(await page.getByTestId('status-parallel').innerText(), String(server.parallel));
    assert.match(await page.getByTestId('status-ttft').innerText(), /\d+ ms/);

    const chart = page.getByTestId('latency-chart');
    await chart.waitFor();
    assert.equal(await chart.evaluate((e) => e.namespaceURI), 'http://www.w3.org/2000/svg');
    assert.ok(await chart.getAttribute('aria-label'));
    assert.match(await chart.locator('title').textContent(), /Latency/);
    const points = await chart.locator('polyline').getAttribute('points');
    assert.ok(points.trim().split(/\s+/).length >= 2, `the polyline has points: ${points}`);
    assert.match(await page.getByTestId('latency-summary').innerText(), /p50 \d+ ms, p95 \d+ ms, max \d+ ms/);

    // It refreshes every 2 s while shown.
    const before = polls;
    await page.waitForTimeout(4500);
    assert.ok(polls - before >= 2, `polled ${polls - before} times in 4.5 s`);
    await shot(page, '09-status');

    // And stops when the view is left.
    await page.getByTestId('nav-chat').click();
    await page.waitForTimeout(300);
    const after = polls;
    await page.waitForTimeout(2500);
    assert.equal(polls, after, 'polling stops when the view is left');
    assertClean(problems);
  } finally {
    await context.close();
  }
});
