// The chat view: conversations (sidebar, export, import), the message
// box, streaming answers with inline tool cards, and the settings panel.

import { apiFetch, readError, readEvents, describeError, jsonOrThrow } from './api.js';
import { h, clear, byId, prettyJson } from './dom.js';
import { renderMarkdown } from './markdown.js';
import {
  loadConversations,
  saveConversations,
  loadSettings,
  saveSettings,
  normaliseSettings,
  exportDocument,
  validateConversations,
  ImportError,
  newId,
  titleOf,
  DEFAULT_SETTINGS,
} from './store.js';

const state = {
  conversations: [],
  currentId: null,
  settings: { ...DEFAULT_SETTINGS },
  tools: [], // tool names offered by the server
  toolsLoaded: false,
  live: null, // {conversation, message, controller, view}
};

let els = null;

export function initChat() {
  els = {
    list: byId('conversation-list'),
    newChat: byId('new-chat'),
    exportBtn: byId('export'),
    importFile: byId('import-file'),
    importMessage: byId('import-message'),
    messages: byId('messages'),
    composer: byId('composer'),
    input: byId('message-input'),
    send: byId('send'),
    stop: byId('stop'),
    temperature: byId('set-temperature'),
    topP: byId('set-top-p'),
    maxTokens: byId('set-max-tokens'),
    seed: byId('set-seed'),
    toolChoice: byId('set-tool-choice'),
    offered: byId('offered-tools'),
    settingsMessage: byId('settings-message'),
  };

  state.conversations = loadConversations();
  state.currentId = state.conversations[0]?.id ?? null;
  state.settings = loadSettings();

  els.newChat.addEventListener('click', () => {
    newConversation();
    els.input.focus();
  });
  els.exportBtn.addEventListener('click', exportConversations);
  els.importFile.addEventListener('change', importConversations);
  els.composer.addEventListener('submit', (ev) => {
    ev.preventDefault();
    send();
  });
  els.input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.altKey && !ev.ctrlKey && !ev.metaKey && !ev.isComposing) {
      ev.preventDefault();
      send();
    }
  });
  els.stop.addEventListener('click', () => {
    if (state.live) state.live.controller.abort();
  });
  for (const el of [els.temperature, els.topP, els.maxTokens, els.seed, els.toolChoice]) {
    el.addEventListener('change', readSettingsForm);
  }
  // Another tab changed the stored conversations.
  window.addEventListener('storage', (ev) => {
    if (ev.key === 'hearth.conversations' && !state.live) {
      state.conversations = loadConversations();
      if (!state.conversations.some((c) => c.id === state.currentId)) state.currentId = state.conversations[0]?.id ?? null;
      renderAll();
    }
  });

  fillSettingsForm();
  renderAll();
}

/** Called each time the chat view is shown. */
export function showChat() {
  // The view was hidden when it was last rendered: show the latest messages.
  scrollToEnd(true);
  refreshTools();
}

// ---- conversations -----------------------------------------------------

function current() {
  return state.conversations.find((c) => c.id === state.currentId) ?? null;
}

function newConversation() {
  const existing = current();
  if (existing && existing.messages.length === 0) {
    renderAll();
    return existing;
  }
  const conv = {
    id: newId(),
    title: 'New chat',
    created: Date.now(),
    messages: [],
    settings: { ...state.settings },
  };
  state.conversations.unshift(conv);
  state.currentId = conv.id;
  persist();
  renderAll();
  return conv;
}

function persist() {
  try {
    saveConversations(state.conversations);
  } catch (e) {
    showImportMessage(`Could not save the conversations: ${e.message}`, true);
  }
}

function renderAll() {
  renderConversationList();
  renderMessages();
}

function renderConversationList() {
  clear(els.list);
  if (!state.conversations.length) {
    els.list.append(h('li', { class: 'empty', text: 'No conversations yet.' }));
    return;
  }
  for (const conv of state.conversations) {
    const selected = conv.id === state.currentId;
    const open = h('button', {
      type: 'button',
      class: 'conversation-open',
      'aria-current': selected ? 'true' : null,
      dataset: { testid: 'conversation', id: conv.id },
      on: {
        click: () => {
          state.currentId = conv.id;
          renderAll();
        },
      },
    });
    open.append(
      h('span', { class: 'conversation-title', text: conv.title || 'New chat' }),
      h('span', { class: 'conversation-date', text: formatDate(conv.created) }),
    );
    const del = h('button', {
      type: 'button',
      class: 'conversation-delete',
      'aria-label': `Delete conversation: ${conv.title || 'New chat'}`,
      title: 'Delete conversation',
      dataset: { testid: 'conversation-delete' },
      text: '×',
      on: { click: () => deleteConversation(conv.id) },
    });
    els.list.append(h('li', { class: selected ? 'selected' : null }, open, del));
  }
}

