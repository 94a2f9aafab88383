// Accessibility: axe-core finds no serious or critical violations on the
// three views (with content: messages, a tool card, admin plugin cards,
// status data); Tab from the top of the chat view reaches the message box
// and then Send; the nav links are real links with aria-current.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { launch, openPage, assertClean, shot, enterAdminKey, waitServerIdle } from './helpers.mjs';

const require = createRequire(import.meta.url);
const AXE = await readFile(require.resolve('axe-core/axe.min.js'), 'utf8');

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

async function axe(page, label) {
  await page.addScriptTag({ content: AXE });
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 5).map((n) => `${n.target.join(' ')}: ${n.failureSummary}`) }));
  });
  const bad = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (violations.length) console.log(`axe (${label}):`, JSON.stringify(violations, null, 2));
  assert.deepEqual(bad, [], `${label}: serious/critical axe violations`);
}

const sample = {
  conversations: [
    {
      id: 'a11y-1',
      title: 'Sample',
      created: Date.now(),
      messages: [
        { role: 'user', content: 'What is **6 × 7**?' },
        {
          role: 'assistant',
          content: 'It is 42.',
          parts: [
            { type: 'tool', id: 'c1', name: 'calc.eval', arguments: '{"expression":"6*7"}', state: 'ok', result: '{"value":"42"}', elapsed_ms: 3 },
            { type: 'tool', id: 'c2', name: 'weather.current', arguments: '{"location":"x"}', state: 'error', error: 'timed out', outcome: 'timeout', elapsed_ms: 10000 },
            { type: 'text', text: 'It is **42**. See [docs](https://example.com).\n\n```js\nconsole.log(42)\n```\n\n> quote\n\n- a\n- b' },
          ],
          meta: { usage: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 }, elapsed_ms: 1000, stopped: true },
        },
      ],
    },
  ],
};

test('accessibility: axe on chat, plugins and status; tab order', async () => {
  await waitServerIdle();
  const { context, page, problems } = await openPage(browser, { contextOptions: { bypassCSP: true } });
  try {
    // Tab order from the top of the chat view reaches the message box, then Send.
    // The key is in sessionStorage now: a reload starts at the top, without a prompt.
    await page.reload();
    await page.getByTestId('nav-chat').waitFor();
    await page.locator('[data-testid="offered-tools"] li').first().waitFor({ state: 'attached' });
    const order = [];
    for (let i = 0; i < 40; i++) {
      await page.keyboard.press('Tab');
      const id = await page.evaluate(() => document.activeElement?.dataset?.testid || document.activeElement?.id || document.activeElement?.tagName);
      order.push(id);
      if (id === 'send') break;
    }
    const input = order.indexOf('message-input');
    const send = order.indexOf('send');
    assert.ok(input >= 0, `Tab reaches the message box: ${order.join(' → ')}`);
    assert.ok(send > input, `then Send: ${order.join(' → ')}`);
    assert.ok(order.indexOf('nav-chat') < input, 'the nav comes first');
    // A visible focus ring on Send.
    const outline = await page.getByTestId('send').evaluate((e) => getComputedStyle(e).outlineStyle);
    assert.notEqual(outline, 'none', 'Send shows a focus ring');

    await page.getByTestId('import-file').setInputFiles({ name: 'sample.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(sample)) });
    await page.getByTestId('tool-card').first().waitFor();
    await page.getByTestId('settings').locator('summary').click();
    await page.locator('[data-testid="offered-tools"] li').first().waitFor();
    assert.equal(await page.getByTestId('nav-chat').getAttribute('aria-current'), 'page');
    await axe(page, 'chat');
    await shot(page, '08-a11y-chat');

    await page.getByTestId('nav-plugins').click();
    await page.getByTestId('plugin-card').first().waitFor();
    await page.getByTestId('plugins-manage').click();
    await enterAdminKey(page);
    await page.getByTestId('plugin-toggle').first().waitFor();
    assert.equal(await page.getByTestId('nav-plugins').getAttribute('aria-current'), 'page');
    await axe(page, 'plugins');
    await shot(page, '08-a11y-plugins');

    await page.getByTestId('nav-status').click();
    await page.getByTestId('status-model').waitFor();
    await axe(page, 'status');
    await shot(page, '08-a11y-status');

    // The key dialog too.
    await page.evaluate(() => sessionStorage.removeItem('hearth.apiKey'));
    await page.reload();
    await page.getByTestId('api-key-input').waitFor();
    await axe(page, 'api key dialog');
    assertClean(problems);
  } finally {
    await context.close();
  }
});
