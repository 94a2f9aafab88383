// Conversations persist across a reload; Export downloads JSON holding
// them; importing a malformed file shows an error naming the problem and
// keeps the existing conversations; a valid import adds conversations.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { launch, openPage, assertClean, shot, setSettings, sendMessage, waitIdle, waitServerIdle } from './helpers.mjs';

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

async function importText(page, name, text) {
  await page.getByTestId('import-file').setInputFiles({ name, mimeType: 'application/json', buffer: Buffer.from(text) });
}

test('conversations: persist, export, import (bad and good)', async () => {
  await waitServerIdle();
  const { context, page, problems } = await openPage(browser);
  try {
    await setSettings(page, { max_tokens: 12, tool_choice: 'none' });
    await sendMessage(page, 'Remember the word persimmon.');
    await waitIdle(page);
    await page.getByTestId('new-chat').click();
    await sendMessage(page, 'A second conversation here.');
    await waitIdle(page);
    assert.equal(await page.getByTestId('conversation').count(), 2);

    await page.reload();
    await page.getByTestId('conversation').first().waitFor();
    const titles = await page.locator('[data-testid="conversation"] .conversation-title').allInnerTexts();
    assert.deepEqual(titles, ['A second conversation here.', 'Remember the word persimmon.']);
    await page.getByTestId('conversation').nth(1).click();
    assert.equal(await page.getByTestId('user-message').first().innerText().then((t) => t.includes('persimmon')), true);
    assert.equal(await page.getByTestId('assistant-message').count(), 1, 'the answer came back after the reload');
    const stored = await page.evaluate(() => JSON.parse(localStorage.getItem('hearth.conversations')));
    for (const c of stored) {
      for (const key of ['id', 'title', 'created', 'messages', 'settings']) assert.ok(key in c, `conversation has ${key}`);
    }

    // Export.
    const downloading = page.waitForEvent('download');
    await page.getByTestId('export').click();
    const download = await downloading;
    assert.match(download.suggestedFilename(), /\.json$/);
    const exported = JSON.parse(await readFile(await download.path(), 'utf8'));
    assert.ok(Array.isArray(exported.conversations));
    assert.deepEqual(exported.conversations.map((c) => c.title).sort(), [...titles].sort());
    assert.ok(exported.conversations.every((c) => c.messages.length >= 2));

    // Malformed imports: clear errors, nothing changed.
    const before = await page.evaluate(() => localStorage.getItem('hearth.conversations'));
    const message = page.getByTestId('import-message');
    await importText(page, 'broken.json', '{"conversations": [ {"title": "x", ');
    await page.locator('[data-testid="import-message"][data-state="error"]').waitFor();
    assert.match(await message.innerText(), /not valid JSON/);
    await importText(page, 'shape.json', JSON.stringify({ conversations: [{ id: 'a', title: 't', messages: [{ role: 'user', content: 'ok' }, { role: 'robot', content: 'no' }] }] }));
    await page.locator('[data-testid="import-message"]', { hasText: 'conversations[0].messages[1].role' }).waitFor();
    await shot(page, '07-import-error');
    await importText(page, 'object.json', JSON.stringify({ hello: 1 }));
    await page.locator('[data-testid="import-message"]', { hasText: '"conversations"' }).waitFor();
    await importText(page, 'messages.json', JSON.stringify([{ title: 't', messages: 'nope' }]));
    await page.locator('[data-testid="import-message"]', { hasText: 'conversations[0].messages must be an array' }).waitFor();
    assert.match(await message.innerText(), /not changed/);
    assert.equal(await page.evaluate(() => localStorage.getItem('hearth.conversations')), before, 'existing conversations kept');
    assert.equal(await page.getByTestId('conversation').count(), 2);

    // A valid import (the export itself) adds its conversations.
    await importText(page, 'good.json', JSON.stringify(exported));
    await page.locator('[data-testid="import-message"][data-state="ok"]').waitFor();
    assert.equal(await page.getByTestId('conversation').count(), 4, 'imported conversations are added');
    const ids = await page.evaluate(() => JSON.parse(localStorage.getItem('hearth.conversations')).map((c) => c.id));
    assert.equal(new Set(ids).size, 4, 'clashing ids were renewed');
    await shot(page, '07-imported');
    assertClean(problems);
  } finally {
    await context.close();
  }
});