function deleteConversation(id) {
  if (state.live && state.live.conversation.id === id) state.live.controller.abort();
  state.conversations = state.conversations.filter((c) => c.id !== id);
  if (state.currentId === id) state.currentId = state.conversations[0]?.id ?? null;
  persist();
  renderAll();
}

function formatDate(created) {
  const d = new Date(created);
  if (Number.isNaN(d.getTime())) return '';
  return d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'short' });
}

// ---- messages ----------------------------------------------------------

function renderMessages() {
  clear(els.messages);
  const conv = current();
  if (!conv || conv.messages.length === 0) {
    els.messages.append(
      h('p', { class: 'empty-chat', text: 'Start a conversation: type a message below. The model can call the plugins’ tools while it answers.' }),
    );
    return;
  }
  for (const msg of conv.messages) {
    const view = messageView(msg);
    els.messages.append(view.node);
    if (state.live && state.live.message === msg) state.live.view = view;
  }
  scrollToEnd(true);
}

function partsOf(msg) {
  if (Array.isArray(msg.parts) && msg.parts.length) return msg.parts;
  return msg.content ? [{ type: 'text', text: msg.content }] : [];
}

/** The node of a message and the handles to update it while streaming. */
function messageView(msg) {
  const role = msg.role === 'user' ? 'user' : msg.role === 'assistant' ? 'assistant' : 'system';
  const label = role === 'user' ? 'You' : role === 'assistant' ? 'Assistant' : 'System';
  const body = h('div', { class: 'message-body' });
  const meta = h('div', { class: 'message-meta', dataset: { testid: 'message-meta' } });
  const node = h(
    'article',
    { class: `message message-${role}`, dataset: { testid: `${role}-message` }, 'aria-label': `${label} message` },
    h('p', { class: 'message-role', text: label }),
    body,
    meta,
  );
  const partNodes = new Map();
  for (const part of partsOf(msg)) {
    const n = part.type === 'tool' ? toolCard(part) : textPart(part.text);
    partNodes.set(part, n);
    body.append(n);
  }
  const view = {
    node,
    body,
    meta,
    partNodes,
    updatePart(part) {
      const old = partNodes.get(part);
      const n = part.type === 'tool' ? toolCard(part, old) : textPart(part.text);
      if (old) old.replaceWith(n);
      else body.append(n);
      partNodes.set(part, n);
    },
    renderMeta() {
      renderMeta(msg, meta, node);
    },
  };
  view.renderMeta();
  return view;
}

function textPart(text) {
  const div = h('div', { class: 'markdown' });
  div.append(renderMarkdown(text));
  return div;
}

function renderMeta(msg, meta, node) {
  clear(meta);
  const m = msg.meta || {};
  node.classList.toggle('is-stopped', !!m.stopped);
  node.classList.toggle('has-error', !!m.error);
  if (m.generating) {
    node.setAttribute('aria-busy', 'true');
    meta.append(h('span', { class: 'generating', dataset: { testid: 'generating' }, text: 'Generating…' }));
  } else {
    node.removeAttribute('aria-busy');
  }
  if (m.error) {
    meta.append(h('p', { class: 'message-error', role: 'alert', dataset: { testid: 'message-error' }, text: m.error }));
  }
  if (m.stopped) {
    meta.append(h('span', { class: 'badge badge-stopped', dataset: { testid: 'stopped' }, text: 'Stopped' }));
  }
  if (m.usage) {
    const u = m.usage;
    const bits = [];
    if (typeof u.completion_tokens === 'number') bits.push(`${u.completion_tokens} tokens`);
    if (typeof u.prompt_tokens === 'number') bits.push(`prompt ${u.prompt_tokens}`);
    if (typeof m.elapsed_ms === 'number') bits.push(`${(m.elapsed_ms / 1000).toFixed(1)} s`);
    if (typeof u.completion_tokens === 'number' && typeof m.elapsed_ms === 'number' && m.elapsed_ms > 0) {
      bits.push(`${(u.completion_tokens / (m.elapsed_ms / 1000)).toFixed(1)} tokens/s`);
    }
    meta.append(h('small', { class: 'usage', dataset: { testid: 'usage' }, text: bits.join(' · ') }));
  } else if (!m.generating && typeof m.elapsed_ms === 'number' && msg.role === 'assistant') {
    meta.append(h('small', { class: 'usage', text: `${(m.elapsed_ms / 1000).toFixed(1)} s` }));
  }
}

