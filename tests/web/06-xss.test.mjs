// Untrusted text stays inert: a plugin result holding HTML (through a real
// notes.list call), and an imported conversation whose messages and tool
// card hold script payloads, render as literal text; the page is served
// with its Content-Security-Policy. Also: the Markdown renderer's output.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, openPage, assertClean, shot, setSettings, sendMessage, waitIdle, waitServerIdle, BASE, API_KEY } from './helpers.mjs';

const TITLE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>';

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

/** Nothing from a payload became live markup. */
async function assertInert(page) {
  const found = await page.evaluate(() => ({
    xss: typeof window.__xss,
    scripts: [...document.scripts].map((s) => s.getAttribute('src')),
    imgs: [...document.images].map((i) => i.getAttribute('src')),
    handlers: document.querySelectorAll('[onerror],[onload],[onclick],[onmouseover]').length,
    iframes: document.querySelectorAll('iframe,object,embed').length,
    svgs: [...document.querySelectorAll('svg')].map((s) => s.getAttribute('class')),
    jsLinks: [...document.querySelectorAll('a[href]')].filter((a) => !/^(https?:|#)/i.test(a.getAttribute('href'))).length,
  }));
  assert.equal(found.xss, 'undefined', 'window.__xss was never set');
  assert.deepEqual(found.scripts, ['/assets/app.js'], 'the only script is the page’s own');
  assert.deepEqual(found.imgs, ['/assets/icon.svg'], 'the only image is the page’s own');
  assert.equal(found.handlers, 0, 'no event-handler attributes');
  assert.equal(found.iframes, 0);
  assert.ok(found.svgs.every((c) => c === 'latency-chart'), `no payload svg: ${found.svgs}`);
  assert.equal(found.jsLinks, 0, 'no non-http links');
}

test('xss: GET / carries the Content-Security-Policy', async () => {
  const r = await fetch(`${BASE}/`);
  assert.equal(r.status, 200);
  const csp = r.headers.get('content-security-policy');
  assert.ok(csp, 'a CSP header');
  for (const d of ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "form-action 'none'", "base-uri 'none'"]) {
    assert.ok(csp.includes(d), `CSP has ${d}: ${csp}`);
  }
  const html = await r.text();
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/i, 'no inline script');
  assert.doesNotMatch(html, /<style|style=|\son[a-z]+=/i, 'no inline style or handlers');
});

test('xss: a plugin result holding HTML is shown as text in the tool card', async () => {
  await waitServerIdle();
  const saved = await fetch(`${BASE}/v1/plugins/notes/save`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ text: 'x', title: TITLE }),
  });
  assert.equal(saved.status, 200, `notes.save: ${await saved.clone().text()}`);

  const { context, page, problems } = await openPage(browser);
  try {
    await setSettings(page, { max_tokens: 48, tool_choice: 'notes.list' });
    await sendMessage(page, 'List my notes');
    const card = page.locator('[data-testid="tool-card"][data-namespace="notes"]').first();
    await card.waitFor({ timeout: 60_000 });
    const result = card.getByTestId('tool-card-result');
    await result.waitFor({ timeout: 30_000 });
    await waitIdle(page);
    assert.equal(await card.getAttribute('data-state'), 'ok', 'notes.list succeeded');
    const text = await result.textContent();
    assert.ok(text.includes('<script>window.__xss=2</script>'), `the payload is literal text: ${text}`);
    assert.ok(text.includes('<img src=x onerror='), 'the img payload is literal text');
    assert.equal(await result.evaluate((e) => e.tagName), 'PRE');
    assert.equal(await result.locator('*').count(), 0, 'the result holds no elements');
    await page.waitForTimeout(300);
    await assertInert(page);
    await shot(page, '06-xss-tool-result');
    assertClean(problems);
  } finally {
    await context.close();
  }
});

const PAYLOADS = [
  '<script>window.__xss=3</script>',
  '<img src=x onerror="window.__xss=4">',
  '<svg onload="window.__xss=5"></svg>',
  '[x](javascript:alert(1))',
  '[y](JaVaScRiPt:window.__xss=6)',
  '[z](data:text/html,<script>alert(1)</script>)',
  '<a href="javascript:alert(1)">a</a>',
  '<iframe src="javascript:alert(1)"></iframe>',
];

const hostileConversation = {
  conversations: [
    {
      id: 'xss-1',
      title: '<script>window.__xss=7</script>',
      created: Date.now(),
      messages: [
        { role: 'user', content: `Hi ${PAYLOADS.join(' ')}` },
        {
          role: 'assistant',
          content: `# Title <script>window.__xss=8</script>\n\n${PAYLOADS.join('\n\n')}\n\n\`\`\`html\n<script>window.__xss=9</script>\n\`\`\`\n\n- **<img src=x onerror=alert(1)>**\n> <svg onload=alert(1)>`,
          parts: [
            { type: 'text', text: `Before ${PAYLOADS[0]} ${PAYLOADS[3]}` },
            {
              type: 'tool',
              id: 'call-x',
              name: 'notes.<img src=x onerror=alert(1)>',
              arguments: JSON.stringify({ text: PAYLOADS[1], title: PAYLOADS[2] }),
              state: 'ok',
              result: JSON.stringify({ html: PAYLOADS[0], link: PAYLOADS[3] }),
              elapsed_ms: 3,
            },
            {
              type: 'tool',
              id: 'call-y',
              name: 'calc.eval',
              arguments: '{"expression":"<script>alert(1)</script>"}',
              state: 'error',
              error: '<img src=x onerror="window.__xss=10">',
              outcome: 'trap',
              elapsed_ms: 1,
            },
            { type: 'text', text: `After ${PAYLOADS.slice(4).join(' ')}` },
          ],
          meta: { error: '<script>window.__xss=11</script>' },
        },
        { role: 'user', content: PAYLOADS[2] },
        {
          role: 'assistant',
          content: `# Title <script>window.__xss=12</script>\n\n${PAYLOADS.join('\n\n')}\n\n- ${PAYLOADS[1]}\n1. ${PAYLOADS[3]}`,
        },
      ],
    },
  ],
};

