// Stop: aborting the fetch keeps the partial answer (marked stopped), makes
// Send usable again, and the server cancels the generation.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, openPage, assertClean, shot, setSettings, sendMessage, serverStatus, waitServerIdle } from './helpers.mjs';

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

test('chat: Stop aborts the answer and the server cancels the generation', async () => {
  await waitServerIdle();
  const { context, page, problems } = await openPage(browser);
  try {
    await setSettings(page, { max_tokens: 2000, tool_choice: 'none', temperature: 0.9 });
    await sendMessage(page, 'Write a very long essay about the history of the world, in great detail.');
    const assistant = page.getByTestId('assistant-message').last();
    // Wait until some text has arrived.
    await page.waitForFunction(() => {
      const all = document.querySelectorAll('[data-testid="assistant-message"] .message-body');
      const last = all[all.length - 1];
      return last && last.textContent.trim().length > 0;
    }, null, { timeout: 60_000 });
    const during = await serverStatus();
    assert.ok(during.queue.in_flight >= 1, 'a generation is in flight before Stop');
    const stoppedAt = Date.now();
    await page.getByTestId('stop').click();

    await assistant.getByTestId('stopped').waitFor({ timeout: 5000 });
    assert.match(await assistant.getByTestId('stopped').innerText(), /stopped/i);
    const partial = (await assistant.locator('.message-body').innerText()).trim();
    assert.ok(partial.length > 0, 'the partial answer stays');
    await page.getByTestId('send').waitFor({ state: 'visible' });
    assert.equal(await page.getByTestId('send').isEnabled(), true, 'Send is usable again');
    assert.equal(await page.getByTestId('stop').isVisible(), false, 'Stop is gone');

    // The server cancelled the generation, long before 2000 tokens.
    let status;
    for (;;) {
      status = await serverStatus();
      if (status.queue.in_flight === 0) break;
      assert.ok(Date.now() - stoppedAt < 5000, `in_flight still ${status.queue.in_flight} 5 s after Stop`);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(status.queue.in_flight, 0);

    // The stopped mark is saved with the conversation.
    const stored = await page.evaluate(() => JSON.parse(localStorage.getItem('hearth.conversations')));
    const last = stored[0].messages.at(-1);
    assert.equal(last.role, 'assistant');
    assert.equal(last.meta.stopped, true);
    assert.ok(last.content.length > 0);
    await shot(page, '03-stopped-answer');
    assertClean(problems);
  } finally {
    await context.close();
  }
});
