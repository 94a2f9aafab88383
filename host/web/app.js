// Entry point: the hash router switching the three views.

import { initChat, showChat } from './chat.js';
import { initPlugins, showPlugins } from './plugins.js';
import { initStatus, startStatus, stopStatus } from './status.js';
import { apiFetch } from './api.js';
import { byId } from './dom.js';

const VIEWS = ['chat', 'plugins', 'status'];
let currentView = null;

function setModelName(name) {
  const el = byId('header-model');
  if (name && el.textContent !== name) el.textContent = name;
}

function route() {
  const m = /^#\/([a-z]+)/.exec(location.hash);
  const view = m && VIEWS.includes(m[1]) ? m[1] : 'chat';
  if (view === currentView) return;
  const previous = currentView;
  currentView = view;
  for (const v of VIEWS) {
    byId(`view-${v}`).hidden = v !== view;
  }
  for (const a of document.querySelectorAll('.mainnav a[data-view]')) {
    if (a.dataset.view === view) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `hearth · ${view[0].toUpperCase()}${view.slice(1)}`;
  document.body.dataset.view = view;
  if (view === 'status') startStatus();
  else stopStatus();
  if (view === 'chat') showChat();
  if (view === 'plugins') showPlugins();
  // Moving between views (not the first load) puts focus at the view's start.
  if (previous !== null) byId('main').focus({ preventScroll: true });
}

async function loadModelName() {
  try {
    const response = await apiFetch('/v1/models');
    if (!response.ok) return;
    const data = await response.json();
    const first = Array.isArray(data.data) ? data.data[0] : null;
    if (first && typeof first.id === 'string') setModelName(first.id);
  } catch {
    /* the header simply stays empty */
  }
}

function start() {
  initChat();
  initPlugins();
  initStatus({ modelName: setModelName });
  window.addEventListener('hashchange', route);
  route();
  loadModelName();
}

start();
