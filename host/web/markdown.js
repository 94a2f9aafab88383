// A small Markdown renderer that builds DOM nodes only (never HTML
// strings). Model and user text is untrusted: anything this renderer does
// not recognise stays literal text, and links are made only for http(s)
// URLs.
//
// Blocks: paragraphs, headings (# .. ###), fenced ``` code blocks (the info
// string shown as a label), bullet and numbered lists, blockquotes.
// Inline: **bold**, *italic*, `code`, [text](http(s) URL), bare http(s)
// URLs, backslash escapes.

import { h } from './dom.js';

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,3})\s+(.*?)\s*#*\s*$/;
const BULLET = /^ {0,3}[-*+]\s+(.*)$/;
const ORDERED = /^ {0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const BLANK = /^\s*$/;

/** Renders `text` as a DocumentFragment. */
export function renderMarkdown(text) {
  const frag = document.createDocumentFragment();
  const lines = String(text ?? '').replace(/\r\n?/g, '\n').split('\n');
  renderBlocks(lines, frag, 0);
  return frag;
}

function renderBlocks(lines, parent, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (BLANK.test(line)) {
      i++;
      continue;
    }
    let m;
    if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const lang = m[2];
      const body = [];
      i++;
      while (i < lines.length && !isClosingFence(lines[i], fence)) {
        body.push(lines[i]);
        i++;
      }
      i++; // the closing fence (or past the end while still streaming)
      parent.append(codeBlock(body.join('\n'), lang));
      continue;
    }
    if ((m = HEADING.exec(line))) {
      const level = m[1].length;
      const el = h(`h${level + 2}`, { class: `md-h md-h${level}` });
      renderInline(m[2], el);
      parent.append(el);
      i++;
      continue;
    }
    if (QUOTE.test(line) && depth < 8) {
      const inner = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        inner.push(m[1]);
        i++;
      }
      const bq = h('blockquote');
      renderBlocks(inner, bq, depth + 1);
      parent.append(bq);
      continue;
    }
    if (BULLET.test(line) || ORDERED.test(line)) {
      const ordered = !BULLET.test(line);
      const re = ordered ? ORDERED : BULLET;
      const list = h(ordered ? 'ol' : 'ul');
      if (ordered) {
        const start = Number(ORDERED.exec(line)[1]);
        if (start !== 1) list.setAttribute('start', String(start));
      }
      let item = null;
      while (i < lines.length) {
        const l = lines[i];
        const im = re.exec(l);
        if (im) {
          item = [ordered ? im[2] : im[1]];
          list.append(listItem(item));
          i++;
        } else if (!BLANK.test(l) && /^\s{2,}\S/.test(l) && item) {
          // An indented continuation line of the item before.
          const li = list.lastChild;
          item.push(l.trim());
          li.replaceWith(listItem(item));
          i++;
        } else {
          break;
        }
      }
      parent.append(list);
      continue;
    }
    // A paragraph: lines until a blank line or the start of another block.
    const para = [];
    while (i < lines.length) {
      const l = lines[i];
      if (BLANK.test(l) || FENCE.test(l) || HEADING.test(l) || QUOTE.test(l)) break;
      if (para.length && (BULLET.test(l) || ORDERED.test(l))) break;
      para.push(l);
      i++;
    }
    const p = h('p');
    para.forEach((l, k) => {
      if (k > 0) p.append(h('br'));
      renderInline(l, p);
    });
    parent.append(p);
  }
}

