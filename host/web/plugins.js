// The plugins view: the plugin list (public, or the admin list once the
// admin key is entered), enable/disable, problems, and installing from the
// registry with explicit consent to the permissions asked for.

import { apiFetch, adminFetch, hasAdminKey, readError, jsonOrThrow, describeError, KeyCancelled } from './api.js';
import { h, clear, byId } from './dom.js';

let els = null;
let changeProblems = []; // problems reported by the last change (enable/disable/install)
let pendingInstall = null; // {plugin, grant}
let loading = null;

export function initPlugins() {
  els = {
    manage: byId('plugins-manage'),
    reload: byId('plugins-reload'),
    message: byId('plugins-message'),
    problems: byId('problems'),
    problemsList: byId('problems-list'),
    list: byId('plugin-list'),
    form: byId('install-form'),
    input: byId('install-input'),
    check: byId('install-check'),
    consent: byId('consent'),
    consentText: byId('consent-text'),
    grant: byId('consent-grant'),
    confirm: byId('install-confirm'),
    cancel: byId('install-cancel'),
    result: byId('install-result'),
  };
  els.manage.addEventListener('click', async () => {
    await loadPlugins(true);
  });
  els.reload.addEventListener('click', () => loadPlugins());
  els.form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    checkInstall();
  });
  els.grant.addEventListener('change', () => {
    els.confirm.disabled = !els.grant.checked || !pendingInstall;
  });
  els.confirm.addEventListener('click', confirmInstall);
  els.cancel.addEventListener('click', () => {
    clearConsent();
    setResult('Installation cancelled.', 'info');
    els.input.focus();
  });
  updateManageButton();
}

/** Called each time the plugins view is shown. */
export function showPlugins() {
  loadPlugins();
}

function updateManageButton() {
  els.manage.hidden = hasAdminKey();
}

function setMessage(text, kind = 'info') {
  els.message.textContent = text;
  els.message.dataset.kind = kind;
}

function setResult(text, kind = 'info') {
  els.result.textContent = text;
  els.result.dataset.kind = kind;
}

/**
 * Loads the list: the admin list when the admin key is known (or
 * `askAdmin`), the public one otherwise.
 */
async function loadPlugins(askAdmin = false) {
  if (loading) return loading;
  loading = (async () => {
    try {
      if (hasAdminKey() || askAdmin) {
        try {
          const response = await adminFetch('/v1/admin/plugins');
          if (response.ok) {
            const data = await response.json();
            renderList(Array.isArray(data.data) ? data.data : [], true);
            renderProblems(Array.isArray(data.problems) ? data.problems : []);
            if (els.message.dataset.kind !== 'error' || askAdmin) setMessage('');
            return;
          }
          const err = await readError(response);
          setMessage(describeError(err), 'error');
        } catch (e) {
          if (e instanceof KeyCancelled) setMessage('Managing plugins needs the admin key; showing the public list.', 'info');
          else throw e;
        } finally {
          updateManageButton();
        }
      }
      const data = await jsonOrThrow(await apiFetch('/v1/plugins'));
      renderList(Array.isArray(data.data) ? data.data : [], false);
      renderProblems([]);
    } catch (e) {
      setMessage(`Could not load the plugins: ${describeError(e)}`, 'error');
    } finally {
      loading = null;
    }
  })();
  return loading;
}

function renderProblems(listProblems) {
  const all = [...listProblems, ...changeProblems.filter((p) => !listProblems.includes(p))];
  clear(els.problemsList);
  for (const p of all) els.problemsList.append(h('li', { text: String(p) }));
  els.problems.hidden = all.length === 0;
}

/** Permissions in words, from the public list's permissions object. */
function permissionWords(p) {
  if (Array.isArray(p)) return p.map(String);
  if (!p || typeof p !== 'object') return [];
  const words = [];
  for (const host of Array.isArray(p.http) ? p.http : []) words.push(`http to ${host}`);
  if (p.kv) words.push('its own key-value store');
  if (typeof p.llm_tokens === 'number' && p.llm_tokens > 0) words.push(`up to ${p.llm_tokens} tokens of the model`);
  if (p.conversation) words.push(`the conversation (${typeof p.conversation === 'string' ? p.conversation : 'read'})`);
  if (typeof p.memory_bytes === 'number') words.push(`${formatBytes(p.memory_bytes)} of memory`);
  if (typeof p.time_limit_ms === 'number') words.push(`${p.time_limit_ms} ms per call`);
  return words;
}