/** A tool card (<details>): namespace.tool, state, time, arguments, result or error. */
function toolCard(part, old) {
  const dot = part.name.indexOf('.');
  const namespace = dot === -1 ? part.name : part.name.slice(0, dot);
  const tool = dot === -1 ? '' : part.name.slice(dot + 1);
  const stateText =
    part.state === 'running' ? 'running…' : part.state === 'ok' ? 'done' : part.state === 'error' ? part.outcome || 'error' : 'stopped';
  const details = h('details', {
    class: `tool-card card-${part.state}`,
    dataset: { testid: 'tool-card', namespace, tool, state: part.state, callId: part.id || '' },
  });
  details.open = old ? old.open : true;
  const summary = h(
    'summary',
    {},
    h('span', { class: 'tool-icon', 'aria-hidden': 'true', text: '⚙' }),
    h(
      'span',
      { class: 'tool-name' },
      h('span', { class: 'tool-ns', dataset: { testid: 'tool-card-namespace' }, text: namespace }),
      tool ? '.' : '',
      h('span', { class: 'tool-tool', dataset: { testid: 'tool-card-tool' }, text: tool }),
    ),
    h('span', { class: `tool-state state-${part.state}`, dataset: { testid: 'tool-card-state' }, text: stateText }),
    typeof part.elapsed_ms === 'number'
      ? h('span', { class: 'tool-ms', dataset: { testid: 'tool-card-ms' }, text: formatMs(part.elapsed_ms) })
      : null,
  );
  const content = h('div', { class: 'tool-content' });
  content.append(
    h('p', { class: 'tool-label', text: 'Arguments' }),
    h('pre', { class: 'tool-json', dataset: { testid: 'tool-card-arguments' }, text: prettyJson(part.arguments || '{}') }),
  );
  if (part.state === 'ok') {
    content.append(
      h('p', { class: 'tool-label', text: 'Result' }),
      h('pre', { class: 'tool-json tool-result', dataset: { testid: 'tool-card-result', outcome: 'ok' }, text: prettyJson(part.result ?? '') }),
    );
  } else if (part.state === 'error') {
    content.append(
      h('p', { class: 'tool-label tool-label-error', text: `Error (${part.outcome || 'error'})` }),
      h('pre', {
        class: 'tool-json tool-error',
        dataset: { testid: 'tool-card-result', outcome: part.outcome || 'error' },
        text: part.error ?? '',
      }),
    );
  } else if (part.state === 'running') {
    content.append(h('p', { class: 'tool-running', text: 'Running…' }));
  } else {
    content.append(h('p', { class: 'tool-running', text: 'No result: the answer was stopped.' }));
  }
  details.append(summary, content);
  return details;
}

function formatMs(ms) {
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  return `${Math.round(ms)} ms`;
}

function scrollToEnd(force = false) {
  const m = els.messages;
  const near = m.scrollHeight - m.scrollTop - m.clientHeight < 120;
  if (force || near) m.scrollTop = m.scrollHeight;
}

// ---- sending -----------------------------------------------------------

function setGenerating(on) {
  els.send.disabled = on;
  els.stop.hidden = !on;
  els.send.hidden = on;
  els.composer.classList.toggle('is-generating', on);
}

function toolChoiceValue(choice) {
  if (choice === 'auto' || choice === 'none' || choice === 'required') return choice;
  return { type: 'function', function: { name: choice } };
}