function isClosingFence(line, fence) {
  const t = line.trim();
  return t.length >= fence.length && t[0] === fence[0] && /^(`+|~+)$/.test(t);
}

function listItem(lines) {
  const li = h('li');
  lines.forEach((l, k) => {
    if (k > 0) li.append(h('br'));
    renderInline(l, li);
  });
  return li;
}

function codeBlock(code, lang) {
  const wrap = h('div', { class: 'md-code' });
  if (lang) wrap.append(h('span', { class: 'md-code-lang', text: lang }));
  const pre = h('pre');
  const el = h('code', { text: code });
  if (lang) el.dataset.lang = lang;
  pre.append(el);
  wrap.append(pre);
  return wrap;
}

/** Is `url` an absolute http(s) URL? Returns the normalised URL or null. */
export function safeHttpUrl(url) {
  if (!/^https?:\/\//i.test(url)) return null;
  try {
    const u = new URL(url);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return null;
    return u.href;
  } catch {
    return null;
  }
}

function link(href, children) {
  const a = h('a', { href, rel: 'noopener noreferrer', target: '_blank' });
  a.append(...children);
  return a;
}

const ESCAPABLE = '\\`*_{}[]()#+-.!>~|<';
const BARE_URL = /^https?:\/\/[^\s<>"'`]+/i;

/** Renders inline Markdown of `text` into `parent`. */
export function renderInline(text, parent, inLink = false) {
  let buf = '';
  const flush = () => {
    if (buf) parent.append(document.createTextNode(buf));
    buf = '';
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    // Backslash escapes.
    if (c === '\\' && i + 1 < text.length && ESCAPABLE.includes(text[i + 1])) {
      buf += text[i + 1];
      i += 2;
      continue;
    }
    // Code spans: a run of backticks closed by the same run.
    if (c === '`') {
      let n = 1;
      while (text[i + n] === '`') n++;
      const ticks = '`'.repeat(n);
      const end = text.indexOf(ticks, i + n);
      if (end > i + n - 1 && end !== -1) {
        flush();
        let code = text.slice(i + n, end);
        if (/^ .* $/.test(code)) code = code.slice(1, -1);
        parent.append(h('code', { text: code }));
        i = end + n;
        continue;
      }
      buf += ticks;
      i += n;
      continue;
    }
    // Bold.
    if (c === '*' && text[i + 1] === '*') {
      const end = text.indexOf('**', i + 2);
      if (end > i + 2 && !/\s/.test(text[i + 2]) && !/\s/.test(text[end - 1])) {
        flush();
        const strong = h('strong');
        renderInline(text.slice(i + 2, end), strong, inLink);
        parent.append(strong);
        i = end + 2;
        continue;
      }
      buf += '**';
      i += 2;
      continue;
    }
    // Italic (*x* and _x_ at word boundaries).
    if ((c === '*' || (c === '_' && !/\w/.test(text[i - 1] || ''))) && text[i + 1] && !/\s/.test(text[i + 1])) {
      let end = i + 1;
      let found = -1;
      while ((end = text.indexOf(c, end)) !== -1) {
        if (!/\s/.test(text[end - 1]) && text[end + 1] !== c && (c === '*' || !/\w/.test(text[end + 1] || ''))) {
          found = end;
          break;
        }
        end++;
      }
      if (found > i + 1) {
        flush();
        const em = h('em');
        renderInline(text.slice(i + 1, found), em, inLink);
        parent.append(em);
        i = found + 1;
        continue;
      }
    }
    // Links [text](url): only for http(s) URLs; anything else stays text.
    if (c === '[' && !inLink) {
      const m = matchLink(text, i);
      if (m) {
        const href = safeHttpUrl(m.url);
        if (href) {
          flush();
          const span = h('span');
          renderInline(m.label, span, true);
          parent.append(link(href, [...span.childNodes]));
          i = m.end;
          continue;
        }
        buf += text.slice(i, m.end);
        i = m.end;
        continue;
      }
    }
    // Bare http(s) URLs.
    if ((c === 'h' || c === 'H') && !inLink && !/\w/.test(text[i - 1] || '')) {
      const m = BARE_URL.exec(text.slice(i));
      if (m) {
        let url = m[0].replace(/[.,;:!?)\]]+$/, '');
        const href = safeHttpUrl(url);
        if (href) {
          flush();
          parent.append(link(href, [document.createTextNode(url)]));
          i += url.length;
          continue;
        }
      }
    }
    buf += c;
    i++;
  }
  flush();
}

function matchLink(text, start) {
  // [label](url) with balanced brackets in the label, no spaces in the url.
  let depth = 0;
  let j = start;
  for (; j < text.length; j++) {
    if (text[j] === '\\') {
      j++;
      continue;
    }
    if (text[j] === '[') depth++;
    else if (text[j] === ']') {
      depth--;
      if (depth === 0) break;
    }
  }
  if (depth !== 0 || text[j + 1] !== '(') return null;
  // The URL may contain balanced parentheses (e.g. javascript:alert(1)).
  let k = j + 2;
  let paren = 1;
  for (; k < text.length; k++) {
    if (text[k] === '(') paren++;
    else if (text[k] === ')') {
      paren--;
      if (paren === 0) break;
    } else if (/\s/.test(text[k])) {
      return null;
    }
  }
  if (paren !== 0) return null;
  return { label: text.slice(start + 1, j), url: text.slice(j + 2, k), end: k + 1 };
}
