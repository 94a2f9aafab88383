// A forced tool call: tool choice calc.eval → a tool card (namespace calc,
// tool eval) appears inline with its arguments, then its result or error
// and the time taken; the card is collapsible.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, openPage, assertClean, shot, setSettings, sendMessage, waitIdle, waitServerIdle } from './helpers.mjs';

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

test('chat: a forced calc.eval call shows a tool card with arguments, result and time', async () => {
  await waitServerIdle();
  const { context, page, problems } = await openPage(browser);
  try {
    await setSettings(page, { max_tokens: 48, tool_choice: 'calc.eval' });
    await sendMessage(page, 'What is 6 times 7?');
    const card = page.getByTestId('tool-card').first();
    await card.waitFor({ timeout: 60_000 });
    assert.equal(await card.getAttribute('data-namespace'), 'calc');
    assert.equal(await card.getAttribute('data-tool'), 'eval');
    assert.equal(await card.getByTestId('tool-card-namespace').innerText(), 'calc');
    assert.equal(await card.getByTestId('tool-card-tool').innerText(), 'eval');
    // The card sits inside the assistant's answer.
    assert.equal(await page.getByTestId('assistant-message').last().getByTestId('tool-card').count() >= 1, true);
    const args = JSON.parse(await card.getByTestId('tool-card-arguments').innerText());
    assert.equal(typeof args, 'object', 'arguments are pretty-printed JSON');
    assert.ok('expression' in args, `arguments name the expression: ${JSON.stringify(args)}`);

    const result = card.getByTestId('tool-card-result');
    await result.waitFor({ timeout: 30_000 });
    const state = await card.getAttribute('data-state');
    assert.ok(['ok', 'error'].includes(state), `finished state: ${state}`);
    const resultText = await result.innerText();
    assert.ok(resultText.length > 0, 'the result or error has text');
    if (state === 'ok') JSON.parse(resultText); // a result is pretty-printed JSON
    assert.match(await card.getByTestId('tool-card-ms').innerText(), /^\d+(\.\d)? ms$/, 'time taken');

    await waitIdle(page);
    await shot(page, '02-tool-card');

    // Collapsible: the summary toggles it.
    assert.equal(await card.evaluate((d) => d.tagName), 'DETAILS');
    const wasOpen = await card.evaluate((d) => d.open);
    await card.locator('summary').click();
    assert.equal(await card.evaluate((d) => d.open), !wasOpen);
    assert.equal(await result.isVisible(), !wasOpen);
    await card.locator('summary').click();
    assert.equal(await card.evaluate((d) => d.open), wasOpen);

    // The card was saved with the conversation and comes back after a reload,
    // but the request history sends only text messages.
    const stored = await page.evaluate(() => JSON.parse(localStorage.getItem('hearth.conversations')));
    const parts = stored[0].messages.at(-1).parts;
    assert.ok(parts.some((p) => p.type === 'tool' && p.name === 'calc.eval'), 'the tool card is stored');
    await page.reload();
    const again = page.getByTestId('tool-card').first();
    await again.waitFor();
    assert.equal(await again.getAttribute('data-namespace'), 'calc');
    assert.equal(await again.getAttribute('data-state'), state);
    // A follow-up sends only {role, content} messages of user and assistant.
    await setSettings(page, { max_tokens: 8, tool_choice: 'none' });
    const requestBody = page.waitForRequest((r) => r.url().endsWith('/v1/chat/completions'));
    await sendMessage(page, 'Thanks');
    const sent = JSON.parse((await requestBody).postData());
    for (const m of sent.messages) {
      assert.deepEqual(Object.keys(m).sort(), ['content', 'role']);
      assert.ok(['user', 'assistant'].includes(m.role));
    }
    assert.equal(sent.stream, true);
    assert.deepEqual(sent.stream_options, { include_usage: true, include_tool_events: true });
    assert.equal(sent.tool_choice, 'none');
    assert.equal('seed' in sent, false, 'an empty seed is left out');
    await waitIdle(page);
    assertClean(problems);
  } finally {
    await context.close();
  }
});

test('chat: a specific tool is sent as a function tool_choice', async () => {
  await waitServerIdle();
  const { context, page, problems } = await openPage(browser);
  try {
    await setSettings(page, { max_tokens: 8, tool_choice: 'calc.eval', seed: 7 });
    const requestBody = page.waitForRequest((r) => r.url().endsWith('/v1/chat/completions'));
    await sendMessage(page, '2+2?');
    const sent = JSON.parse((await requestBody).postData());
    assert.deepEqual(sent.tool_choice, { type: 'function', function: { name: 'calc.eval' } });
    assert.equal(sent.seed, 7);
    assert.equal(sent.max_tokens, 8);
    assert.equal(typeof sent.temperature, 'number');
    assert.equal(typeof sent.top_p, 'number');
    await waitIdle(page);
    // Settings persist in localStorage.
    const saved = await page.evaluate(() => JSON.parse(localStorage.getItem('hearth.settings')));
    assert.equal(saved.tool_choice, 'calc.eval');
    assert.equal(saved.seed, 7);
    await page.reload();
    assert.equal(await page.getByTestId('max-tokens').inputValue(), '8');
    assertClean(problems);
  } finally {
    await context.close();
  }
});

test('chat: an error answer is shown inline with its message', async () => {
  await waitServerIdle();
  const { context, page, problems } = await openPage(browser);
  problems.allow = [/status of 400/];
  try {
    // A tool choice naming a tool the server does not offer (kept in settings
    // from an earlier session) is refused with 400.
    await page.evaluate(() => localStorage.setItem('hearth.settings', JSON.stringify({ max_tokens: 8, tool_choice: 'nosuch.tool' })));
    await page.reload();
    await page.locator('[data-testid="tool-choice"] option[value="nosuch.tool"]').waitFor({ state: 'attached' });
    await sendMessage(page, 'Hello');
    const error = page.getByTestId('assistant-message').last().getByTestId('message-error');
    await error.waitFor();
    assert.match(await error.innerText(), /Error 400: .*nosuch\.tool/);
    await waitIdle(page);
    assert.equal(await page.getByTestId('send').isEnabled(), true);
    await shot(page, '02-error-inline');
    assertClean(problems);
  } finally {
    await context.close();
  }
});
