'use strict';
// Switchyard console. Plain JavaScript, no build step, no libraries.
// Every piece of data goes into the page through textContent / createElement, never innerHTML.
(() => {
  const DESTINATIONS_EVERY_MS = 5000;
  const DEAD_LETTERS_EVERY_MS = 10000;
  const EXAMPLE = {
    type: 'group', userId: 'u1', groupId: 'acme',
    traits: { name: 'Acme', employees: '42', createdAt: '2024-01-02' },
  };
  const STATE_LABELS = { delivering: 'delivering', paused: 'paused', failing: 'failing', dry_run: 'dry run' };

  const view = {
    openErrors: new Set(),   // destination names whose "last error" is expanded
    deadLetters: [],         // last list shown
    selected: new Set(),     // checked dead letter ids
    openId: null,            // dead letter shown in the detail panel
    recent: [],              // messages offered by "Pick a recent one"
    problems: {},            // fetch problems by area, shown in a banner
    leaving: false,          // a 401 is reloading the page
  };

  // ---------- small helpers ----------

  const $ = (id) => document.getElementById(id);

  /** Creates an element. attrs: class, text, or any attribute; children: nodes or strings. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = String(value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === 'string' ? document.createTextNode(child) : child);
    }
    return node;
  }

  function svgEl(tag, attrs = {}) {
    const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    return node;
  }

  const pad2 = (n) => String(n).padStart(2, '0');
  const clock = (d) => `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  const num = (n) => (typeof n === 'number' ? n.toLocaleString('en-US') : '—');

  /** An RFC 3339 time as HH:MM:SS today, or with its date otherwise. */
  function when(rfc3339) {
    if (!rfc3339) return '—';
    const d = new Date(rfc3339);
    if (Number.isNaN(d.getTime())) return String(rfc3339);
    const today = new Date().toDateString() === d.toDateString();
    const date = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`;
    return today ? clock(d) : `${date} ${clock(d)}`;
  }

  /** Seconds as a short human age: "3 s", "2 min", "4 h", "2 d". */
  function age(seconds) {
    if (seconds === null || seconds === undefined) return '—';
    if (seconds < 1) return '< 1 s';
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
    return `${Math.floor(seconds / 86400)} d`;
  }

  /** Pretty JSON; a string that holds JSON is parsed first, any other string is shown as is. */
  function pretty(value) {
    if (typeof value === 'string') {
      try { return JSON.stringify(JSON.parse(value), null, 2); } catch { return value; }
    }
    return JSON.stringify(value, null, 2);
  }

  const rate = (n) => `${Number(n || 0).toFixed(n >= 10 ? 0 : 1)}/s`;

  // ---------- talking to the daemon ----------

  const csrfToken = () => document.querySelector('meta[name="csrf-token"]').content;

  /** fetch + JSON. Resolves {ok, status, data}; a 401 reloads the page (the login form). */
  async function request(path, { method = 'GET', body } = {}) {
    const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (method !== 'GET') {
      init.headers['Content-Type'] = 'application/json';
      init.headers['X-CSRF-Token'] = csrfToken();
      init.body = typeof body === 'string' ? body : JSON.stringify(body ?? {});
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      if (!view.leaving) { view.leaving = true; location.reload(); }
      throw new Error('not logged in');
    }
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    return { ok: response.ok, status: response.status, data };
  }

  /** Like request, but anything other than a 2xx becomes an Error with the server's message. */
  async function getJson(path) {
    const { ok, status, data } = await request(path);
    if (!ok) throw new Error(errorText(data, status));
    return data;
  }

  function errorText(data, status) {
    const err = data && data.error;
    return err && err.message ? `${err.message} (${err.code || status})` : `HTTP ${status}`;
  }

  function setProblem(area, message) {
    if (message) view.problems[area] = message; else delete view.problems[area];
    const messages = Object.values(view.problems);
    const banner = $('fetch-error');
    banner.hidden = messages.length === 0;
    banner.textContent = messages.length ? `Can't load: ${messages.join('; ')}` : '';
  }

  /** Runs task now and then every `ms`, never overlapping itself; skips while the tab is hidden. */
  function every(ms, task) {
    const tick = async () => {
      if (!document.hidden) { try { await task(); } catch { /* reported by the task */ } }
      setTimeout(tick, ms);
    };
    tick();
  }

  // ---------- header ----------

  function renderReload(reload) {
    const status = $('reload-status');
    const banner = $('reload-errors');
    status.className = 'reload-status';
    status.removeAttribute('title');
    banner.replaceChildren();
    banner.hidden = true;
    if (!reload) { status.textContent = ''; return; }
    if (reload.ok) {
      const changes = reload.changes || [];
      status.classList.add('ok');
      status.textContent = `config reloaded ${when(reload.at)}` +
        (changes.length ? ` (${changes.length} change${changes.length === 1 ? '' : 's'})` : '');
      if (changes.length) status.title = changes.join('\n');
      return;
    }
    status.classList.add('failed');
    status.textContent = `config reload failed ${when(reload.at)}`;
    banner.hidden = false;
    append(banner, [
      el('strong', { text: `Config reload at ${when(reload.at)} failed:` }),
      el('ul', {}, (reload.errors || []).map((e) => el('li', { text: e }))),
    ]);
  }

  // ---------- destinations ----------

  async function loadDestinations() {
    try {
      const data = await getJson('/admin/v1/destinations');
      const list = data.destinations || [];
      renderDestinations(list);
      renderReload(data.reload);
      fillDestinationFilter(list.map((d) => d.name));
      $('updated').textContent = `updated ${clock(new Date())}`;
      setProblem('destinations', null);
    } catch (e) {
      setProblem('destinations', `destinations (${e.message})`);
      throw e;
    }
  }

  function renderDestinations(list) {
    const box = $('destinations');
    if (!list.length) {
      box.replaceChildren(el('p', { class: 'muted', text: 'No destinations configured.' }));
      return;
    }
    box.replaceChildren(...list.map(destinationCard));
  }

  function stateLabel(d) {
    if (d.state === 'paused' && d.paused_until) return `paused until ${when(d.paused_until)}`;
    return STATE_LABELS[d.state] || d.state;
  }

  function destinationCard(d) {
    const stat = (label, value, warn) => el('div', {},
      el('dt', { text: label }), el('dd', { class: warn ? 'warn' : null, text: value }));
    return el('article', { class: `card${d.state === 'failing' ? ' is-failing' : ''}`, 'data-destination': d.name },
      el('div', { class: 'card-head' },
        el('h3', { text: d.name }),
        el('span', { class: 'type', text: d.type }),
        el('span', { class: `badge state-${d.state}`, 'data-state': d.state, text: stateLabel(d) })),
      el('dl', { class: 'stats' },
        stat('Pending', num(d.pending)),
        stat('In flight', num(d.in_flight)),
        stat('Retrying', num(d.retrying)),
        stat('Dead letters', num(d.dead_letters), d.dead_letters > 0),
        stat('Oldest waiting', age(d.oldest_pending_age_seconds)),
        stat('Coalesced', num(d.coalesced)),
        stat('Delivered', num(d.delivered_total)),
        stat('Failed', num(d.failed_total), d.failed_total > 0)),
      chart(d.series),
      d.unhealthy ? el('p', { class: 'unhealthy', text: `Unhealthy: ${d.unhealthy}` }) : null,
      d.last_error ? lastError(d) : null);
  }

  function lastError(d) {
    const details = el('details', { class: 'last-error', open: view.openErrors.has(d.name) },
      el('summary', { text: `Last error: ${d.last_error}` }),
      el('pre', { class: 'code', text: d.last_response ? pretty(d.last_response) : '(no response body)' }));
    details.addEventListener('toggle', () => {
      if (details.open) view.openErrors.add(d.name); else view.openErrors.delete(d.name);
    });
    return details;
  }

  /** A small SVG chart: delivered and failed per second, oldest point on the left. */
  function chart(series) {
    if (!series) return null;
    const delivered = series.delivered_per_second || [];
    const failed = series.failed_per_second || [];
    const points = Math.max(delivered.length, failed.length, 2);
    const height = 40;
    const max = Math.max(1e-9, ...delivered, ...failed);
    const line = (values, cls) => svgEl('polyline', {
      class: cls, fill: 'none', 'stroke-width': 1.5, 'vector-effect': 'non-scaling-stroke',
      'stroke-linejoin': 'round',
      points: values.map((v, i) => `${i},${(height - 1 - (v / max) * (height - 3)).toFixed(2)}`).join(' '),
    });
    const minutes = Math.round(((series.step_seconds || 10) * points) / 60);
    const svg = svgEl('svg', {
      viewBox: `0 0 ${points - 1} ${height}`, preserveAspectRatio: 'none', role: 'img',
      'aria-label': `Delivered and failed per second over the last ${minutes} minutes`,
    });
    svg.append(line(failed, 'line-failed'), line(delivered, 'line-delivered'));
    const last = (values) => (values.length ? values[values.length - 1] : 0);
    return el('div', { class: 'chart' }, svg,
      el('div', { class: 'chart-legend' },
        el('span', { class: 'key-delivered', text: `delivered ${rate(last(delivered))}` }),
        el('span', { class: 'key-failed', text: `failed ${rate(last(failed))}` }),
        el('span', { class: 'max', text: `last ${minutes} min · peak ${rate(max < 1e-6 ? 0 : max)}` })));
  }

  function fillDestinationFilter(names) {
    const select = $('dlq-destination');
    const current = select.value;
    const wanted = [...new Set([...names, ...(current ? [current] : [])])];
    const have = [...select.options].slice(1).map((o) => o.value);
    if (have.join('\n') === wanted.join('\n')) return;
    select.replaceChildren(el('option', { value: '', text: 'any' }),
      ...wanted.map((n) => el('option', { value: n, text: n })));
    select.value = current;
  }

  // ---------- dead letters ----------

  async function loadDeadLetters() {
    const params = new URLSearchParams({ limit: '100' });
    if ($('dlq-destination').value) params.set('destination', $('dlq-destination').value);
    if ($('dlq-reason').value) params.set('reason', $('dlq-reason').value);
    try {
      const data = await getJson(`/admin/v1/dead-letters?${params}`);
      view.deadLetters = data.dead_letters || [];
      const present = new Set(view.deadLetters.map((d) => d.id));
      for (const id of view.selected) if (!present.has(id)) view.selected.delete(id);
      renderDeadLetters();
      setProblem('dead letters', null);
    } catch (e) {
      setProblem('dead letters', `dead letters (${e.message})`);
      throw e;
    }
  }

  function renderDeadLetters() {
    const rows = view.deadLetters.map(deadLetterRow);
    $('dlq-rows').replaceChildren(...rows);
    $('dlq-empty').hidden = rows.length > 0;
    syncSelection();
  }

  function deadLetterRow(d) {
    const box = el('input', { type: 'checkbox', 'aria-label': `Select dead letter ${d.id}`, checked: view.selected.has(d.id) });
    box.addEventListener('change', () => {
      if (box.checked) view.selected.add(d.id); else view.selected.delete(d.id);
      syncSelection();
    });
    const row = el('tr', { 'data-dead-letter-id': d.id, tabindex: 0, class: d.id === view.openId ? 'active' : null },
      el('td', { class: 'col-check' }, box),
      el('td', { class: 'nowrap', text: d.id }),
      el('td', { class: 'nowrap', text: d.destination ?? '—' }),
      el('td', {}, el('span', { class: 'reason', text: d.reason })),
      el('td', { class: 'nowrap', text: d.status ?? '—' }),
      el('td', { class: 'error-cell', text: d.error ?? '' }),
      el('td', { class: 'nowrap', text: when(d.last_attempt) }));
    row.addEventListener('click', (e) => {
      if (e.target === box) return;
      if (e.target.closest('.col-check')) { box.click(); return; }
      openDetail(d.id);
    });
    row.addEventListener('keydown', (e) => { if (e.key === 'Enter' && e.target === row) openDetail(d.id); });
    return row;
  }

  function syncSelection() {
    const n = view.selected.size;
    $('replay-selected').disabled = n === 0;
    $('purge-selected').disabled = n === 0;
    $('replay-selected').textContent = n ? `Replay selected (${n})` : 'Replay selected';
    $('purge-selected').textContent = n ? `Purge selected (${n})` : 'Purge selected';
    const all = $('dlq-select-all');
    all.checked = n > 0 && n === view.deadLetters.length;
    all.indeterminate = n > 0 && n < view.deadLetters.length;
  }

  function selectAll(checked) {
    view.selected.clear();
    if (checked) for (const d of view.deadLetters) view.selected.add(d.id);
    renderDeadLetters();
  }

  async function openDetail(id) {
    view.openId = id;
    for (const row of $('dlq-rows').rows) {
      row.classList.toggle('active', row.dataset.deadLetterId === String(id));
    }
    const panel = $('dlq-detail');
    panel.hidden = false;
    $('dlq-detail-title').textContent = `Dead letter #${id}`;
    $('dlq-detail-meta').textContent = 'Loading…';
    $('dlq-detail-message').textContent = '';
    $('dlq-detail-status').textContent = '';
    $('dlq-detail-response').textContent = '';
    panel.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
    try {
      const { ok, status, data } = await request(`/admin/v1/dead-letters/${encodeURIComponent(id)}`);
      if (view.openId !== id) return;
      if (!ok) {
        $('dlq-detail-meta').textContent = status === 404
          ? 'This dead letter no longer exists (replayed or purged).' : errorText(data, status);
        return;
      }
      renderDetail(data);
    } catch (e) {
      if (view.openId === id) $('dlq-detail-meta').textContent = `Can't load it: ${e.message}`;
    }
  }

  function renderDetail(d) {
    $('dlq-detail-meta').textContent = [
      `destination ${d.destination ?? '—'}`, `source ${d.source ?? '—'}`, `reason ${d.reason}`,
      `${d.attempts} attempt${d.attempts === 1 ? '' : 's'}`,
      `first ${when(d.first_attempt)}`, `last ${when(d.last_attempt)}`,
      d.message_id ? `messageId ${d.message_id}` : null,
    ].filter(Boolean).join(' · ');
    $('dlq-detail-message').textContent = d.message === undefined ? '(message not stored)' : pretty(d.message);
    const status = $('dlq-detail-status');
    status.replaceChildren(
      el('strong', { text: d.status ? `HTTP ${d.status}` : 'No HTTP status' }),
      d.error ? ` — ${d.error}` : '');
    $('dlq-detail-response').textContent = d.response ? pretty(d.response) : '(no response recorded)';
  }

  function closeDetail() {
    view.openId = null;
    $('dlq-detail').hidden = true;
    for (const row of $('dlq-rows').rows) row.classList.remove('active');
  }

  async function actOnSelected(action) {
    const ids = [...view.selected].sort((a, b) => a - b);
    if (!ids.length) return;
    const what = `${ids.length} dead letter${ids.length === 1 ? '' : 's'}`;
    const question = action === 'replay'
      ? `Replay ${what}? They go back into their destinations' queues.`
      : `Purge ${what}? This deletes them for good.`;
    if (!window.confirm(question)) return;
    const result = $('dlq-result');
    result.classList.remove('error');
    result.textContent = action === 'replay' ? 'Replaying…' : 'Purging…';
    try {
      const { ok, status, data } = await request(`/admin/v1/dead-letters/${action}`, { method: 'POST', body: { ids } });
      if (!ok) throw new Error(errorText(data, status));
      result.textContent = action === 'replay'
        ? `Replayed ${data.replayed ?? 0}, skipped ${data.skipped ?? 0}.`
        : `Purged ${data.purged ?? 0}.`;
      for (const id of ids) view.selected.delete(id);
      if (ids.includes(view.openId)) closeDetail();
    } catch (e) {
      result.classList.add('error');
      result.textContent = `${action === 'replay' ? 'Replay' : 'Purge'} failed: ${e.message}`;
    }
    await Promise.allSettled([loadDeadLetters(), loadDestinations()]);
  }

  // ---------- try a message ----------

  async function loadRecent() {
    try {
      const data = await getJson('/admin/v1/recent?limit=10');
      view.recent = data.messages || [];
    } catch {
      view.recent = [];
    }
    const select = $('try-recent');
    const placeholder = view.recent.length ? 'choose…' : 'none yet';
    select.replaceChildren(el('option', { value: '', text: placeholder }),
      ...view.recent.map((m, i) => el('option', { value: i, text: recentLabel(m) })));
  }

  function recentLabel(m) {
    const who = m.groupId ?? m.event ?? m.userId ?? m.anonymousId ?? '';
    return [m.type, who, m.messageId].filter((x) => x !== undefined && x !== null && x !== '').join(' · ');
  }

  function pickRecent() {
    const i = $('try-recent').value;
    if (i === '' || !view.recent[i]) return;
    $('try-input').value = pretty(view.recent[i]);
  }

  async function runTry() {
    const out = $('try-result');
    const text = $('try-input').value;
    try {
      JSON.parse(text);
    } catch (e) {
      out.replaceChildren(errorBox('Not valid JSON', e.message));
      return;
    }
    const button = $('try-run');
    button.disabled = true;
    button.textContent = 'Trying…';
    try {
      const { ok, status, data } = await request('/admin/v1/try', { method: 'POST', body: text });
      if (ok) out.replaceChildren(...tryResult(data));
      else if (status === 400 && data?.error?.code === 'invalid_message') {
        out.replaceChildren(errorBox('Invalid message', data.error.message));
      } else out.replaceChildren(errorBox('Try failed', errorText(data, status)));
    } catch (e) {
      out.replaceChildren(errorBox('Try failed', e.message));
    } finally {
      button.disabled = false;
      button.textContent = 'Try it';
    }
  }

  function errorBox(title, message) {
    return el('div', { class: 'error-box', role: 'alert' }, el('strong', { text: title }), message);
  }

  function tryResult(data) {
    const routes = data.routes || [];
    const requests = data.requests || [];
    const errors = data.errors || [];
    const nodes = [
      el('div', { class: 'panel try-normalized' },
        el('h3', { text: 'Normalized message' }),
        el('pre', { class: 'code', text: pretty(data.normalized) })),
      el('div', { class: 'try-routes' }, el('h3', { text: 'Routes' }), routesTable(routes)),
    ];
    for (const e of errors) {
      nodes.push(el('div', { class: 'error-box', 'data-try-error': e.destination },
        el('strong', { text: `${e.destination}: could not translate` }), e.error));
    }
    nodes.push(el('h3', { text: `Requests (${requests.length})` }));
    if (!requests.length) nodes.push(el('p', { class: 'muted', text: 'No destination would receive a request.' }));
    for (const r of requests) nodes.push(requestBlock(r));
    return nodes;
  }

  function routesTable(routes) {
    if (!routes.length) return el('p', { class: 'muted', text: 'No destinations.' });
    return el('div', { class: 'table-wrap' },
      el('table', { class: 'data' },
        el('thead', {}, el('tr', {}, el('th', { text: 'Destination' }), el('th', { text: 'Routed' }), el('th', { text: 'Why' }))),
        el('tbody', {}, routes.map((r) => el('tr', { 'data-route': r.destination },
          el('td', { class: 'nowrap', text: r.destination }),
          el('td', { class: r.routed ? 'yes' : 'no', text: r.routed ? 'yes' : 'no' }),
          el('td', { text: r.why ?? '' }))))));
  }

  function requestBlock(r) {
    const headers = Array.isArray(r.headers) ? r.headers : Object.entries(r.headers || {});
    return el('div', { class: 'panel request', 'data-try-destination': r.destination },
      el('h3', { text: r.destination }),
      el('p', { class: 'request-line' }, el('span', { class: 'method', text: r.method }), ` ${r.url}`),
      headers.length
        ? el('dl', { class: 'headers' }, headers.map(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })]))
        : null,
      el('pre', { class: 'code', text: r.body === undefined || r.body === null ? '(no body)' : pretty(r.body) }));
  }

  // ---------- start ----------

  function start() {
    $('logout-csrf').value = csrfToken();
    $('try-input').value = pretty(EXAMPLE);
    $('dlq-destination').addEventListener('change', () => loadDeadLetters().catch(() => {}));
    $('dlq-reason').addEventListener('change', () => loadDeadLetters().catch(() => {}));
    $('dlq-select-all').addEventListener('change', (e) => selectAll(e.target.checked));
    $('replay-selected').addEventListener('click', () => actOnSelected('replay'));
    $('purge-selected').addEventListener('click', () => actOnSelected('purge'));
    $('dlq-detail-close').addEventListener('click', closeDetail);
    $('try-recent').addEventListener('change', pickRecent);
    $('try-recent-refresh').addEventListener('click', loadRecent);
    $('try-run').addEventListener('click', runTry);
    $('try-input').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) runTry();
    });
    every(DESTINATIONS_EVERY_MS, loadDestinations);
    every(DEAD_LETTERS_EVERY_MS, loadDeadLetters);
    loadRecent();
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) { loadDestinations().catch(() => {}); loadDeadLetters().catch(() => {}); }
    });
  }

  document.addEventListener('DOMContentLoaded', start);
})();
