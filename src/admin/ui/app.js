// The Switchyard console: every view reads the admin API (docs/admin-api.yaml) with
// the admin token the operator signs in with. Text from the API is only ever set as
// text, never as markup.
'use strict';

const TOKEN_KEY = 'switchyard-admin-token';
const REFRESH_MS = 2000;
let timer = null;

/** Thrown for an answer the API refused; `status` is its HTTP status. */
class Refused extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** An element with attributes (`class`, `data-*`, properties) and children. */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else if (k === 'onclick' || k === 'onsubmit' || k === 'onchange') e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(typeof c === 'string' || typeof c === 'number' ? String(c) : c);
  }
  return e;
}

function cell(value, cls) {
  return el('td', { class: cls }, value === null || value === undefined ? '-' : String(value));
}

function number(value) {
  return cell(value ?? 0, 'number');
}

function say(message, isError) {
  const s = document.getElementById('status');
  s.textContent = message || '';
  s.className = isError ? 'error' : '';
}

async function api(method, path, body) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = 'Bearer ' + token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    json = text;
  }
  if (!r.ok) {
    const detail = json && json.detail ? json.detail : r.status + ' ' + r.statusText;
    throw new Refused(r.status, detail);
  }
  return json;
}

/** Shows what went wrong; a 401 asks for the token. */
function failed(e) {
  if (e instanceof Refused && e.status === 401) {
    showLogin(sessionStorage.getItem(TOKEN_KEY)
      ? 'The admin API refused this token.'
      : 'The admin API needs its token.');
  } else {
    say(e.message, true);
  }
}

function showLogin(reason) {
  stop();
  document.getElementById('view').replaceChildren();
  document.getElementById('login-reason').textContent = reason;
  document.getElementById('login').hidden = false;
  document.getElementById('sign-out').hidden = true;
  say('');
}

function stop() {
  if (timer) clearInterval(timer);
  timer = null;
}

/** Renders `draw` now and again every REFRESH_MS while the view stays. */
function live(draw) {
  stop();
  const run = () => draw().catch(failed);
  run();
  timer = setInterval(run, REFRESH_MS);
}

function view(...children) {
  document.getElementById('view').replaceChildren(...children);
}

// Subscriptions and their lanes, live.
async function subscriptions() {
  const [brokers, subs] = await Promise.all([
    api('GET', '/api/v1/brokers'),
    api('GET', '/api/v1/subscriptions'),
  ]);
  const brokerRows = brokers.map((b) =>
    el('tr', { 'data-broker': b.name }, cell(b.name), number(b.head), number(b.storedEvents), number(b.storedBytes)));
  const laneRows = [];
  for (const s of subs) {
    for (const l of s.lanes) {
      const error = l.lastError ? l.lastError.message + ' (' + l.lastError.time + ')' : null;
      laneRows.push(el('tr', { 'data-lane': s.name + ' ' + l.sink },
        cell(s.name), cell(s.broker), cell(l.sink), cell(l.state, 'state'),
        el('td', { class: 'number lag' }, String(l.lag)),
        el('td', { class: 'number in-flight' }, String(l.inFlight)),
        el('td', { class: 'number parked' }, String(l.parked)),
        el('td', { class: 'number delivered' }, String(l.delivered)),
        el('td', { class: 'number dead-lettered' }, String(l.deadLettered)),
        cell(error, 'error last-error'),
        el('td', {}, String(s.matched))));
    }
  }
  view(
    el('h2', {}, 'Brokers'),
    el('table', { id: 'brokers' },
      el('tr', {}, ['Broker', 'Head', 'Events', 'Bytes'].map((h) => el('th', {}, h))),
      brokerRows),
    el('h2', {}, 'Subscriptions'),
    el('table', { id: 'lanes' },
      el('tr', {}, ['Subscription', 'Broker', 'Sink', 'State', 'Lag', 'In flight', 'Parked',
        'Delivered', 'Dead-lettered', 'Last error', 'Matched'].map((h) => el('th', {}, h))),
      laneRows));
}

// The newest events of a broker, with their payloads, live.
let eventsBroker = null;
async function events() {
  const brokers = await api('GET', '/api/v1/brokers');
  if (!eventsBroker || !brokers.some((b) => b.name === eventsBroker)) {
    eventsBroker = brokers.length ? brokers[0].name : null;
  }
  const b = brokers.find((x) => x.name === eventsBroker);
  const after = b ? Math.max(0, b.head - 50) : 0;
  const list = b
    ? await api('GET', '/api/v1/brokers/' + encodeURIComponent(b.name) + '/events?after=' + after + '&limit=50')
    : [];
  const select = el('select', {
    id: 'events-broker',
    onchange: (e) => { eventsBroker = e.target.value; events().catch(failed); },
  }, brokers.map((x) => {
    const o = el('option', { value: x.name }, x.name);
    o.selected = x.name === eventsBroker;
    return o;
  }));
  const rows = list.slice().reverse().map((r) =>
    el('tr', { 'data-seq': r.seq },
      number(r.seq), cell(r.arrival), cell(r.event.type), cell(r.event.source), cell(r.event.id),
      el('td', {}, el('details', {}, el('summary', {}, 'payload'),
        el('pre', {}, JSON.stringify(r.event, null, 2))))));
  view(
    el('h2', {}, 'Recent events'),
    el('label', {}, 'Broker ', select),
    el('table', { id: 'events' },
      el('tr', {}, ['Seq', 'Arrival', 'Type', 'Source', 'Id', ''].map((h) => el('th', {}, h))),
      rows));
}

