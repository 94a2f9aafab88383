// Installing from the registry with consent: the permissions text is shown
// verbatim, Install stays disabled until the grant box is checked, and the
// installed plugin's card shows source registry.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, openPage, assertClean, shot, enterAdminKey, admin } from './helpers.mjs';

let browser;
before(async () => {
  browser = await launch();
  // Rerunnable: a weather installed from the registry by an earlier run is
  // removed first (the bundled one comes back).
  const list = await admin('GET', '/v1/admin/plugins');
  assert.equal(list.status, 200);
  const weather = list.body.data.find((p) => p.namespace === 'weather');
  if (weather && weather.source === 'registry') await admin('DELETE', '/v1/admin/plugins/weather');
});
after(async () => {
  await browser?.close();
});

test('plugins: install weather from the registry after granting its permissions', async () => {
  const { context, page, problems } = await openPage(browser, { hash: '#/plugins' });
  // The 409 permissions_required answer is logged by the browser.
  problems.allow = [/status of 409/];
  try {
    await page.locator('[data-testid="plugin-card"]').first().waitFor();
    await page.getByTestId('install-input').fill('weather');
    await page.getByTestId('install-check').click();
    await enterAdminKey(page);

    const consent = page.getByTestId('consent-text');
    await consent.waitFor();
    const text = await consent.textContent();
    assert.match(text, /weather@\S+ asks for/, `consent text: ${text}`);
    assert.match(text, /http to https:\/\/wttr\.in/);
    // Exactly what the server sent.
    const direct = await admin('POST', '/v1/admin/plugins', { plugin: 'weather' });
    assert.equal(direct.status, 409);
    assert.equal(text, direct.body.permissions, 'the consent text is the server’s text, verbatim');
    assert.equal(await consent.evaluate((e) => e.tagName), 'PRE');

    const confirm = page.getByTestId('install-confirm');
    assert.equal(await confirm.isDisabled(), true, 'Install is disabled before granting');
    await page.getByTestId('consent-grant').check();
    assert.equal(await confirm.isEnabled(), true, 'Install is enabled once granted');
    await page.getByTestId('consent-grant').uncheck();
    assert.equal(await confirm.isDisabled(), true, 'and disabled again when unchecked');
    await page.getByTestId('consent-grant').check();
    await shot(page, '05-install-consent');

    const installRequest = page.waitForRequest((r) => r.url().endsWith('/v1/admin/plugins') && r.method() === 'POST' && (r.postData() || '').includes('grant'));
    await confirm.click();
    const sent = JSON.parse((await installRequest).postData());
    assert.deepEqual(sent, { plugin: 'weather', grant: text }, 'the grant is exactly the text received');

    const result = page.getByTestId('install-result');
    await page.locator('[data-testid="install-result"][data-kind="ok"]').waitFor({ timeout: 60_000 });
    assert.match(await result.innerText(), /Installed weather@\d+\.\d+\.\d+/);
    assert.equal(await page.getByTestId('consent').isVisible(), false, 'the consent box is cleared');
    const card = page.locator('[data-testid="plugin-card"][data-namespace="weather"]');
    await page.locator('[data-testid="plugin-card"][data-namespace="weather"] [data-testid="plugin-source"]', { hasText: 'registry' }).waitFor();
    assert.equal(await card.getByTestId('plugin-source').innerText(), 'registry');
    await shot(page, '05-install-done');

    // Cancel clears a consent box; an unknown plugin shows the server's message.
    await page.getByTestId('install-input').fill('no-such-plugin');
    problems.allow.push(/status of 400/);
    await page.getByTestId('install-check').click();
    await page.locator('[data-testid="install-result"][data-kind="error"]').waitFor();
    assert.match(await result.innerText(), /no-such-plugin/);
    assertClean(problems);
  } finally {
    await context.close();
  }
});
