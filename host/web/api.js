// Calls to the server (same origin only), the API key (sessionStorage)
// and the admin key (memory only), and a Server-Sent Events reader.

import { byId } from './dom.js';

export const API_KEY_STORAGE = 'hearth.apiKey';

// The admin key lives only in this variable: never in any storage.
let adminKey = null;

export function hasAdminKey() {
  return adminKey !== null;
}

export function forgetAdminKey() {
  adminKey = null;
}

function apiKey() {
  try {
    return sessionStorage.getItem(API_KEY_STORAGE);
  } catch {
    return null;
  }
}

function setApiKey(key) {
  try {
    sessionStorage.setItem(API_KEY_STORAGE, key);
  } catch {
    /* storage unavailable: the key is not kept */
  }
}

/** An error from the server: status, message, code and the parsed body. */
export class ApiError extends Error {
  constructor(status, message, code, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

/** Thrown when the user cancels a key prompt. */
export class KeyCancelled extends Error {
  constructor(kind) {
    super(kind === 'admin' ? 'No admin key entered.' : 'No API key entered.');
    this.kind = kind;
  }
}

// ---- the key dialog ----------------------------------------------------

let pending = null; // {kind, promise}

/**
 * Asks for a key in the modal dialog. Resolves with the key, or null when
 * cancelled. Concurrent asks for the same kind share one dialog.
 */
export function askKey(kind, problem = '') {
  if (pending && pending.kind === kind) return pending.promise;
  if (pending) {
    // Another kind is being asked: wait for it, then ask.
    return pending.promise.then(() => askKey(kind, problem));
  }
  const dialog = byId('key-dialog');
  const form = byId('key-form');
  const input = byId('key-input');
  const title = byId('key-dialog-title');
  const text = byId('key-dialog-text');
  const label = byId('key-input-label');
  const error = byId('key-dialog-error');
  const cancel = byId('key-cancel');
  const admin = kind === 'admin';
  title.textContent = admin ? 'Admin key' : 'API key';
  text.textContent = admin
    ? 'Managing plugins needs the server’s admin key. It is kept only in this page’s memory, never stored.'
    : 'This server needs an API key. It is kept for this browser tab only (session storage).';
  label.textContent = admin ? 'Admin key' : 'API key';
  input.dataset.testid = admin ? 'admin-key-input' : 'api-key-input';
  input.value = '';
  error.textContent = problem;
  dialog.dataset.kind = kind;

  const promise = new Promise((resolve) => {
    const finish = (value) => {
      form.removeEventListener('submit', onSubmit);
      cancel.removeEventListener('click', onCancel);
      dialog.removeEventListener('cancel', onEscape);
      if (dialog.open) dialog.close();
      input.value = '';
      pending = null;
      resolve(value);
    };
    const onSubmit = (ev) => {
      ev.preventDefault();
      const value = input.value.trim();
      if (!value) {
        error.textContent = 'Enter the key, or Cancel.';
        input.focus();
        return;
      }
      finish(value);
    };
    const onCancel = () => finish(null);
    const onEscape = (ev) => {
      ev.preventDefault();
      finish(null);
    };
    form.addEventListener('submit', onSubmit);
    cancel.addEventListener('click', onCancel);
    dialog.addEventListener('cancel', onEscape);
  });
  pending = { kind, promise };
  if (!dialog.open) dialog.showModal();
  input.focus();
  return promise;
}

// ---- requests ----------------------------------------------------------

function withAuth(init, key) {
  const headers = new Headers(init.headers || {});
  if (key) headers.set('Authorization', `Bearer ${key}`);
  if (init.body !== undefined && !headers.has('Content-Type')) headers.set('Content-Type', 'application/json');
  return { ...init, headers, credentials: 'same-origin', cache: 'no-store' };
}

function sameOrigin(path) {
  if (!path.startsWith('/')) throw new Error(`not a same-origin path: ${path}`);
  return path;
}

/**
 * A `/v1/...` request with the API key. On 401 the key is asked for and
 * the request sent again; when the prompt is cancelled the 401 answer is
 * returned.
 */
export async function apiFetch(path, init = {}) {
  let problem = '';
  for (let attempt = 0; attempt < 5; attempt++) {
    const response = await fetch(sameOrigin(path), withAuth(init, apiKey()));
    if (response.status !== 401) return response;
    const err = await readError(response.clone());
    problem = apiKey() ? `The key was refused: ${err.message}` : '';
    const key = await askKey('api', problem);
    if (key === null) return response;
    setApiKey(key);
  }
  return fetch(sameOrigin(path), withAuth(init, apiKey()));
}

/**
 * A `/v1/admin/...` request with the admin key, asked for first when not
 * entered yet (throws KeyCancelled when the prompt is cancelled). A
 * refused key is forgotten and asked for again.
 */
export async function adminFetch(path, init = {}) {
  let problem = '';
  for (let attempt = 0; attempt < 5; attempt++) {
    if (adminKey === null) {
      const key = await askKey('admin', problem);
      if (key === null) throw new KeyCancelled('admin');
      adminKey = key;
    }
    const response = await fetch(sameOrigin(path), withAuth(init, adminKey));
    if (response.status !== 401) return response;
    const err = await readError(response);
    adminKey = null;
    problem = `The admin key was refused: ${err.message}`;
  }
  throw new KeyCancelled('admin');
}

/** JSON of a successful answer; an ApiError for any other. */
export async function jsonOrThrow(response) {
  if (!response.ok) {
    const err = await readError(response);
    throw new ApiError(response.status, err.message, err.code, err.body);
  }
  return response.json();
}

/** The error of an answer: its `error.message` and `error.code` when it has them. */
export async function readError(response) {
  let body = null;
  let text = '';
  try {
    text = await response.text();
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  const e = body && typeof body === 'object' ? body.error : null;
  let message = e && typeof e.message === 'string' ? e.message : text.trim().slice(0, 300);
  if (!message) message = `HTTP ${response.status} ${response.statusText}`.trim();
  const code = e && typeof e.code === 'string' ? e.code : null;
  return { status: response.status, message, code, body };
}

/** A human sentence for an error answer (model loading, admin off, …). */
export function describeError(err) {
  if (err.code === 'model_loading' || (err.status === 503 && /load/i.test(err.message))) {
    return `The model is still loading — try again in a moment. (${err.message})`;
  }
  if (err.code === 'admin_disabled') {
    return `Plugin management is off on this server (it has no admin key): ${err.message}`;
  }
  if (err.status === 401) return `Not authorised: ${err.message}`;
  return err.status ? `Error ${err.status}: ${err.message}` : err.message;
}

// ---- Server-Sent Events ------------------------------------------------

/**
 * Reads the SSE stream of `response`, calling `onEvent({event, data})` for
 * each event (`event` is '' for unnamed ones). Returns when the stream
 * ends or a `data: [DONE]` arrives.
 */
export async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        buffer += decoder.decode();
      } else {
        buffer += decoder.decode(value, { stream: true });
      }
      // Events are separated by a blank line.
      let sep;
      while ((sep = findSeparator(buffer)) !== null) {
        const block = buffer.slice(0, sep.index);
        buffer = buffer.slice(sep.index + sep.length);
        const ev = parseEvent(block);
        if (!ev) continue;
        if (ev.event === '' && ev.data === '[DONE]') return;
        onEvent(ev);
      }
      if (done) {
        const ev = parseEvent(buffer);
        if (ev && !(ev.event === '' && ev.data === '[DONE]')) onEvent(ev);
        return;
      }
    }
  } finally {
    try {
      reader.releaseLock();
    } catch {
      /* already released */
    }
  }
}

function findSeparator(buffer) {
  const m = /\r\n\r\n|\n\n|\r\r/.exec(buffer);
  return m ? { index: m.index, length: m[0].length } : null;
}

function parseEvent(block) {
  let event = '';
  const data = [];
  for (const line of block.split(/\r\n|\n|\r/)) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  }
  if (!data.length) return null;
  return { event, data: data.join('\n') };
}