// The dead-letter store: redeliver or delete each.
async function deadLetters() {
  const letters = await api('GET', '/api/v1/deadletters');
  const act = (method, path, done) => async () => {
    try {
      await api(method, path);
      say(done);
      await deadLetters();
    } catch (e) {
      failed(e);
    }
  };
  const rows = letters.map((l) =>
    el('tr', { 'data-id': l.id },
      number(l.id), cell(l.subscription), cell(l.sink), number(l.seq),
      cell(l.event ? l.event.id : null), number(l.attempts), cell(l.lastError, 'error'), cell(l.time),
      el('td', {},
        el('button', { type: 'button', class: 'redeliver',
          onclick: act('POST', '/api/v1/deadletters/' + l.id + '/redeliver', 'Dead letter ' + l.id + ' redelivered.') },
        'Redeliver'), ' ',
        el('button', { type: 'button', class: 'delete',
          onclick: act('DELETE', '/api/v1/deadletters/' + l.id, 'Dead letter ' + l.id + ' deleted.') },
        'Delete'))));
  view(
    el('h2', {}, 'Dead letters'),
    letters.length ? null : el('p', { id: 'no-dead-letters' }, 'The dead-letter store is empty.'),
    el('table', { id: 'deadletters' },
      el('tr', {}, ['Id', 'Subscription', 'Sink', 'Seq', 'Event', 'Attempts', 'Last error', 'Time', '']
        .map((h) => el('th', {}, h))),
      rows));
}

// Replay of a range of the log through one subscription.
async function replay() {
  const subs = await api('GET', '/api/v1/subscriptions');
  const field = (label, input) => [el('label', { for: input.id }, label), input];
  const subscription = el('select', { id: 'replay-subscription' },
    subs.map((s) => el('option', { value: s.name }, s.name)));
  const from = el('input', { id: 'replay-from', placeholder: 'a sequence number or an RFC 3339 time' });
  const to = el('input', { id: 'replay-to', placeholder: 'default: the newest event' });
  const sink = el('input', { id: 'replay-sink', placeholder: "default: every sink's lane" });
  const position = (v) => (/^\d+$/.test(v) ? Number(v) : v);
  const form = el('form', {
    id: 'replay-form',
    class: 'panel',
    onsubmit: async (e) => {
      e.preventDefault();
      const body = { from: position(from.value.trim()) };
      if (to.value.trim()) body.to = position(to.value.trim());
      if (sink.value.trim()) body.sink = sink.value.trim();
      try {
        const r = await api('POST', '/api/v1/subscriptions/' + encodeURIComponent(subscription.value) + '/replay', body);
        say(r.queued + ' event(s) queued (' + r.from + '..=' + r.to + ').');
      } catch (err) {
        failed(err);
      }
    },
  },
  field('Subscription', subscription), field('From', from), field('To', to), field('Sink', sink),
  el('span'), el('button', { id: 'replay-run', type: 'submit' }, 'Replay'));
  view(el('h2', {}, 'Replay'), form);
}

// Explain: which subscription matches a pasted event, part by part.
function explain() {
  const input = el('textarea', { id: 'explain-event', spellcheck: 'false' });
  input.value = JSON.stringify({
    specversion: '1.0', id: 'example', source: '/tekton', type: 'dev.tekton.event.pipelinerun.failed.v1',
  }, null, 2);
  const out = el('ul', { id: 'verdicts' });
  const run = async () => {
    let event;
    try {
      event = JSON.parse(input.value);
    } catch (e) {
      say('Not JSON: ' + e.message, true);
      return;
    }
    try {
      const verdicts = await api('POST', '/api/v1/explain', event);
      say('');
      out.replaceChildren(...verdicts.map((v) =>
        el('li', { class: v.matched ? 'match' : 'no-match', 'data-subscription': v.subscription },
          (v.matched ? 'MATCH ' : 'no match ') + v.subscription + ' (broker ' + v.broker + ')',
          el('ul', {}, v.parts.length
            ? v.parts.map((p) => el('li', {}, p.part + ': ' + p.result.replace('_', ' ') + (p.error ? ': ' + p.error : '')))
            : el('li', {}, 'no filter: every event matches')))));
    } catch (e) {
      failed(e);
    }
  };
  view(el('h2', {}, 'Explain'), input,
    el('p', {}, el('button', { id: 'explain-run', type: 'button', onclick: run }, 'Explain')), out);
}

const VIEWS = {
  subscriptions: () => live(subscriptions),
  events: () => live(events),
  deadletters: () => { stop(); deadLetters().catch(failed); },
  replay: () => { stop(); replay().catch(failed); },
  explain: () => { stop(); explain(); },
};

function route() {
  const name = (location.hash || '#subscriptions').slice(1);
  for (const a of document.querySelectorAll('nav a')) {
    a.classList.toggle('current', a.getAttribute('href') === '#' + name);
  }
  document.getElementById('login').hidden = true;
  document.getElementById('sign-out').hidden = !sessionStorage.getItem(TOKEN_KEY);
  say('');
  (VIEWS[name] || VIEWS.subscriptions)();
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('login').onsubmit = (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById('token').value);
    document.getElementById('token').value = '';
    route();
  };
  document.getElementById('sign-out').onclick = () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin('Signed out.');
  };
  window.addEventListener('hashchange', route);
  route();
});
