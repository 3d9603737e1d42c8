// berth's replay page (GET /replay): plays a session recording (asciicast v2, docs/decisions/0024) from the admin
// API into the vendored xterm.js. The admin token comes from the form or from the URL fragment
// (`/replay#token=T&name=N&speed=S`), which never reaches the server or its logs; the page removes it from the
// address bar once read. Plain ES2018 script, no bundler. Exposes `window.berthReplay` for the browser test
// (web/test/replay.mjs).
(function () {
  'use strict';

  const SPEEDS = ['0.5', '1', '2', '4', '16', '100'];
  const MAX_DIMENSION = 1000;
  // 'o' events due at once are written together, up to this many characters per write.
  const BATCH_CHARS = 256 * 1024;

  // ---- pure helpers -------------------------------------------------------------------------------------

  /**
   * Parses an asciicast v2 text: `{header, events}` with events as `{t, code, data}` in file order. A torn last
   * line (a crash of berth mid-write) is left out, as berth's own parser does. Throws on a bad header.
   */
  function parseCast(text) {
    const lines = text.split('\n');
    let header;
    try {
      header = JSON.parse(lines[0]);
    } catch (_) {
      throw new Error('not an asciicast file (the first line is not JSON)');
    }
    if (!header || header.version !== 2) throw new Error('not an asciicast v2 file');
    if (!(header.width > 0 && header.height > 0)) throw new Error('the header has no width and height');
    const events = [];
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i].trim();
      if (!line) continue;
      let ev;
      try {
        ev = JSON.parse(line);
      } catch (_) {
        if (i >= lines.length - 2) break; // the torn last line
        throw new Error('line ' + (i + 1) + ' is not JSON');
      }
      if (!Array.isArray(ev) || typeof ev[0] !== 'number' || typeof ev[1] !== 'string') continue;
      events.push({ t: Math.max(0, ev[0]), code: ev[1], data: typeof ev[2] === 'string' ? ev[2] : '' });
    }
    return { header: header, events: events };
  }

  /** `"COLSxROWS"` of an 'r' event, or null. */
  function parseSize(data) {
    const m = /^(\d+)x(\d+)$/.exec(data);
    if (!m) return null;
    return { cols: clamp(parseInt(m[1], 10)), rows: clamp(parseInt(m[2], 10)) };
  }

  function clamp(n) {
    return Math.max(1, Math.min(MAX_DIMENSION, n | 0));
  }

  function fragment() {
    try {
      return new URLSearchParams(window.location.hash.replace(/^#/, ''));
    } catch (_) {
      return new URLSearchParams();
    }
  }

  function formatTime(seconds) {
    const s = Math.max(0, seconds);
    const m = Math.floor(s / 60);
    return m + ':' + (s - m * 60).toFixed(1).padStart(4, '0');
  }

  /** What an admin API answer other than 200 means here. */
  function describeStatus(status) {
    switch (status) {
      case 400:
        return 'not a recording name';
      case 401:
        return 'the admin token is missing or wrong';
      case 403:
        return 'the admin API refused the request from the browser';
      case 404:
        return 'not found (no such recording, or the admin API is not served on this listener)';
      default:
        return 'the admin API answered ' + status;
    }
  }

  // ---- the page -----------------------------------------------------------------------------------------

  const form = document.getElementById('controls');
  const tokenEl = document.getElementById('token');
  const recordingEl = document.getElementById('recording');
  const playEl = document.getElementById('play');
  const speedEl = document.getElementById('speed');
  const endEl = document.getElementById('end');
  const restartEl = document.getElementById('restart');
  const statusEl = document.getElementById('status');
  const positionEl = document.getElementById('position');
  const noticeEl = document.getElementById('notice');

  const term = new window.Terminal({
    cols: 80,
    rows: 24,
    cursorBlink: false,
    disableStdin: true,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    lineHeight: 1.2,
    scrollback: 5000,
    theme: { background: '#101010' },
  });
  term.open(document.getElementById('terminal'));

  let state = 'idle'; // window.berthReplay.state: idle, loading, playing, paused, done, error
  let cast = null; // the loaded recording
  let name = null;
  let next = 0; // index of the next event to apply
  let position = 0; // seconds into the recording when `anchor` was taken
  let anchor = 0; // performance.now() at `position`
  let speed = 1;
  let timer = null;
  let generation = 0; // bumped on every load, restart and skip: stale write callbacks do nothing

  function setState(next, text) {
    state = next;
    statusEl.dataset.state = next;
    statusEl.textContent = text || next;
    playEl.textContent = next === 'paused' ? 'play' : 'pause';
    playEl.disabled = !(next === 'playing' || next === 'paused');
    endEl.disabled = !(next === 'playing' || next === 'paused');
    restartEl.disabled = cast === null || next === 'loading';
  }

  function setNotice(text) {
    noticeEl.textContent = text || '';
  }

  function now() {
    return window.performance.now();
  }

  /** Seconds into the recording, now. */
  function current() {
    return state === 'playing' ? position + ((now() - anchor) / 1000) * speed : position;
  }

  function showPosition() {
    if (!cast) {
      positionEl.textContent = '';
      return;
    }
    const last = cast.events.length ? cast.events[cast.events.length - 1].t : 0;
    const at = next >= cast.events.length ? last : Math.min(current(), last);
    positionEl.textContent = formatTime(at) + ' / ' + formatTime(last) + ' (' + speed + '×)';
  }

  /** Applies events `next` up to (excluding) `until`: output written in batches, resizes in order. */
  function apply(until) {
    let pending = '';
    const flush = function () {
      if (pending) term.write(pending);
      pending = '';
    };
    for (; next < until; next++) {
      const ev = cast.events[next];
      if (ev.code === 'o') {
        pending += ev.data;
        if (pending.length >= BATCH_CHARS) flush();
      } else if (ev.code === 'r') {
        const size = parseSize(ev.data);
        if (size) {
          flush();
          term.resize(size.cols, size.rows);
        }
      }
      // 'i' (input) and markers change nothing on the screen.
    }
    flush();
  }

  /** Marks the replay done once xterm.js has parsed everything written so far. */
  function finish() {
    const gen = generation;
    clearTimeout(timer);
    timer = null;
    term.write('', function () {
      if (gen !== generation) return;
      position = cast.events.length ? cast.events[cast.events.length - 1].t : 0;
      setState('done', 'done');
      showPosition();
    });
  }

  function tick() {
    timer = null;
    if (state !== 'playing') return;
    const at = current();
    let until = next;
    while (until < cast.events.length && cast.events[until].t <= at) until++;
    apply(until);
    showPosition();
    if (next >= cast.events.length) {
      finish();
      return;
    }
    const wait = ((cast.events[next].t - at) / speed) * 1000;
    // Also wakes at least every quarter second, so the position shown moves.
    timer = setTimeout(tick, Math.max(0, Math.min(wait, 250)));
  }

  function play() {
    if (!cast || state === 'done') return;
    anchor = now();
    setState('playing', 'playing');
    clearTimeout(timer);
    timer = setTimeout(tick, 0);
  }

  function pause() {
    if (state !== 'playing') return;
    position = current();
    clearTimeout(timer);
    timer = null;
    setState('paused', 'paused');
    showPosition();
  }

  function setSpeed(value) {
    const s = parseFloat(value);
    if (!(s > 0)) return;
    position = current();
    anchor = now();
    speed = s;
    if (SPEEDS.indexOf(String(value)) < 0) {
      const opt = document.createElement('option');
      opt.value = String(value);
      opt.textContent = value + '×';
      speedEl.appendChild(opt);
    }
    speedEl.value = String(value);
    showPosition();
    if (state === 'playing') {
      clearTimeout(timer);
      timer = setTimeout(tick, 0);
    }
  }

  function skipToEnd() {
    if (!cast || !(state === 'playing' || state === 'paused')) return;
    generation += 1;
    clearTimeout(timer);
    timer = null;
    apply(cast.events.length);
    finish();
  }

  function start() {
    generation += 1;
    clearTimeout(timer);
    timer = null;
    term.reset();
    term.resize(clamp(cast.header.width), clamp(cast.header.height));
    next = 0;
    position = 0;
    setState('paused', 'paused');
    showPosition();
    play();
  }

  function authHeaders() {
    const token = tokenEl.value.trim();
    return token ? { Authorization: 'Bearer ' + token } : {};
  }

  async function fetchAdmin(path) {
    // Same origin, GET: the browser sends no Origin header, which the admin API would refuse.
    const response = await window.fetch(path, { headers: authHeaders(), cache: 'no-store', credentials: 'omit' });
    if (!response.ok) throw new Error(describeStatus(response.status));
    return response;
  }

  async function loadList(select) {
    try {
      const list = await (await fetchAdmin('/admin/recordings')).json();
      list.sort(function (a, b) {
        return (b.started || 0) - (a.started || 0);
      });
      recordingEl.textContent = '';
      for (const r of list) {
        const opt = document.createElement('option');
        opt.value = r.name;
        const when = r.started ? new Date(r.started * 1000).toISOString().replace('.000Z', 'Z') : '?';
        opt.textContent = r.session.slice(0, 8) + ' ' + when + ' (' + r.size + ' B' + (r.active ? ', recording' : '') + ')';
        recordingEl.appendChild(opt);
      }
      if (list.length === 0) {
        const opt = document.createElement('option');
        opt.value = '';
        opt.textContent = '(no recordings)';
        recordingEl.appendChild(opt);
      }
      if (select) ensureOption(select);
      return true;
    } catch (e) {
      setNotice('cannot list recordings: ' + e.message);
      return false;
    }
  }

  function ensureOption(value) {
    if (!Array.prototype.some.call(recordingEl.options, (o) => o.value === value)) {
      const opt = document.createElement('option');
      opt.value = value;
      opt.textContent = value;
      recordingEl.appendChild(opt);
    }
    recordingEl.value = value;
  }

  async function load(wanted) {
    if (!wanted) {
      // No name yet: the button lists the recordings first.
      if (await loadList(null)) setNotice('pick a recording, then load');
      return;
    }
    generation += 1;
    clearTimeout(timer);
    timer = null;
    cast = null;
    name = wanted;
    setState('loading', 'loading');
    setNotice('');
    try {
      const text = await (await fetchAdmin('/admin/recordings/' + encodeURIComponent(wanted))).text();
      cast = parseCast(text);
    } catch (e) {
      setState('error', 'error');
      setNotice(name + ': ' + e.message);
      return;
    }
    document.title = 'berth: replay ' + name;
    setNotice(name + (cast.header.title ? ' (' + cast.header.title + ')' : ''));
    start();
  }

  form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    load(recordingEl.value);
  });
  playEl.addEventListener('click', function () {
    if (state === 'playing') pause();
    else play();
  });
  speedEl.addEventListener('change', function () {
    setSpeed(speedEl.value);
  });
  endEl.addEventListener('click', skipToEnd);
  restartEl.addEventListener('click', function () {
    if (cast) start();
  });

  window.berthReplay = {
    term: term,
    get state() {
      return state;
    },
    get name() {
      return name;
    },
    get events() {
      return cast ? cast.events.length : 0;
    },
    get applied() {
      return next;
    },
    /** The recording's resize events. */
    get resizes() {
      return cast ? cast.events.filter((ev) => ev.code === 'r').length : 0;
    },
    /** The header's size, `COLSxROWS`. */
    get headerSize() {
      return cast ? cast.header.width + 'x' + cast.header.height : null;
    },
    skipToEnd: skipToEnd,
  };

  // The fragment: read once, then the token leaves the address bar (and the history).
  const params = fragment();
  const given = params.get('token');
  if (given) tokenEl.value = given;
  const wanted = params.get('name');
  const wantedSpeed = params.get('speed');
  if (wantedSpeed) setSpeed(wantedSpeed);
  if (given) {
    params.delete('token');
    const rest = params.toString();
    window.history.replaceState(null, '', window.location.pathname + (rest ? '#' + rest : ''));
  }
  setState('idle', 'idle');
  if (wanted) {
    ensureOption(wanted);
    load(wanted);
  } else if (given) {
    loadList(null);
  } else {
    setNotice('enter the admin token and load the list of recordings');
  }
})();
