// Conversations and settings, kept in localStorage; the import format
// and its validation.

export const CONVERSATIONS_KEY = 'hearth.conversations';
export const SETTINGS_KEY = 'hearth.settings';

export const DEFAULT_SETTINGS = Object.freeze({
  temperature: 0.7,
  top_p: 0.95,
  max_tokens: 512,
  seed: '',
  tool_choice: 'auto',
});

/** A fresh id for a conversation. */
export function newId() {
  if (globalThis.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  return `c-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

/** The title of a conversation: its first user message, trimmed to 60 characters. */
export function titleOf(conversation) {
  const first = conversation.messages.find((m) => m.role === 'user');
  if (!first) return 'New chat';
  const text = first.content.replace(/\s+/g, ' ').trim();
  if (!text) return 'New chat';
  return text.length > 60 ? `${text.slice(0, 59).trimEnd()}…` : text;
}

/** Settings from localStorage, each value checked, defaults for the rest. */
export function loadSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || '{}') || {};
  } catch {
    saved = {};
  }
  return normaliseSettings(saved);
}

export function normaliseSettings(s) {
  const out = { ...DEFAULT_SETTINGS };
  if (!s || typeof s !== 'object') return out;
  const num = (v, lo, hi) => {
    const n = typeof v === 'number' ? v : Number(v);
    return Number.isFinite(n) && n >= lo && n <= hi ? n : null;
  };
  const t = num(s.temperature, 0, 2);
  if (t !== null) out.temperature = t;
  const p = num(s.top_p, 0, 1);
  if (p !== null) out.top_p = p;
  const mt = num(s.max_tokens, 1, 1e7);
  if (mt !== null) out.max_tokens = Math.floor(mt);
  if (s.seed === '' || s.seed === null || s.seed === undefined) out.seed = '';
  else {
    const seed = num(s.seed, 0, Number.MAX_SAFE_INTEGER);
    out.seed = seed === null ? '' : Math.floor(seed);
  }
  if (typeof s.tool_choice === 'string' && s.tool_choice) out.tool_choice = s.tool_choice;
  return out;
}

export function saveSettings(settings) {
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(normaliseSettings(settings)));
}

/** Conversations from localStorage (newest first); [] when none or unreadable. */
export function loadConversations() {
  const raw = localStorage.getItem(CONVERSATIONS_KEY);
  if (!raw) return [];
  try {
    const parsed = JSON.parse(raw);
    return validateConversations(parsed);
  } catch (e) {
    console.warn('hearth: stored conversations unreadable, starting empty:', e.message);
    return [];
  }
}

export function saveConversations(list) {
  localStorage.setItem(CONVERSATIONS_KEY, JSON.stringify(list));
}

/** The export document of `list`. */
export function exportDocument(list) {
  return {
    format: 'hearth.conversations',
    version: 1,
    exported: new Date().toISOString(),
    conversations: list,
  };
}

export class ImportError extends Error {}

/**
 * Checks the shape of imported data: an export document
 * (`{conversations: [...]}`) or a bare array of conversations. Returns the
 * conversations, normalised; throws ImportError naming what is wrong.
 */
export function validateConversations(data) {
  let list = data;
  let base = 'the file';
  if (data && typeof data === 'object' && !Array.isArray(data)) {
    if (!('conversations' in data)) {
      throw new ImportError('the file is a JSON object without a "conversations" array');
    }
    list = data.conversations;
    base = 'conversations';
  }
  if (!Array.isArray(list)) {
    throw new ImportError(`${base === 'the file' ? 'the file' : '"conversations"'} must be an array of conversations`);
  }
  const at = (i) => `conversations[${i}]`;
  return list.map((c, i) => {
    if (!c || typeof c !== 'object' || Array.isArray(c)) throw new ImportError(`${at(i)} is not an object`);
    if (c.id !== undefined && typeof c.id !== 'string') throw new ImportError(`${at(i)}.id must be a string`);
    if (c.title !== undefined && typeof c.title !== 'string') throw new ImportError(`${at(i)}.title must be a string`);
    if (c.created !== undefined && typeof c.created !== 'number' && typeof c.created !== 'string') {
      throw new ImportError(`${at(i)}.created must be a number or a date string`);
    }
    if (!Array.isArray(c.messages)) throw new ImportError(`${at(i)}.messages must be an array`);
    const messages = c.messages.map((m, j) => validateMessage(m, `${at(i)}.messages[${j}]`));
    const conv = {
      id: typeof c.id === 'string' && c.id ? c.id : newId(),
      title: '',
      created: typeof c.created === 'number' ? c.created : Date.parse(c.created ?? '') || Date.now(),
      messages,
      settings: normaliseSettings(c.settings),
    };
    conv.title = typeof c.title === 'string' && c.title.trim() ? c.title.slice(0, 60) : titleOf(conv);
    return conv;
  });
}

function validateMessage(m, at) {
  if (!m || typeof m !== 'object' || Array.isArray(m)) throw new ImportError(`${at} is not an object`);
  if (m.role !== 'user' && m.role !== 'assistant' && m.role !== 'system') {
    throw new ImportError(`${at}.role must be "user", "assistant" or "system"`);
  }
  if (typeof m.content !== 'string') throw new ImportError(`${at}.content must be a string`);
  const out = { role: m.role, content: m.content };
  if (m.parts !== undefined) {
    if (!Array.isArray(m.parts)) throw new ImportError(`${at}.parts must be an array`);
    out.parts = m.parts.map((p, k) => validatePart(p, `${at}.parts[${k}]`));
  }
  if (m.meta !== undefined) {
    if (!m.meta || typeof m.meta !== 'object' || Array.isArray(m.meta)) throw new ImportError(`${at}.meta must be an object`);
    out.meta = validateMeta(m.meta);
  }
  return out;
}

const str = (v) => (typeof v === 'string' ? v : undefined);
const numOrUndef = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);

function validatePart(p, at) {
  if (!p || typeof p !== 'object' || Array.isArray(p)) throw new ImportError(`${at} is not an object`);
  if (p.type === 'text') {
    if (typeof p.text !== 'string') throw new ImportError(`${at}.text must be a string`);
    return { type: 'text', text: p.text };
  }
  if (p.type === 'tool') {
    if (typeof p.name !== 'string') throw new ImportError(`${at}.name must be a string`);
    for (const k of ['id', 'arguments', 'result', 'error', 'outcome']) {
      if (p[k] !== undefined && p[k] !== null && typeof p[k] !== 'string') {
        throw new ImportError(`${at}.${k} must be a string`);
      }
    }
    const state = ['running', 'ok', 'error', 'stopped'].includes(p.state) ? p.state : p.error ? 'error' : p.result !== undefined ? 'ok' : 'stopped';
    return {
      type: 'tool',
      id: str(p.id) ?? '',
      name: p.name,
      arguments: str(p.arguments) ?? '',
      state: state === 'running' ? 'stopped' : state,
      result: str(p.result),
      error: str(p.error),
      outcome: str(p.outcome),
      elapsed_ms: numOrUndef(p.elapsed_ms),
    };
  }
  throw new ImportError(`${at}.type must be "text" or "tool"`);
}

function validateMeta(meta) {
  const out = {};
  if (meta.usage && typeof meta.usage === 'object') {
    out.usage = {
      prompt_tokens: numOrUndef(meta.usage.prompt_tokens),
      completion_tokens: numOrUndef(meta.usage.completion_tokens),
      total_tokens: numOrUndef(meta.usage.total_tokens),
    };
  }
  if (numOrUndef(meta.elapsed_ms) !== undefined) out.elapsed_ms = meta.elapsed_ms;
  if (meta.stopped === true) out.stopped = true;
  if (typeof meta.error === 'string') out.error = meta.error;
  if (typeof meta.finish_reason === 'string') out.finish_reason = meta.finish_reason;
  return out;
}
