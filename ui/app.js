/*
 * The Sluice status page (docs/http-api.md#operator-status-page). Hand-written, no library:
 * ES2017 at most, fetch and EventSource, so that an old tablet's browser runs it. Everything the page
 * shows comes from /ui/api/ with the session cookie; text from the gateway is only ever set as
 * text (textContent), never parsed as HTML.
 */
(function () {
  'use strict';

  var session = null;
  var stream = null;
  var retryTimer = null;
  var commandsTimer = null;
  var devices = { list: [], at: 0 };
  var gateway = null;
  var commands = { open: [], recent: [], at: 0 };
  var shown = null;

  // ---- small helpers ----

  function $(id) {
    return document.getElementById(id);
  }

  /** An element with attributes and children (strings become text nodes). */
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (name) {
        var value = attrs[name];
        if (value === null || value === undefined || value === false) return;
        if (name === 'text') node.textContent = String(value);
        else node.setAttribute(name, value === true ? '' : String(value));
      });
    }
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    });
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  /**
   * Makes `parent`'s children look like `nodes` (freshly built, not in the document), touching
   * only what differs. The tables are drawn again every second (ages move on) and at every
   * event: rebuilt whole, they cleared the operator's text selection each time — a key half
   * selected to copy was gone a second later. So a child that is the same is left alone, a
   * changed one keeps its element and gets only its changed cells, and only new children are
   * inserted. With `idOf`, children are matched by it (a row stays the same element when rows
   * come or go around it); without, by position.
   */
  function patch(parent, nodes, idOf) {
    var ids = idOf ? nodes.map(idOf) : null;
    var kept = new Map();
    children(parent).forEach(function (child, i) {
      var id = idOf ? idOf(child) : i;
      var wanted = ids ? ids.indexOf(id) >= 0 : i < nodes.length;
      if (!wanted || kept.has(id)) parent.removeChild(child);
      else kept.set(id, child);
    });
    nodes.forEach(function (node, i) {
      var current = kept.get(ids ? ids[i] : i);
      var at = parent.children[i] || null;
      if (current === undefined || current.tagName !== node.tagName) {
        if (current !== undefined) parent.removeChild(current);
        parent.insertBefore(node, parent.children[i] || null);
        return;
      }
      // Matched once: a second node with the same id gets an element of its own.
      kept.delete(ids ? ids[i] : i);
      // Moving a child would drop a selection inside it: only when the order changed.
      if (current !== at) parent.insertBefore(current, at);
      if (!current.isEqualNode(node)) update(current, node);
    });
  }

  /** Gives `current` the attributes and children of `node`, replacing only the changed ones. */
  function update(current, node) {
    Array.prototype.slice.call(current.attributes).forEach(function (a) {
      if (!node.hasAttribute(a.name)) current.removeAttribute(a.name);
    });
    Array.prototype.slice.call(node.attributes).forEach(function (a) {
      if (current.getAttribute(a.name) !== a.value) current.setAttribute(a.name, a.value);
    });
    var fresh = Array.prototype.slice.call(node.childNodes);
    fresh.forEach(function (child, i) {
      var old = current.childNodes[i];
      if (!old) current.appendChild(child);
      else if (!old.isEqualNode(child)) current.replaceChild(child, old);
    });
    while (current.childNodes.length > fresh.length) current.removeChild(current.lastChild);
  }

  function children(node) {
    return Array.prototype.slice.call(node.children);
  }

  function byAttribute(name) {
    return function (node) {
      return node.getAttribute(name);
    };
  }

  function now() {
    return Date.now();
  }

  /** `850ms`, `12s`, `3m12s`, `2h5m`, `3d4h`: as sluicectl prints durations. */
  function dur(ms) {
    if (ms === null || ms === undefined || isNaN(ms)) return '-';
    ms = Math.max(0, Math.round(ms));
    if (ms < 1000) return ms + 'ms';
    var s = Math.floor(ms / 1000);
    if (s < 60) return s + 's';
    var m = Math.floor(s / 60);
    if (m < 60) return m + 'm' + (s % 60 ? (s % 60) + 's' : '');
    var h = Math.floor(m / 60);
    if (h < 24) return h + 'h' + (m % 60 ? (m % 60) + 'm' : '');
    return Math.floor(h / 24) + 'd' + (h % 24 ? (h % 24) + 'h' : '');
  }

  // Repeated hits of one kind over one intake are one history event with a count (the journal
  // keeps a client's retries from growing it): summed, as `sluicectl show` does.
  function hitCount(hits) {
    return hits.reduce(function (n, h) {
      return n + h.count;
    }, 0);
  }

  // `mqtt 2m ago, https ×1200 (first 3h ago, last 2s ago)`.
  function hitsText(hits) {
    return hits
      .map(function (h) {
        return h.count === 1
          ? h.intake + ' ' + ago(h.at)
          : h.intake + ' ×' + h.count + ' (first ' + ago(h.firstAt) + ', last ' + ago(h.at) + ')';
      })
      .join(', ');
  }

  function ago(iso) {
    var t = Date.parse(iso);
    if (isNaN(t)) return '-';
    var d = now() - t;
    return d >= 0 ? dur(d) + ' ago' : 'in ' + dur(-d);
  }

  /**
   * A command's age `since` its document was read: `3m12s`; for one accepted ahead of the
   * gateway's clock (the clock set back since: `acceptedAheadMs`), `unknown (accepted in 59s:
   * clock set back)`, as `sluicectl stuck` and `list` say it, not an age of 0.
   */
  function age(c, since) {
    if (c.acceptedAheadMs === null || c.acceptedAheadMs === undefined) return dur(c.ageMs + since);
    var ahead = c.acceptedAheadMs - since;
    return ahead > 0 ? 'unknown (accepted in ' + dur(ahead) + ': clock set back)' : dur(-ahead);
  }

  function action(a, position) {
    return position === null || position === undefined ? a : a + ' ' + position + '%';
  }

  function outcome(state, code, faultCode) {
    return [state, code, faultCode]
      .filter(function (p) {
        return p !== null && p !== undefined && p !== '';
      })
      .join(' ');
  }

  function stateTone(state) {
    if (state === 'confirmed') return 'rest';
    if (state === 'rejected' || state === 'failed') return 'bad';
    if (state === 'accepted' || state === 'dispatched') return 'moving';
    return 'unknown';
  }

  function word(text, tone) {
    return el('span', { class: 'state tone-' + tone, text: text });
  }

  function bytes(n) {
    if (n === null || n === undefined) return 'unknown';
    if (n < 1024) return n + ' B';
    if (n < 1048576) return (n / 1024).toFixed(1) + ' KiB';
    return (n / 1048576).toFixed(1) + ' MiB';
  }

  function commandLink(scope, key) {
    return el('a', {
      href: '#/command/' + encodeURIComponent(scope) + '/' + encodeURIComponent(key),
      text: key,
    });
  }

  function api(method, path, body) {
    var init = {
      method: method,
      credentials: 'same-origin',
      headers: { accept: 'application/json' },
    };
    if (method !== 'GET') {
      init.headers['content-type'] = 'application/json';
      if (session) init.headers['x-csrf-token'] = session.csrfToken;
      init.body = JSON.stringify(body || {});
    }
    return fetch(path, init).then(function (res) {
      if (res.status === 204) return { status: 204, body: null };
      return res.text().then(function (text) {
        var parsed;
        try {
          parsed = text ? JSON.parse(text) : null;
        } catch (notJson) {
          parsed = { detail: text + ' (' + notJson.message + ')' };
        }
        if (res.status === 401 && session && path !== '/ui/api/login') loggedOut();
        return { status: res.status, body: parsed };
      });
    }, unreachable);
  }

  /** A request that never reached the gateway: status 0, and every caller says so. */
  function unreachable() {
    return { status: 0, body: { detail: 'the gateway cannot be reached' } };
  }

  function problemText(answer) {
    var b = answer.body || {};
    if (answer.status === 0) return 'The gateway cannot be reached.';
    return (b.code ? b.code + ': ' : 'HTTP ' + answer.status + ': ') + (b.detail || '');
  }

  // ---- session ----

  function showLogin(message) {
    session = null;
    closeStream();
    $('app').hidden = true;
    $('who').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    setStream('idle', 'Not connected');
    $('token').focus();
  }

  function loggedOut() {
    showLogin('The session ended. Log in again.');
  }

  function start(doc) {
    session = doc;
    $('login').hidden = true;
    $('app').hidden = false;
    $('who').hidden = false;
    $('gateway-id').textContent = doc.gatewayId;
    $('who-name').textContent = doc.identity + ' (' + doc.role + ')';
    openStream();
    loadCommands();
    route();
  }

  $('login-form').addEventListener('submit', function (event) {
    event.preventDefault();
    var token = $('token').value;
    $('login-error').textContent = '';
    api('POST', '/ui/api/login', token ? { token: token } : {}).then(function (answer) {
      $('token').value = '';
      if (answer.status === 200) start(answer.body);
      else $('login-error').textContent = problemText(answer);
    });
  });

  $('logout').addEventListener('click', function () {
    api('POST', '/ui/api/logout').then(function () {
      showLogin('Logged out.');
    });
  });

  // ---- the live stream ----
  //
  // A browser opens at most six HTTP/1.1 connections to one host, and every event stream holds
  // one for as long as its page is open: with six pages of the gateway open, a seventh did not
  // even load, and every page's requests (a resolve among them) waited for ever. So the pages of
  // one browser share one stream where they can: the page holding a Web Lock opens it and
  // passes its events and its state on a BroadcastChannel; the others listen, and one of them
  // takes the lock (and opens the stream) when that page goes. A browser without either opens
  // a stream per page, as before.

  var SHARED = 'sluice-events';
  var locks = window.navigator.locks;
  var sharing =
    typeof window.BroadcastChannel === 'function' &&
    typeof locks === 'object' &&
    locks !== null &&
    typeof locks.request === 'function';
  /** This page's BroadcastChannel while it is logged in (sharing browsers). */
  var channel = null;
  /** Releases the lock while this page holds the shared stream. */
  var leading = null;
  /** Counts openStream() calls: a lock granted to an earlier one is given back at once. */
  var generation = 0;
  /** What the holder sends a page that joins: the last devices, gateway and stream state. */
  var last = { devices: null, gateway: null, status: null };

  function setStream(kind, text) {
    var node = $('stream');
    node.className = 'stream stream-' + kind;
    node.textContent = text;
  }

  /** The stream's state, here and on every page that shares it. */
  function status(kind, text) {
    setStream(kind, text);
    last.status = { kind: kind, text: text };
    share({ type: 'status', kind: kind, text: text });
  }

  function share(message) {
    if (leading && channel) channel.postMessage(message);
  }

  function closeStream() {
    generation++;
    if (leading && channel) channel.postMessage({ type: 'ended' });
    if (stream) stream.close();
    stream = null;
    if (retryTimer) clearTimeout(retryTimer);
    retryTimer = null;
    if (channel) channel.close();
    channel = null;
    if (leading) leading();
    leading = null;
    last = { devices: null, gateway: null, status: null };
  }

  function openStream() {
    closeStream();
    setStream('idle', 'Connecting…');
    if (!sharing) {
      connect();
      return;
    }
    var mine = generation;
    channel = new window.BroadcastChannel(SHARED);
    channel.onmessage = function (message) {
      var m = message.data || {};
      if (leading) {
        if (m.type === 'hello') greet();
      } else if (m.type === 'event') received(m.event, m.data);
      else if (m.type === 'status') setStream(m.kind, m.text);
      // The page holding the stream was logged out, or its session ended: so is this one's.
      else if (m.type === 'ended' && session) loggedOut();
    };
    channel.postMessage({ type: 'hello' });
    locks.request(SHARED, function () {
      if (mine !== generation) return null;
      return new Promise(function (release) {
        leading = release;
        connect();
      });
    });
  }

  /** A page joined: it gets what this one shows now; its own lists it fetches itself. */
  function greet() {
    if (last.status) share({ type: 'status', kind: last.status.kind, text: last.status.text });
    if (last.devices) share({ type: 'event', event: 'devices', data: last.devices });
    if (last.gateway) share({ type: 'event', event: 'gateway', data: last.gateway });
  }

  /** Opens this page's event stream (its own, or the one it holds for the others). */
  function connect() {
    if (stream) stream.close();
    stream = null;
    status('idle', 'Connecting…');
    var es = new EventSource('/ui/api/events');
    stream = es;
    es.onopen = function () {
      status('live', 'Live');
    };
    es.onerror = function () {
      if (stream !== es) return;
      status('down', 'Disconnected, retrying…');
      // The browser retries by itself unless the answer was not a stream (a 401 after the
      // session ended, a 503): then this page asks whether the session is still there and its
      // stream would be taken.
      if (es.readyState === 2) {
        es.close();
        retryTimer = setTimeout(admitted, 2000);
      }
    };
    ['devices', 'gateway', 'commands', 'session'].forEach(function (name) {
      es.addEventListener(name, function (e) {
        if (name === 'devices' || name === 'gateway') last[name] = e.data;
        share({ type: 'event', event: name, data: e.data });
        received(name, e.data);
      });
    });
  }

  function received(name, data) {
    if (name === 'devices') {
      devices = { list: JSON.parse(data).devices, at: now() };
      fillDeviceFilter();
      renderDevices();
    } else if (name === 'gateway') {
      gateway = JSON.parse(data);
      renderGateway();
    } else if (name === 'commands') {
      var change = JSON.parse(data);
      loadCommandsSoon();
      if (shown && (!change.key || (change.key === shown.key && change.scope === shown.scope))) {
        loadCommand(shown.scope, shown.key);
      }
    } else if (name === 'session') {
      loggedOut();
    }
  }

  /**
   * Opens the stream again if the gateway would take it now. A refusal (too many streams of
   * this session, of its identity, or in all) is shown with why, and asked again after the
   * delay it gives: an EventSource sees nothing of it but an error.
   */
  function admitted() {
    retryTimer = null;
    var mine = generation;
    api('GET', '/ui/api/events/admission').then(function (answer) {
      // Logged out, or the stream opened anew, meanwhile.
      if (!session || mine !== generation) return;
      if (answer.status === 204) connect();
      else if (answer.status === 503 && answer.body && answer.body.code === 'TOO_MANY_STREAMS') {
        status('down', 'Not live: ' + answer.body.detail + '. Tried again every 10 s.');
        retryTimer = setTimeout(admitted, 10000);
      } else if (answer.status !== 401) retryLater();
    });
  }

  function retryLater() {
    status('down', 'Disconnected, retrying…');
    retryTimer = setTimeout(connect, 5000);
  }

  // ---- gateway ----

  function field(dl, label, value, tone) {
    var dd = el('dd');
    if (value && value.nodeType) dd.appendChild(value);
    else dd.textContent = value;
    if (tone) dd.className = 'tone-' + tone;
    dl.appendChild(el('div', null, [el('dt', { text: label }), dd]));
  }

  function renderGateway() {
    if (!gateway) {
      clear($('gateway'));
      return;
    }
    var dl = el('dl');
    var c = gateway.clock;
    var clockTone =
      c.state === 'LOCKED'
        ? 'rest'
        : c.state === 'HOLDOVER'
          ? 'local'
          : c.source === 'none'
            ? 'unknown'
            : 'fault';
    var offset = c.offsetNs === null ? '' : ', offset ' + c.offsetNs + ' ns';
    field(
      dl,
      'Clock',
      el('span', null, [word(c.state, clockTone), ' ' + c.source + offset + ' — ' + c.detail]),
    );
    var m = gateway.mqtt;
    if (m === null) field(dl, 'MQTT', 'not configured');
    else
      field(
        dl,
        'MQTT',
        el('span', null, [
          word(m.connected ? 'CONNECTED' : 'NOT CONNECTED', m.connected ? 'rest' : 'fault'),
          ' ' + (m.connected ? m.protocol : m.lastError || 'no connection to the broker'),
        ]),
      );
    // The daemon's verdict on its HTTPS certificate, as /readyz gives it: the word and tone
    // follow its state, the text is its detail.
    var cert = gateway.certificate;
    if (cert === null) field(dl, 'HTTPS certificate', 'not known');
    else
      field(
        dl,
        'HTTPS certificate',
        el('span', null, [
          word(
            cert.state.toUpperCase(),
            cert.state === 'valid' ? 'rest' : cert.state === 'expiring' ? 'warn' : 'fault',
          ),
          ' ' + cert.detail,
        ]),
      );
    // Unavailable in /readyz's words: every command is refused, and none is written or settled,
    // until it works again.
    var journal = gateway.journal;
    if (journal.unavailable === null) field(dl, 'Journal', bytes(journal.bytes));
    else
      field(
        dl,
        'Journal',
        el('span', null, [
          word('UNAVAILABLE', 'fault'),
          ' ' + journal.unavailable + ' (' + bytes(journal.bytes) + ')',
        ]),
      );
    var open = gateway.commands;
    field(
      dl,
      'Open commands',
      open.accepted +
        open.dispatched +
        ' (' +
        open.accepted +
        ' accepted, ' +
        open.dispatched +
        ' dispatched), ' +
        open.stuck +
        ' stuck',
      open.stuck > 0 ? 'bad' : null,
    );
    field(dl, 'Version', 'sluice ' + gateway.version);
    patch($('gateway'), children(dl));
  }

  // ---- devices ----

  function renderDevices() {
    var since = now() - devices.at;
    var rows = devices.list.map(function (d) {
      var m = d.mirror;
      var stateCell = el('td');
      stateCell.appendChild(word(m ? m.state : 'NO READBACK', d.tone));
      if (d.stalled) {
        stateCell.appendChild(
          el('span', {
            class: 'badge',
            text: 'STUCK: no movement for ' + dur(d.stalled.forMs + since),
          }),
        );
      }
      if (d.frozen) {
        // The controller answers with the same scan: the state shown is not what it does.
        stateCell.appendChild(
          el('span', {
            class: 'badge',
            text: 'IMAGE FROZEN: the same scan for ' + dur(d.frozen.forMs + since),
          }),
        );
      }
      var position = el('td');
      if (m && m.position !== null) {
        position.appendChild(
          el('progress', { max: 100, value: m.position, 'aria-hidden': 'true' }),
        );
        position.appendChild(document.createTextNode(' ' + m.position + ' %'));
      } else position.textContent = '-';
      var fault = el('td');
      if (d.fault) {
        fault.appendChild(word(d.fault.code, 'fault'));
        fault.appendChild(
          el('span', { class: 'sub', text: d.fault.meaning || 'not in the profile' }),
        );
      } else fault.textContent = '-';
      var skew = '-';
      if (d.skew) {
        skew =
          (d.skew.offsetMs >= 0 ? '+' : '') +
          d.skew.offsetMs +
          ' ms ±' +
          d.skew.uncertaintyMs +
          ' ms';
      }
      var skewCell = el('td', { text: skew });
      if (d.clockOff) {
        skewCell.appendChild(
          el('span', {
            class: 'sub tone-bad',
            text: 'beyond ' + d.clockOff.maxMs + ' ms since ' + ago(d.clockOff.since),
          }),
        );
      }
      var row = el('tr', { class: d.stalled || d.frozen ? 'stuck' : null, 'data-device': d.id }, [
        el('td', null, [
          el('strong', { text: d.id }),
          el('span', { class: 'sub', text: d.profile }),
        ]),
        stateCell,
        position,
        fault,
        el('td', null, [d.mode ? word(d.mode, d.mode === 'LOCAL' ? 'local' : 'rest') : '-']),
        el('td', {
          text: d.readbackAgeMs === null ? 'never' : dur(d.readbackAgeMs + since) + ' ago',
        }),
        skewCell,
        connectivity(d),
        inFlight(d, since),
      ]);
      return row;
    });
    patch($('devices').tBodies[0], rows, byAttribute('data-device'));
  }

  function connectivity(d) {
    var c = d.connectivity;
    var td = el('td');
    if (!c.connected) {
      td.appendChild(word('NOT CONNECTED', 'fault'));
      if (c.lastError) td.appendChild(el('span', { class: 'sub', text: c.lastError }));
    } else if (c.readError) {
      td.appendChild(word('READS FAIL', 'fault'));
      td.appendChild(
        el('span', {
          class: 'sub',
          text:
            c.readError.failures +
            ' in a row since ' +
            ago(c.readError.since) +
            ': ' +
            c.readError.message,
        }),
      );
    } else {
      td.appendChild(word('OK', 'rest'));
      if (c.clockReadError) {
        td.appendChild(
          el('span', {
            class: 'sub tone-warn',
            text: 'clock reads fail: ' + c.clockReadError.message,
          }),
        );
      }
    }
    return td;
  }

  function inFlight(d, since) {
    var td = el('td');
    var c = d.command;
    if (!c) {
      td.textContent = d.queued > 0 ? d.queued + ' queued' : '-';
      return td;
    }
    td.appendChild(commandLink(c.scope, c.key));
    td.appendChild(document.createTextNode(' ' + action(c.action, c.position) + ' '));
    td.appendChild(word(c.state, 'moving'));
    var late =
      Date.parse(c.deadline) < now()
        ? ', past its deadline by ' + dur(now() - Date.parse(c.deadline))
        : '';
    // Of one accepted ahead of the gateway's clock (set back since), no age: as the lists say it.
    var ahead = c.acceptedAheadMs ? c.acceptedAheadMs - since : 0;
    var forHow =
      ahead > 0
        ? 'for an unknown time (accepted in ' + dur(ahead) + ': clock set back)'
        : 'for ' + age(c, since);
    td.appendChild(el('span', { class: 'sub', text: forHow + late }));
    if (d.queued > 0)
      td.appendChild(el('span', { class: 'sub', text: d.queued + ' queued behind it' }));
    return td;
  }

  function fillDeviceFilter() {
    var select = $('filter-device');
    var known = Array.prototype.map.call(select.options, function (o) {
      return o.value;
    });
    devices.list.forEach(function (d) {
      if (known.indexOf(d.id) < 0) select.appendChild(el('option', { text: d.id }));
    });
  }

  // ---- commands ----

  function loadCommandsSoon() {
    if (commandsTimer) return;
    commandsTimer = setTimeout(function () {
      commandsTimer = null;
      loadCommands();
    }, 150);
  }

  /**
   * Counts the list requests: a filter change, a cue from the stream and a login each ask
   * again while an earlier answer may still be on its way, and answers can arrive in any order
   * (a slow network, a busy gateway). Only the answer to the latest request is shown; an older
   * one arriving after it would put back a list for the wrong filter, or one out of date.
   */
  var commandsAsked = 0;

  function loadCommands() {
    var q = [];
    var device = $('filter-device').value;
    var state = $('filter-state').value;
    if (device) q.push('device=' + encodeURIComponent(device));
    if (state) q.push('state=' + encodeURIComponent(state));
    var asked = ++commandsAsked;
    api('GET', '/ui/api/commands' + (q.length ? '?' + q.join('&') : '')).then(function (answer) {
      if (asked !== commandsAsked || answer.status !== 200) return;
      commands = { open: answer.body.open, recent: answer.body.recent, at: now() };
      renderCommands();
    });
  }

  function renderCommands() {
    var since = now() - commands.at;
    var open = commands.open.map(function (c) {
      return el(
        'tr',
        { class: c.stuck ? 'stuck' : null, 'data-key': c.key, 'data-scope': c.scope },
        [
          el('td', null, [commandLink(c.scope, c.key)]),
          el('td', { text: c.scope }),
          el('td', { text: c.device }),
          el('td', { text: action(c.action, c.position) }),
          el('td', null, [word(c.state, 'moving')]),
          el('td', { text: age(c, since) }),
          el('td', {
            text: (Date.parse(c.deadline) <= now() ? 'passed ' : 'due ') + ago(c.deadline),
          }),
          el('td', null, [
            c.stuck
              ? el('span', {
                  class: 'badge',
                  text: 'STUCK ' + dur(c.overdueMs + since) + ' overdue',
                })
              : 'no',
          ]),
          el('td', { text: c.why }),
        ],
      );
    });
    patch($('open-commands').tBodies[0], open, commandId);
    $('open-empty').hidden = commands.open.length > 0;
    var recent = commands.recent.map(function (c) {
      return el('tr', { 'data-key': c.key, 'data-scope': c.scope }, [
        el('td', null, [commandLink(c.scope, c.key)]),
        el('td', { text: c.scope }),
        el('td', { text: c.device }),
        el('td', { text: action(c.action, c.position) }),
        el('td', null, [word(c.state, stateTone(c.state))]),
        el('td', { text: outcome(null, c.code, c.faultCode) || '-' }),
        el('td', { class: 'num', text: c.seq === null ? '-' : c.seq }),
        el('td', { text: c.intake }),
        el('td', { text: age(c, since) }),
        el('td', { text: c.settledAt ? ago(c.settledAt) : '-' }),
      ]);
    });
    patch($('recent-commands').tBodies[0], recent, commandId);
    $('recent-empty').hidden = commands.recent.length > 0;
  }

  /** A command row's identity: keys are unique within a scope only. */
  function commandId(row) {
    return row.getAttribute('data-scope') + '/' + row.getAttribute('data-key');
  }

  $('filter-device').addEventListener('change', loadCommands);
  $('filter-state').addEventListener('change', loadCommands);

  // ---- one command: the same story as `sluicectl show` ----

  function route() {
    var match = /^#\/command\/([^/]+)\/(.+)$/.exec(location.hash);
    if (!match) {
      shown = null;
      $('command').hidden = true;
      $('overview').hidden = false;
      return;
    }
    var scope = decodeURIComponent(match[1]);
    var key = decodeURIComponent(match[2]);
    shown = { scope: scope, key: key, story: null };
    $('overview').hidden = true;
    $('command').hidden = false;
    $('command-title').textContent = 'Command ' + key + ' (scope ' + scope + ')';
    $('action-result').textContent = '';
    $('reason').value = '';
    loadCommand(scope, key);
  }

  window.addEventListener('hashchange', function () {
    if (session) route();
  });

  /** Counts the command requests, as commandsAsked counts the lists'. */
  var commandAsked = 0;

  function loadCommand(scope, key) {
    var asked = ++commandAsked;
    api('GET', '/ui/api/command?' + commandQuery(scope, key)).then(function (answer) {
      if (asked !== commandAsked || !shown || shown.key !== key || shown.scope !== scope) return;
      if (answer.status !== 200) {
        clear($('command-fields'));
        $('command-actions').hidden = true;
        $('command-result').textContent = problemText(answer);
        return;
      }
      shown.story = answer.body;
      shown.at = now();
      renderCommand();
    });
  }

  function at(iso) {
    return iso + ' (' + ago(iso) + ')';
  }

  function observation(o) {
    var parts = [o.state];
    if (o.position !== null) parts.push(o.position + '%');
    if (o.seq !== null) parts.push('seq ' + o.seq);
    if (o.faultCode !== null) parts.push('fault ' + o.faultCode);
    return (
      parts.join(' ') +
      '  read ' +
      at(o.readAt) +
      (o.sourceTime ? ', controller time ' + o.sourceTime : '')
    );
  }

  var WHAT = {
    received: 'received',
    duplicate: 'duplicate seen',
    'key-reuse': 'KEY REUSE refused',
    dispatched: 'dispatched',
    redispatched: 'dispatched again',
    settled: 'settled',
    operator: 'operator',
    note: 'note',
  };

  function renderCommand() {
    var s = shown.story;
    var dl = el('dl');
    field(dl, 'device', s.device);
    field(dl, 'action', action(s.action, s.position));
    field(dl, 'state', word(outcome(s.state, s.code, s.faultCode), stateTone(s.state)));
    if (s.detail !== null) field(dl, 'detail', s.detail);
    field(
      dl,
      'received',
      at(s.received.at) + ' over ' + s.received.intake + ', identity ' + s.received.scope,
    );
    var f = s.freshness;
    field(
      dl,
      'issued',
      f.issuedAt +
        (f.issuedAtSource === 'issuer'
          ? ' by the issuer'
          : ' (gateway receive time: the command carried no issuedAt)'),
    );
    field(dl, 'deadline', at(f.deadline) + ', ttl ' + dur(f.ttlMs));
    var age =
      f.ageAtAcceptMs >= 0
        ? dur(f.ageAtAcceptMs) + ' old when accepted'
        : 'issued ' + dur(-f.ageAtAcceptMs) + ' in the future';
    var margin =
      f.marginAtDispatchMs === null
        ? 'never dispatched'
        : f.marginAtDispatchMs >= 0
          ? 'dispatched ' + dur(f.marginAtDispatchMs) + ' before the deadline'
          : 'dispatched ' + dur(-f.marginAtDispatchMs) + ' AFTER the deadline';
    if (f.refused === null) field(dl, 'freshness', age + '; ' + margin);
    else field(dl, 'freshness', 'REFUSED: ' + f.refused, 'warn');
    field(
      dl,
      'clocks',
      s.clocks || (s.dispatch === null ? 'not judged (never dispatched)' : 'not recorded'),
    );
    field(
      dl,
      'duplicates',
      s.duplicates.length === 0 ? 'none' : hitCount(s.duplicates) + ': ' + hitsText(s.duplicates),
    );
    if (s.keyReuses.length > 0) {
      field(
        dl,
        'key reuse',
        hitCount(s.keyReuses) + ' refused (same key, different command): ' + hitsText(s.keyReuses),
        'warn',
      );
    }
    field(
      dl,
      'dispatch',
      s.dispatch === null
        ? 'never written'
        : at(s.dispatch.at) +
            ', seq ' +
            (s.dispatch.seq === null ? '-' : s.dispatch.seq) +
            ', ' +
            s.dispatch.attempts +
            (s.dispatch.attempts === 1 ? ' write' : ' writes'),
    );
    s.readbacks.forEach(function (r) {
      field(dl, 'readback ' + r.when, observation(r.observation));
    });
    s.operator.forEach(function (o) {
      // A resolve's who and why quoted, as the daemon journals them: neither reads as the other.
      var words = o.resolve
        ? 'resolved by ' +
          JSON.stringify(o.resolve.by) +
          ': ' +
          JSON.stringify(o.resolve.reason) +
          '; ' +
          o.resolve.note
        : o.detail;
      field(dl, 'operator', at(o.at) + ': ' + words, 'warn');
    });
    var open = s.open;
    if (s.outcome !== null) {
      field(
        dl,
        'outcome',
        word(
          outcome(s.outcome.state, s.outcome.code, s.outcome.faultCode) +
            ' ' +
            ago(s.outcome.settledAt),
          stateTone(s.outcome.state),
        ),
      );
      // The way out of a refusal in FAULT or LOCAL, or of a FAULT the command ran into, as
      // `sluicectl show` says it.
      if (s.advice) field(dl, 'what to do', s.advice, 'warn');
    } else if (open && open.stuck) {
      // The bound it is past, in the words of /readyz and sluicectl (the daemon's rule).
      var bound = open.stuckReason || 'its bound';
      field(
        dl,
        'outcome',
        el('span', {
          class: 'badge',
          text: 'STUCK: still ' + s.state + ', ' + dur(open.overdueMs) + ' past ' + bound,
        }),
      );
    } else {
      // Of one accepted ahead of the gateway's clock (set back since), no age: as `sluicectl show`.
      var openFor =
        open && open.acceptedAheadMs !== null && open.acceptedAheadMs !== undefined
          ? 'open for an unknown time: accepted ' +
            dur(open.acceptedAheadMs) +
            " ahead of the gateway's clock, which was set back since"
          : dur(open ? open.ageMs : 0) + ' open';
      field(dl, 'outcome', 'still ' + s.state + ': not settled yet (' + openFor + ')');
    }

    patch($('command-fields'), children(dl));

    $('command-actions').hidden = !(s.actions && (s.actions.reverify || s.actions.resolve));
    $('reverify').disabled = !(s.actions && s.actions.reverify);

    var history = s.history.map(function (e) {
      var tone =
        e.kind === 'settled'
          ? stateTone(e.to)
          : e.kind === 'key-reuse' || e.kind === 'operator'
            ? 'warn'
            : null;
      return el('tr', null, [
        el('td', { text: e.at }),
        el('td', { text: ago(e.at) }),
        el('td', { text: e.intake }),
        el('td', null, [tone ? word(WHAT[e.kind], tone) : WHAT[e.kind]]),
        el('td', {
          text: e.from === null ? '→ ' + e.to : e.from === e.to ? e.to : e.from + ' → ' + e.to,
        }),
        el('td', { text: e.detail }),
      ]);
    });
    // Events are only ever appended to a history: matched by position.
    patch($('command-history').tBodies[0], history);
    var result =
      s.result === null ? 'none yet: the command is open' : JSON.stringify(s.result, null, 2);
    if ($('command-result').textContent !== result) $('command-result').textContent = result;
  }

  /**
   * A command is named in the query, not the path: `.` and `..` are legal keys, and the browser
   * would resolve them as path segments (percent-encoded too) and ask for another URL.
   */
  function commandQuery(scope, key) {
    return 'scope=' + encodeURIComponent(scope) + '&key=' + encodeURIComponent(key);
  }

  function commandPath(verb) {
    return '/ui/api/command/' + verb + '?' + commandQuery(shown.scope, shown.key);
  }

  $('reverify').addEventListener('click', function () {
    if (!shown) return;
    var button = $('reverify');
    button.disabled = true;
    $('action-result').textContent = 'Reading the device…';
    api('POST', commandPath('reverify')).then(function (answer) {
      button.disabled = false;
      $('action-result').textContent =
        answer.status === 200
          ? (!answer.body.settled
              ? 'NOT SETTLED: '
              : answer.body.byReadback
                ? 'SETTLED by a fresh readback: '
                : // It ended otherwise while the reverify waited (its confirm timeout with no
                  // read answering, its deadline, another operator's resolve).
                  'SETTLED while the reverify waited, not by a fresh readback: ') +
            answer.body.detail
          : problemText(answer);
      loadCommand(shown.scope, shown.key);
    });
  });

  $('resolve-form').addEventListener('submit', function (event) {
    event.preventDefault();
    if (!shown) return;
    var reason = $('reason').value.trim();
    if (!reason) {
      $('action-result').textContent = 'A reason is required: it is written to the journal.';
      return;
    }
    api('POST', commandPath('resolve'), { as: 'failed', reason: reason }).then(function (answer) {
      // A resolve whose journal sync stalled or failed took effect all the same: the answer
      // carries its result (503 with `result`), and the same resolve asked again says when it
      // is on disk. Without `result` a 503 is a resolve that did not take effect.
      var took = answer.status === 200 || (answer.status === 503 && !!answer.body.result);
      // A command dispatched before the resolve had its own write sent, or on its way: the
      // resolve wrote nothing, but that write may be applied (as sluicectl resolve says).
      var seq = took ? answer.body.result.seq : null;
      $('action-result').textContent = took
        ? (answer.status === 200 ? 'RESOLVED by ' : 'RESOLVED, NOT YET ON DISK by ') +
          answer.body.by +
          ': ' +
          outcome(answer.body.result.state, answer.body.result.code, null) +
          (seq === null || seq === undefined
            ? '; nothing was written to the controller'
            : '; the resolve wrote nothing to the controller; the command had been dispatched (seq ' +
              seq +
              '): its detail says what is known of its write') +
          (answer.body.detail ? ' (' + answer.body.detail + ')' : '')
        : problemText(answer);
      // Kept after a resolve not yet on disk: the same resolve asked again says when it is.
      if (answer.status === 200) $('reason').value = '';
      loadCommand(shown.scope, shown.key);
    });
  });

  // Ages move on between events.
  setInterval(function () {
    if (!session) return;
    if (devices.at) renderDevices();
    if (commands.at && !shown) renderCommands();
  }, 1000);

  api('GET', '/ui/api/session').then(function (answer) {
    if (answer.status === 200) start(answer.body);
    else showLogin(answer.status === 0 ? problemText(answer) : '');
  });
})();
