// Sending a message: Enter sends, Shift+Enter inserts a newline; the
// assistant message streams in (grows) and ends with usage information.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, openPage, assertClean, shot, setSettings, waitIdle, waitServerIdle } from './helpers.mjs';

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

test('chat: Enter sends, Shift+Enter is a newline, the answer streams and ends with usage', async () => {
  await waitServerIdle();
  const { context, page, problems } = await openPage(browser);
  try {
    await setSettings(page, { max_tokens: 32, tool_choice: 'none', temperature: 0.7 });
    const input = page.getByTestId('message-input');
    await input.click();
    await input.type('Hello there');
    await input.press('Shift+Enter');
    await input.type('Tell me a short story about a cat.');
    assert.equal(await input.inputValue(), 'Hello there\nTell me a short story about a cat.', 'Shift+Enter inserted a newline');
    assert.equal(await page.getByTestId('user-message').count(), 0, 'Shift+Enter did not send');

    // Record the answer's text length as it streams.
    await page.evaluate(() => {
      window.__lengths = [];
      const log = document.querySelector('[data-testid="messages"]');
      new MutationObserver(() => {
        const all = document.querySelectorAll('[data-testid="assistant-message"] .message-body');
        const last = all[all.length - 1];
        if (last) window.__lengths.push(last.textContent.length);
      }).observe(log, { subtree: true, childList: true, characterData: true });
    });
    await input.press('Enter');
    await page.getByTestId('user-message').first().waitFor();
    assert.equal(await input.inputValue(), '', 'the box is cleared after sending');
    const userText = await page.getByTestId('user-message').first().locator('.message-body').innerText();
    assert.match(userText, /Hello there\s*\n\s*Tell me a short story/, 'the user message keeps its line break');
    const assistant = page.getByTestId('assistant-message').last();
    await assistant.waitFor();
    await page.getByTestId('stop').waitFor({ state: 'visible' });
    assert.equal(await page.getByTestId('messages').getAttribute('aria-live'), 'polite');

    await waitIdle(page);
    const usage = assistant.getByTestId('usage');
    await usage.waitFor();
    const usageText = await usage.innerText();
    assert.match(usageText, /\d+ tokens/, `usage shows tokens: ${usageText}`);
    assert.match(usageText, /\d+(\.\d)? s/, 'usage shows the elapsed time');
    assert.match(usageText, /tokens\/s/, 'usage shows tokens per second');

    const lengths = await page.evaluate(() => window.__lengths);
    const distinct = [...new Set(lengths.filter((n) => n > 0))];
    assert.ok(distinct.length >= 2, `the answer grew in steps while streaming (lengths seen: ${distinct.join(',')})`);
    const answer = (await assistant.locator('.message-body').innerText()).trim();
    assert.ok(answer.length > 0, 'the answer has text');
    assert.equal(await page.getByTestId('send').isEnabled(), true, 'Send is usable again');
    // The conversation got its title from the first user message.
    const title = await page.getByTestId('conversation').first().locator('.conversation-title').innerText();
    assert.equal(title, 'Hello there Tell me a short story about a cat.');
    await shot(page, '01-chat-streamed-answer');
    assertClean(problems);
  } finally {
    await context.close();
  }
});