function formatBytes(n) {
  if (n >= 1024 * 1024 && n % (1024 * 1024) === 0) return `${n / (1024 * 1024)} MiB`;
  if (n >= 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
  if (n >= 1024) return `${Math.round(n / 1024)} KiB`;
  return `${n} bytes`;
}

function renderList(plugins, admin) {
  clear(els.list);
  if (!plugins.length) {
    els.list.append(h('p', { class: 'empty', text: admin ? 'No plugins are installed.' : 'No plugins are active.' }));
    return;
  }
  const sorted = [...plugins].sort((a, b) => String(a.namespace).localeCompare(String(b.namespace)));
  for (const p of sorted) els.list.append(pluginCard(p, admin));
}

function pluginCard(p, admin) {
  const ns = String(p.namespace ?? '');
  const enabled = admin ? p.enabled !== false : true;
  const active = admin ? p.active === true : true;
  const headingId = `plugin-${ns.replace(/[^a-z0-9-]/gi, '-')}-title`;
  const card = h('article', {
    class: `plugin-card${enabled ? '' : ' is-disabled'}`,
    'aria-labelledby': headingId,
    dataset: { testid: 'plugin-card', namespace: ns, enabled: String(enabled), active: String(active) },
  });
  const head = h(
    'div',
    { class: 'plugin-head' },
    h('h2', { id: headingId, class: 'plugin-title', text: ns }),
    h('span', { class: 'plugin-version', dataset: { testid: 'plugin-version' }, text: p.version ? `v${p.version}` : '' }),
  );
  if (p.source) {
    const source = String(p.source);
    head.append(h('span', { class: `badge badge-source source-${source.replace(/[^a-z]/g, '')}`, dataset: { testid: 'plugin-source' }, text: source }));
  }
  const stateText = admin ? `${enabled ? 'enabled' : 'disabled'} · ${active ? 'active' : 'not active'}` : 'active';
  head.append(h('span', { class: `badge badge-state ${enabled && active ? 'state-on' : 'state-off'}`, dataset: { testid: 'plugin-state' }, text: stateText }));
  card.append(head);
  if (p.name && p.name !== ns) card.append(h('p', { class: 'plugin-name', text: `Package: ${p.name}` }));
  if (p.description) card.append(h('p', { class: 'plugin-description', text: String(p.description) }));

  const tools = Array.isArray(p.tools) ? p.tools : [];
  if (tools.length) {
    const ul = h('ul', { class: 'plugin-tools', dataset: { testid: 'plugin-tools' } });
    for (const t of tools) {
      ul.append(h('li', {}, h('code', { text: String(t.name ?? '') }), t.description ? ` — ${t.description}` : ''));
    }
    card.append(h('h3', { class: 'plugin-subtitle', text: 'Tools' }), ul);
  }
  const perms = permissionWords(p.permissions);
  const permList = h('ul', { class: 'plugin-permissions', dataset: { testid: 'plugin-permissions' } });
  if (perms.length) for (const w of perms) permList.append(h('li', { text: w }));
  else permList.append(h('li', { text: 'no special permissions' }));
  card.append(h('h3', { class: 'plugin-subtitle', text: 'May use' }), permList);
  if (p.origin) card.append(h('p', { class: 'plugin-origin', text: `From: ${p.origin}` }));

  if (admin) {
    const toggle = h('button', {
      type: 'button',
      class: enabled ? 'danger-outline' : 'primary',
      dataset: { testid: 'plugin-toggle', action: enabled ? 'disable' : 'enable' },
      'aria-label': `${enabled ? 'Disable' : 'Enable'} ${ns}`,
      text: enabled ? 'Disable' : 'Enable',
    });
    toggle.addEventListener('click', () => togglePlugin(ns, enabled ? 'disable' : 'enable', toggle));
    card.append(h('div', { class: 'plugin-actions' }, toggle));
  }
  return card;
}

async function togglePlugin(ns, action, button) {
  button.disabled = true;
  setMessage(`${action === 'disable' ? 'Disabling' : 'Enabling'} ${ns}…`);
  try {
    const response = await adminFetch(`/v1/admin/plugins/${encodeURIComponent(ns)}/${action}`, {
      method: 'POST',
      body: '{}',
    });
    if (response.ok) {
      const data = await response.json();
      changeProblems = Array.isArray(data.problems) ? data.problems.map(String) : [];
      let text = `${action === 'disable' ? 'Disabled' : 'Enabled'} ${ns}.`;
      if (Array.isArray(data.also_disabled) && data.also_disabled.length) {
        text += ` Also disabled: ${data.also_disabled.join(', ')}.`;
      }
      if (Array.isArray(data.active)) text += ` Active now: ${data.active.join(', ') || 'none'}.`;
      setMessage(text, 'ok');
    } else {
      const err = await readError(response);
      setMessage(err.code === 'plugin_change_refused' ? `Refused: ${err.message}` : describeError(err), 'error');
    }
  } catch (e) {
    setMessage(e instanceof KeyCancelled ? e.message : `The change failed: ${e.message}`, 'error');
  }
  const keep = { text: els.message.textContent, kind: els.message.dataset.kind };
  await loadPlugins();
  setMessage(keep.text, keep.kind);
}

// ---- install -----------------------------------------------------------

function clearConsent() {
  pendingInstall = null;
  els.consent.hidden = true;
  els.consentText.textContent = '';
  els.grant.checked = false;
  els.confirm.disabled = true;
}

async function checkInstall() {
  const plugin = els.input.value.trim();
  clearConsent();
  if (!plugin) {
    setResult('Enter a plugin name, e.g. weather or weather@^0.1.', 'error');
    els.input.focus();
    return;
  }
  els.check.disabled = true;
  setResult(`Asking the registry about ${plugin}…`);
  try {
    const response = await adminFetch('/v1/admin/plugins', { method: 'POST', body: JSON.stringify({ plugin }) });
    if (response.ok) {
      await installed(await response.json());
      return;
    }
    const err = await readError(response);
    if (permissionsAsked(err)) {
      showConsent(plugin, err.body.permissions, `Read what ${plugin} may do, then grant it to install.`);
    } else {
      setResult(describeError(err), 'error');
    }
  } catch (e) {
    setResult(e instanceof KeyCancelled ? 'Installing needs the admin key.' : `The check failed: ${e.message}`, 'error');
  } finally {
    els.check.disabled = false;
    updateManageButton();
  }
}

/** Does the error answer ask for a grant (the first step of an install)? */
function permissionsAsked(err) {
  return err.code === 'permissions_required' && err.body && typeof err.body.permissions === 'string';
}

/** Shows the permissions text verbatim, unchecked, with Install disabled until granted. */
function showConsent(plugin, text, message, kind) {
  pendingInstall = { plugin, grant: text };
  els.consentText.textContent = text;
  els.consent.hidden = false;
  els.grant.checked = false;
  els.confirm.disabled = true;
  setResult(message, kind);
  els.grant.focus();
}

async function confirmInstall() {
  if (!pendingInstall || !els.grant.checked) return;
  const { plugin, grant } = pendingInstall;
  els.confirm.disabled = true;
  setResult(`Installing ${plugin}…`);
  try {
    const response = await adminFetch('/v1/admin/plugins', {
      method: 'POST',
      body: JSON.stringify({ plugin, grant }),
    });
    if (response.ok) {
      await installed(await response.json());
      return;
    }
    const err = await readError(response);
    if (permissionsAsked(err)) {
      // What it asks for changed since the check: ask again.
      showConsent(plugin, err.body.permissions, 'The permissions asked for changed; read them again.', 'error');
    } else {
      setResult(describeError(err), 'error');
      els.confirm.disabled = !els.grant.checked;
    }
  } catch (e) {
    setResult(e instanceof KeyCancelled ? 'Installing needs the admin key.' : `The installation failed: ${e.message}`, 'error');
    els.confirm.disabled = !els.grant.checked;
  }
}

async function installed(data) {
  clearConsent();
  const names = Array.isArray(data.installed) ? data.installed.map(String) : [];
  let text = names.length ? `Installed ${names.join(', ')}.` : 'Nothing new was installed.';
  if (data.already_installed) text += ` Already installed: ${data.already_installed}.`;
  if (Array.isArray(data.active)) text += ` Active now: ${data.active.join(', ') || 'none'}.`;
  changeProblems = Array.isArray(data.problems) ? data.problems.map(String) : [];
  setResult(text, 'ok');
  els.input.value = '';
  await loadPlugins();
}