async function send() {
  if (state.live) return;
  const text = els.input.value;
  if (!text.trim()) {
    els.input.focus();
    return;
  }
  readSettingsForm();
  let conv = current() ?? newConversation();
  const settings = { ...state.settings };
  conv.messages.push({ role: 'user', content: text });
  if (conv.messages.filter((m) => m.role === 'user').length === 1) conv.title = titleOf(conv);
  conv.settings = settings;
  const history = conv.messages
    .filter((m) => (m.role === 'user' || m.role === 'assistant' || m.role === 'system') && m.content)
    .map((m) => ({ role: m.role, content: m.content }));
  const message = { role: 'assistant', content: '', parts: [], meta: { generating: true } };
  conv.messages.push(message);
  // The conversation moves to the top of the list.
  state.conversations = [conv, ...state.conversations.filter((c) => c !== conv)];
  els.input.value = '';
  persist();

  const controller = new AbortController();
  state.live = { conversation: conv, message, controller, view: null };
  renderAll();
  setGenerating(true);
  els.stop.focus();

  const body = {
    messages: history,
    stream: true,
    stream_options: { include_usage: true, include_tool_events: true },
    temperature: settings.temperature,
    top_p: settings.top_p,
    max_tokens: settings.max_tokens,
    tool_choice: toolChoiceValue(settings.tool_choice),
  };
  if (settings.seed !== '' && settings.seed !== null && settings.seed !== undefined) body.seed = Number(settings.seed);

  const started = performance.now();
  const live = state.live;
  const update = (part) => {
    if (live.view && live.view.node.isConnected) {
      live.view.updatePart(part);
      scrollToEnd();
    }
  };
  const updateMeta = () => {
    if (live.view && live.view.node.isConnected) live.view.renderMeta();
  };
  const appendText = (delta) => {
    let last = message.parts[message.parts.length - 1];
    if (!last || last.type !== 'text') {
      last = { type: 'text', text: '' };
      message.parts.push(last);
    }
    last.text += delta;
    message.content += delta;
    update(last);
  };

  try {
    const response = await apiFetch('/v1/chat/completions', {
      method: 'POST',
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      const err = await readError(response);
      message.meta.error = describeError(err);
    } else {
      await readEvents(response, (ev) => {
        let data;
        try {
          data = JSON.parse(ev.data);
        } catch {
          return; // not JSON: ignored
        }
        if (!data || typeof data !== 'object') return;
        if (ev.event === 'hearth.tool') {
          onToolEvent(message, data, update);
          return;
        }
        if (ev.event !== '' && ev.event !== 'message') return;
        if (data.error) {
          const e = data.error;
          message.meta.error = typeof e === 'object' && e && typeof e.message === 'string' ? e.message : String(e);
          updateMeta();
          return;
        }
        const choice = Array.isArray(data.choices) ? data.choices[0] : null;
        const delta = choice && choice.delta && typeof choice.delta.content === 'string' ? choice.delta.content : '';
        if (delta) appendText(delta);
        if (choice && typeof choice.finish_reason === 'string') message.meta.finish_reason = choice.finish_reason;
        if (data.usage && typeof data.usage === 'object') {
          message.meta.usage = {
            prompt_tokens: data.usage.prompt_tokens,
            completion_tokens: data.usage.completion_tokens,
            total_tokens: data.usage.total_tokens,
          };
        }
      });
    }
  } catch (e) {
    if (e && e.name === 'AbortError') {
      message.meta.stopped = true;
    } else {
      message.meta.error = `The request failed: ${e && e.message ? e.message : e}`;
    }
  } finally {
    if (controller.signal.aborted) message.meta.stopped = true;
    for (const part of message.parts) {
      if (part.type === 'tool' && part.state === 'running') {
        part.state = 'stopped';
        update(part);
      }
    }
    message.meta.elapsed_ms = Math.round(performance.now() - started);
    delete message.meta.generating;
    state.live = null;
    persist();
    updateMeta();
    setGenerating(false);
    if (document.activeElement === els.stop || document.activeElement === document.body) els.input.focus();
  }
}

function onToolEvent(message, data, update) {
  const id = typeof data.id === 'string' ? data.id : '';
  const name = typeof data.name === 'string' ? data.name : 'unknown';
  if (data.phase === 'call') {
    const part = {
      type: 'tool',
      id,
      name,
      arguments: typeof data.arguments === 'string' ? data.arguments : JSON.stringify(data.arguments ?? {}),
      state: 'running',
    };
    message.parts.push(part);
    update(part);
  } else if (data.phase === 'result') {
    let part = message.parts.find((p) => p.type === 'tool' && p.id === id && p.state === 'running');
    if (!part) {
      part = { type: 'tool', id, name, arguments: '', state: 'running' };
      message.parts.push(part);
    }
    if (typeof data.elapsed_ms === 'number') part.elapsed_ms = data.elapsed_ms;
    if (data.ok === true) {
      part.state = 'ok';
      part.result = typeof data.result === 'string' ? data.result : JSON.stringify(data.result ?? null);
    } else {
      part.state = 'error';
      part.error = typeof data.error === 'string' ? data.error : JSON.stringify(data.error ?? 'failed');
      part.outcome = typeof data.outcome === 'string' ? data.outcome : 'error';
    }
    update(part);
  }
}

// ---- export and import -------------------------------------------------

function exportConversations() {
  const doc = exportDocument(state.conversations);
  const blob = new Blob([JSON.stringify(doc, null, 2)], { type: 'application/json' });
  const url = URL.createObjectURL(blob);
  const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19);
  const a = h('a', { href: url, download: `hearth-conversations-${stamp}.json`, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  showImportMessage(`Exported ${state.conversations.length} conversation${state.conversations.length === 1 ? '' : 's'}.`, false);
}

async function importConversations() {
  const file = els.importFile.files && els.importFile.files[0];
  if (!file) return;
  try {
    const text = await file.text();
    let data;
    try {
      data = JSON.parse(text);
    } catch (e) {
      throw new ImportError(`the file is not valid JSON (${e.message})`);
    }
    const imported = validateConversations(data);
    const ids = new Set(state.conversations.map((c) => c.id));
    for (const c of imported) {
      if (ids.has(c.id)) c.id = newId();
      ids.add(c.id);
    }
    if (state.live) {
      throw new ImportError('wait until the answer being generated is finished');
    }
    state.conversations = [...imported, ...state.conversations];
    if (imported.length) state.currentId = imported[0].id;
    persist();
    renderAll();
    showImportMessage(`Imported ${imported.length} conversation${imported.length === 1 ? '' : 's'} from ${file.name}.`, false);
  } catch (e) {
    const why = e instanceof ImportError ? e.message : `unexpected error: ${e.message}`;
    showImportMessage(`Import failed: ${why}. Your conversations were not changed.`, true);
  } finally {
    els.importFile.value = '';
  }
}

function showImportMessage(text, isError) {
  els.importMessage.textContent = text;
  els.importMessage.classList.toggle('error', isError);
  els.importMessage.dataset.state = isError ? 'error' : 'ok';
}

// ---- settings ----------------------------------------------------------

function fillSettingsForm() {
  const s = state.settings;
  els.temperature.value = String(s.temperature);
  els.topP.value = String(s.top_p);
  els.maxTokens.value = String(s.max_tokens);
  els.seed.value = s.seed === '' ? '' : String(s.seed);
  renderToolChoice();
}

function readSettingsForm() {
  const problems = [];
  const raw = {
    temperature: els.temperature.value,
    top_p: els.topP.value,
    max_tokens: els.maxTokens.value,
    seed: els.seed.value.trim(),
    tool_choice: els.toolChoice.value || 'auto',
  };
  const s = normaliseSettings(raw);
  if (String(s.temperature) !== String(Number(raw.temperature))) problems.push('temperature must be between 0 and 2');
  if (String(s.top_p) !== String(Number(raw.top_p))) problems.push('top-p must be between 0 and 1');
  if (raw.max_tokens === '' || String(s.max_tokens) !== String(Number(raw.max_tokens))) problems.push('max tokens must be a whole number of at least 1');
  if (raw.seed !== '' && String(s.seed) !== String(Number(raw.seed))) problems.push('seed must be a whole number (or empty)');
  state.settings = s;
  saveSettings(s);
  els.settingsMessage.textContent = problems.length ? `Kept the previous or default value: ${problems.join('; ')}.` : '';
  if (problems.length) fillSettingsForm();
}

function renderToolChoice() {
  const sel = els.toolChoice;
  const chosen = state.settings.tool_choice;
  clear(sel);
  sel.append(
    h('option', { value: 'auto', text: 'auto' }),
    h('option', { value: 'none', text: 'none' }),
    h('option', { value: 'required', text: 'required' }),
  );
  const group = h('optgroup', { label: 'One specific tool' });
  for (const name of state.tools) group.append(h('option', { value: name, text: name }));
  if (!['auto', 'none', 'required'].includes(chosen) && !state.tools.includes(chosen)) {
    group.append(h('option', { value: chosen, text: state.toolsLoaded ? `${chosen} (not offered now)` : chosen }));
  }
  if (group.children.length) sel.append(group);
  sel.value = chosen;
}

async function refreshTools() {
  try {
    const data = await jsonOrThrow(await apiFetch('/v1/plugins'));
    const names = [];
    for (const p of Array.isArray(data.data) ? data.data : []) {
      for (const t of Array.isArray(p.tools) ? p.tools : []) if (typeof t.name === 'string') names.push(t.name);
    }
    names.sort();
    state.tools = names;
    state.toolsLoaded = true;
    renderOffered();
  } catch (e) {
    clear(els.offered);
    els.offered.append(h('li', { class: 'error', text: `Could not list the tools: ${describeError(e)}` }));
  }
  renderToolChoice();
}

function renderOffered() {
  clear(els.offered);
  if (!state.tools.length) {
    els.offered.append(h('li', { class: 'empty', text: 'No tools are offered (no active plugins).' }));
    return;
  }
  for (const name of state.tools) {
    els.offered.append(h('li', { dataset: { tool: name } }, h('code', { text: name })));
  }
}