test('xss: an imported conversation full of payloads renders as text', async () => {
  const { context, page, problems } = await openPage(browser);
  try {
    await page.getByTestId('import-file').setInputFiles({
      name: 'hostile.json',
      mimeType: 'application/json',
      buffer: Buffer.from(JSON.stringify(hostileConversation)),
    });
    await page.locator('[data-testid="import-message"][data-state="ok"]').waitFor();
    const user = page.getByTestId('user-message').first();
    await user.waitFor();
    assert.ok((await user.textContent()).includes('<script>window.__xss=3</script>'));
    const assistant = page.getByTestId('assistant-message').first();
    const text = await assistant.textContent();
    assert.ok(text.includes('[x](javascript:alert(1))'), 'the javascript: link stays literal text');
    assert.ok(text.includes('<script>window.__xss=11</script>'), 'the error text is literal');
    assert.equal(await assistant.locator('a').count(), 0, 'no links at all in the hostile answer');
    // The plain Markdown answer.
    const second = page.getByTestId('assistant-message').nth(1);
    const text2 = await second.textContent();
    for (const p of PAYLOADS) assert.ok(text2.includes(p), `literal: ${p}`);
    assert.ok(text2.includes('Title <script>window.__xss=12</script>'));
    assert.equal(await second.locator('a').count(), 0, 'no links in the Markdown answer');
    assert.equal(await second.locator('h3').count(), 1, 'the heading is still a heading');
    const cards = assistant.getByTestId('tool-card');
    assert.equal(await cards.count(), 2);
    assert.ok((await cards.nth(0).getByTestId('tool-card-arguments').textContent()).includes('<img src=x onerror='));
    assert.ok((await cards.nth(0).getByTestId('tool-card-result').textContent()).includes('<script>window.__xss=3</script>'));
    assert.equal(await cards.nth(1).getAttribute('data-state'), 'error');
    assert.ok((await cards.nth(1).getByTestId('tool-card-result').textContent()).includes('<img src=x'));
    assert.ok((await page.getByTestId('conversation').first().textContent()).includes('<script>window.__xss=7</script>'));

    // Reloading renders it again from localStorage, still inert.
    await page.reload();
    await page.getByTestId('assistant-message').first().waitFor();
    await page.waitForTimeout(300);
    await assertInert(page);
    await shot(page, '06-xss-imported');
    assertClean(problems);
  } finally {
    await context.close();
  }
});

test('markdown: the renderer builds the expected elements', async () => {
  const md = [
    '# Heading one',
    '## Heading two',
    '### Heading three',
    'Some **bold**, *italic* and `inline code` with a [link](https://example.com/a?b=1) and https://example.org/x.',
    '',
    '```rust',
    'fn main() { println!("<b>hi</b>"); }',
    '```',
    '',
    '- one',
    '- two *em*',
    '',
    '1. first',
    '2. second',
    '',
    '> quoted **text**',
    '',
    '#### four hashes stay text',
  ].join('\n');
  const doc = { conversations: [{ id: 'md-1', title: 'Markdown', created: 1, messages: [{ role: 'user', content: 'show me **markdown**' }, { role: 'assistant', content: md }] }] };
  const { context, page, problems } = await openPage(browser);
  try {
    await page.getByTestId('import-file').setInputFiles({ name: 'md.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(doc)) });
    const a = page.getByTestId('assistant-message').first();
    await a.waitFor();
    const body = a.locator('.message-body');
    assert.equal(await body.locator('h3').innerText(), 'Heading one');
    assert.equal(await body.locator('h4').innerText(), 'Heading two');
    assert.equal(await body.locator('h5').innerText(), 'Heading three');
    assert.equal(await body.locator('p strong').first().innerText(), 'bold');
    assert.equal(await body.locator('p em').first().innerText(), 'italic');
    assert.equal(await body.locator('p code').first().innerText(), 'inline code');
    const links = body.locator('a');
    assert.equal(await links.count(), 2);
    assert.equal(await links.nth(0).getAttribute('href'), 'https://example.com/a?b=1');
    assert.equal(await links.nth(0).getAttribute('rel'), 'noopener noreferrer');
    assert.equal(await links.nth(0).getAttribute('target'), '_blank');
    assert.equal(await links.nth(1).getAttribute('href'), 'https://example.org/x');
    assert.equal(await body.locator('pre code').innerText(), 'fn main() { println!("<b>hi</b>"); }');
    assert.equal(await body.locator('.md-code-lang').innerText(), 'rust');
    assert.deepEqual(await body.locator('ul > li').allInnerTexts(), ['one', 'two em']);
    assert.deepEqual(await body.locator('ol > li').allInnerTexts(), ['first', 'second']);
    assert.equal(await body.locator('blockquote strong').innerText(), 'text');
    assert.ok((await body.innerText()).includes('#### four hashes stay text'));
    assert.equal(await page.getByTestId('user-message').locator('strong').innerText(), 'markdown', 'user messages are Markdown too');
    await shot(page, '06-markdown');
    assertClean(problems);
  } finally {
    await context.close();
  }
});
