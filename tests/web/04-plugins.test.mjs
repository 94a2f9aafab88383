// Plugins view: the public list first, then the admin list once the admin
// key is entered (versions, source badges, permissions in words); disabling
// notes removes notes.* from the chat view's offered tools, enabling it
// brings them back.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, openPage, assertClean, shot, enterAdminKey, admin } from './helpers.mjs';

let browser;
before(async () => {
  browser = await launch();
  // Start from every plugin enabled.
  for (const ns of ['calc', 'notes', 'weather']) await admin('POST', `/v1/admin/plugins/${ns}/enable`, {});
});
after(async () => {
  await admin('POST', '/v1/admin/plugins/notes/enable', {}).catch(() => {});
  await browser?.close();
});

/** Goes to the chat view and waits (10 s at most) until the offered tools satisfy `ready`. */
async function offeredTools(page, ready) {
  await page.getByTestId('nav-chat').click();
  const until = Date.now() + 10_000;
  for (;;) {
    const names = await page.getByTestId('offered-tools').locator('li').allTextContents();
    if (ready(names) || Date.now() > until) return names;
    await page.waitForTimeout(100);
  }
}

test('plugins: admin list, permissions in words, disable and enable notes', async () => {
  const { context, page, problems } = await openPage(browser, { hash: '#/plugins' });
  try {
    // Public list first, with the Manage button.
    await page.locator('[data-testid="plugin-card"][data-namespace="calc"]').waitFor();
    assert.equal(await page.getByTestId('plugin-toggle').count(), 0, 'no toggles without the admin key');
    await page.getByTestId('plugins-manage').click();
    await enterAdminKey(page);
    await page.getByTestId('plugin-toggle').first().waitFor();
    assert.equal(await page.getByTestId('plugins-manage').isVisible(), false);
    // The admin key is kept in memory only.
    const stored = await page.evaluate(() => [...Object.entries(localStorage), ...Object.entries(sessionStorage)]);
    for (const [name, value] of stored) {
      assert.notEqual(value, process.env.HEARTH_ADMIN_KEY, `the admin key is not stored (${name})`);
      assert.equal(/admin/i.test(name), false, `no admin entry in storage (${name})`);
    }

    for (const ns of ['calc', 'notes', 'weather']) {
      const card = page.locator(`[data-testid="plugin-card"][data-namespace="${ns}"]`);
      await card.waitFor();
      assert.match(await card.getByTestId('plugin-version').innerText(), /^v\d+\.\d+\.\d+/, `${ns} version`);
      assert.match(await card.getByTestId('plugin-source').innerText(), /^(bundled|registry|local)$/, `${ns} source badge`);
      const perms = await card.getByTestId('plugin-permissions').locator('li').allInnerTexts();
      assert.ok(perms.some((p) => /MiB of memory/.test(p)), `${ns} permissions in words: ${perms}`);
      assert.ok(perms.some((p) => /ms per call/.test(p)), `${ns} time limit in words: ${perms}`);
      assert.equal(await card.getAttribute('data-enabled'), 'true');
    }
    const notesPerms = await page.locator('[data-testid="plugin-card"][data-namespace="notes"] [data-testid="plugin-permissions"] li').allInnerTexts();
    assert.ok(notesPerms.includes('its own key-value store'), `notes: ${notesPerms}`);
    assert.equal(await page.locator('[data-testid="plugin-card"][data-namespace="calc"] [data-testid="plugin-source"]').innerText(), 'bundled');
    await shot(page, '04-plugins-admin');

    // Disable notes.
    const notes = page.locator('[data-testid="plugin-card"][data-namespace="notes"]');
    await notes.getByTestId('plugin-toggle').click();
    await page.locator('[data-testid="plugin-card"][data-namespace="notes"][data-enabled="false"]').waitFor();
    assert.match(await notes.getByTestId('plugin-state').innerText(), /disabled/);
    assert.equal(await notes.getByTestId('plugin-toggle').innerText(), 'Enable');
    assert.match(await page.getByTestId('plugins-message').innerText(), /Disabled notes/);
    await shot(page, '04-plugins-notes-disabled');

    let tools = await offeredTools(page, (names) => names.includes('calc.eval') && !names.some((n) => n.startsWith('notes.')));
    assert.ok(tools.includes('calc.eval'), `calc stays: ${tools}`);
    assert.equal(tools.filter((t) => t.startsWith('notes.')).length, 0, `notes.* left the offered tools: ${tools}`);
    await page.getByTestId('settings').locator('summary').click();
    await shot(page, '04-chat-offered-without-notes');

    // Enable it again (the admin key is still in memory: no prompt).
    await page.getByTestId('nav-plugins').click();
    await page.locator('[data-testid="plugin-card"][data-namespace="notes"] [data-testid="plugin-toggle"]').click();
    await page.locator('[data-testid="plugin-card"][data-namespace="notes"][data-enabled="true"]').waitFor();
    assert.equal(await page.getByTestId('admin-key-input').count() === 0 || !(await page.getByTestId('admin-key-input').isVisible()), true);
    await page.getByTestId('nav-chat').click();
    await page.locator('[data-testid="offered-tools"] li', { hasText: 'notes.list' }).waitFor();
    tools = await page.getByTestId('offered-tools').locator('li').allInnerTexts();
    assert.ok(tools.includes('notes.save') && tools.includes('notes.list'), `notes.* back: ${tools}`);
    assertClean(problems);
  } finally {
    await context.close();
  }
});

test('plugins: a wrong admin key is refused and asked for again', async () => {
  const { context, page, problems } = await openPage(browser, { hash: '#/plugins' });
  try {
    await page.locator('[data-testid="plugin-card"]').first().waitFor();
    await page.getByTestId('plugins-manage').click();
    const input = page.getByTestId('admin-key-input');
    await input.fill('wrong-key');
    await input.press('Enter');
    // Asked again, saying why.
    await page.locator('#key-dialog-error', { hasText: 'refused' }).waitFor();
    await shot(page, '04-plugins-wrong-admin-key');
    await page.getByTestId('key-cancel').click();
    await page.locator('#key-dialog').waitFor({ state: 'hidden' });
    assert.equal(await page.getByTestId('plugin-toggle').count(), 0);
    assert.match(await page.getByTestId('plugins-message').innerText(), /admin key/i);
    assertClean(problems);
  } finally {
    await context.close();
  }
});
