// berth's terminal page: one xterm.js terminal wired to berth's WebSocket protocol (docs/protocol.md).
// Plain ES2018 script, no bundler. Survives drops (resume from the last byte it has) and reloads (resume from
// the start of the replay buffer), and exposes `window.berth` for the browser test (web/test/browser.mjs).
(function () {
  'use strict';

  const SUBPROTOCOL = 'berth.v1';
  const STORAGE_KEY = 'berth.session';
  const RESIZE_DEBOUNCE_MS = 150;
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 8000;
  // Keyboard input is sent in binary frames of at most this size, well under server.max_message_bytes
  // (64 KiB by default), so that a large paste is never refused with 1009.
  const INPUT_CHUNK_BYTES = 16 * 1024;
  const MAX_DIMENSION = 1000;
  const SESSION_ID = /^[0-9a-f]{32}$/;

  // Close codes from docs/protocol.md that the page treats specially.
  const CLOSE_NORMAL = 1000;
  const CLOSE_SESSION_ENDED = 4000;
  const CLOSE_TAKEN_OVER = 4001;
  const CLOSE_BAD_HELLO = 4002;
  const CLOSE_UNAUTHORIZED = 4003;
  const CLOSE_UNKNOWN_SESSION = 4004;
  const CLOSE_BAD_REQUEST = 4005;
  const CLOSE_SESSION_ELSEWHERE = 4013;
  const CLOSE_GRANT_REVOKED = 4014;
  const CLOSE_GRANT_EXPIRED = 4015;
  const CLOSE_GRANT_REFUSED = 4016;
  const CLOSE_CAPACITY = 4029;

  const END_REASONS = {
    released: 'released',
    killed: 'killed',
    oom_killed: 'out of memory',
    removed_outside_berth: 'container removed outside berth',
    create_failed: 'the container could not be created',
    idle: 'idle for too long',
    lifetime_reached: 'maximum lifetime reached',
    resume_grace_expired: 'not reconnected in time',
    shutdown: 'berth shut down',
    unhealthy: 'container unhealthy',
  };

  // ---- pure helpers -------------------------------------------------------------------------------------

  /**
   * Decides what follows a closed socket. A pure function of the close code, the last `error` message the
   * server sent on that socket (or null), and the number of failed attempts since the last `ready`.
   * Returns `{kind}` with kind one of `ended`, `taken_over`, `unknown_session`, `fatal`, or `{kind: 'retry',
   * delayMs}`. Retries back off exponentially from 0.5 s to 8 s, with a little jitter (`random` in [0, 1)).
   */
  function afterClose(code, lastError, attempt, random) {
    const errorCode = lastError && lastError.code;
    if (code === CLOSE_NORMAL || code === CLOSE_SESSION_ENDED) return { kind: 'ended' };
    if (code === CLOSE_TAKEN_OVER) return { kind: 'taken_over' };
    if (code === CLOSE_UNKNOWN_SESSION) return { kind: 'unknown_session' };
    // A share grant revoked, expired or refused: joining again would be refused again.
    if (code === CLOSE_GRANT_REVOKED || code === CLOSE_GRANT_EXPIRED || code === CLOSE_GRANT_REFUSED) {
      return { kind: 'ended' };
    }
    // A stored session id the server cannot even parse is as good as unknown.
    if (code === CLOSE_BAD_REQUEST && errorCode === 'bad_session_id') return { kind: 'unknown_session' };
    // Not authorized, or the page and the server disagree on the protocol: the same hello would fail again.
    if (code === CLOSE_UNAUTHORIZED || code === CLOSE_BAD_HELLO || code === CLOSE_BAD_REQUEST) {
      return { kind: 'fatal' };
    }
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * Math.pow(2, Math.min(attempt, 16)));
    let delayMs = Math.round(base * (0.8 + 0.2 * random));
    // Full, or the session's replica is restarting behind the load balancer: come back when told to.
    const toldToWait = code === CLOSE_CAPACITY || code === CLOSE_SESSION_ELSEWHERE;
    if (toldToWait && lastError && typeof lastError.retry_after === 'number') {
      delayMs = Math.max(delayMs, lastError.retry_after * 1000);
    }
    return { kind: 'retry', delayMs: delayMs };
  }

  function describeExit(msg) {
    if (msg.reason === 'exited') {
      return typeof msg.code === 'number' ? 'the shell exited with code ' + msg.code : 'the shell exited';
    }
    return END_REASONS[msg.reason] || printable(msg.message) || printable(msg.reason) || 'session ended';
  }

  function describeClose(code, lastError, opened) {
    if (lastError && lastError.message) {
      // An error id names the log line where the operator finds what the server kept from the client.
      const id = printable(lastError.error_id);
      return printable(lastError.message) + (id ? ' (error id ' + id + ')' : '');
    }
    if (code === 1006) return opened ? 'connection lost' : 'cannot connect';
    return 'connection closed (' + code + ')';
  }

  /** Server text shown to the user, without control characters (it may be written into the terminal). */
  function printable(value) {
    return typeof value === 'string' ? value.replace(/[\u0000-\u001f\u007f-\u009f]/g, '') : '';
  }

  function clampDimension(n) {
    return Math.max(1, Math.min(MAX_DIMENSION, n | 0));
  }

  function tokenFromFragment() {
    try {
      return new URLSearchParams(window.location.hash.replace(/^#/, '')).get('token') || null;
    } catch (_) {
      return null;
    }
  }

  /** A share link (`/?session=<id>#grant=<secret>`): `{session, grant}`, or null. */
  function joinFromLocation() {
    try {
      const grant = new URLSearchParams(window.location.hash.replace(/^#/, '')).get('grant');
      const session = new URLSearchParams(window.location.search).get('session');
      if (grant && session && SESSION_ID.test(session)) return { session: session, grant: grant };
    } catch (_) {
      // not a share link
    }
    return null;
  }

  function loadStored() {
    try {
      const saved = JSON.parse(window.sessionStorage.getItem(STORAGE_KEY) || 'null');
      if (saved && SESSION_ID.test(saved.session) && typeof saved.secret === 'string' && saved.secret) {
        return { session: saved.session, secret: saved.secret };
      }
    } catch (_) {
      // unreadable or unavailable storage: start a new session
    }
    clearStored();
    return null;
  }

  function store(saved) {
    try {
      window.sessionStorage.setItem(STORAGE_KEY, JSON.stringify(saved));
    } catch (_) {
      // storage unavailable: the session still survives drops, just not a reload
    }
  }

  function clearStored() {
    try {
      window.sessionStorage.removeItem(STORAGE_KEY);
    } catch (_) {
      // nothing to clear
    }
  }

  function debounce(fn, ms) {
    let timer = null;
    return function () {
      clearTimeout(timer);
      timer = setTimeout(fn, ms);
    };
  }

  // ---- the page -----------------------------------------------------------------------------------------

  const statusEl = document.getElementById('status');
  const noticeEl = document.getElementById('notice');
  const actionEl = document.getElementById('action');
  const sessionEl = document.getElementById('session');
  const container = document.getElementById('terminal');
  const presenceEl = document.getElementById('presence');
  const shareEl = document.getElementById('share');
  const shareLinkEl = document.getElementById('share-link');

  const term = new window.Terminal({
    cursorBlink: true,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    // Below 1.2, DejaVu Sans Mono's underscores fall outside the row and are not drawn.
    lineHeight: 1.2,
    scrollback: 5000,
    theme: { background: '#101010' },
  });
  const fitAddon = new window.FitAddon.FitAddon();
  term.loadAddon(fitAddon);
  term.open(container);
  fit();

  const token = tokenFromFragment();
  // Joined through a share link: the grant, and the role the server gives it (`viewer` or `writer`).
  const joining = joinFromLocation();
  let role = null;
  let presence = [];
  // The grants this page made (their ids), for `revoke links`.
  let grants = [];
  const revokeEl = document.getElementById('share-revoke');
  const encoder = new TextEncoder();

  let phase = 'connecting'; // window.berth.state
  let sessionId = null;
  let bytesReceived = 0; // output bytes written to this terminal since it was last reset
  let offset = 0; // position in the session's output stream: ready.offset plus the bytes since
  let haveStream = false; // this terminal shows the output of `sessionId` (so a resume may skip what it has)
  let attempt = 0; // failed connections since the last `ready`
  let socket = null;
  let helloSent = false;
  let opened = false; // the current socket got past the upgrade
  let lastError = null;
  let retryTimer = null;
  let action = null;
  // The session to resume, `{session, secret}`: kept here for drops, and in sessionStorage for reloads.
  let saved = joining ? null : loadStored();

  function saveSession(session, secret) {
    saved = { session: session, secret: secret };
    store(saved);
  }

  function clearSaved() {
    saved = null;
    clearStored();
  }

  function setPhase(next, text) {
    phase = next;
    statusEl.dataset.state = next;
    statusEl.textContent = text || next;
  }

  function setNotice(text, kind) {
    noticeEl.textContent = text || '';
    noticeEl.dataset.kind = kind || '';
  }

  function setAction(label, handler) {
    action = handler;
    actionEl.textContent = label || '';
    actionEl.hidden = !handler;
  }

  function showSession(id) {
    sessionId = id;
    sessionEl.textContent = id ? 'session ' + id.slice(0, 8) : '';
  }

  /** A dim line from the page itself, between lines of the shell's output. Never counted as output. */
  function writeNotice(text) {
    term.write('\r\n\x1b[2m[berth] ' + printable(text) + '\x1b[22m\r\n');
  }

  function resetTerminal() {
    term.reset();
    bytesReceived = 0;
    offset = 0;
    haveStream = false;
  }

  function fit() {
    try {
      fitAddon.fit();
    } catch (_) {
      // the container is not laid out (hidden); the next resize fits
    }
  }

  function connected() {
    return socket !== null && socket.readyState === WebSocket.OPEN && helloSent;
  }

  function sendControl(msg) {
    if (connected()) socket.send(JSON.stringify(msg));
  }

  function sendInput(bytes) {
    if (role === 'viewer') {
      setNotice('read-only: you joined as a viewer', 'read_only');
      return;
    }
    if (!connected()) {
      if (phase !== 'ended') setNotice('not connected: input dropped');
      return;
    }
    if (noticeEl.dataset.kind === 'idle') setNotice('');
    for (let i = 0; i < bytes.length; i += INPUT_CHUNK_BYTES) {
      socket.send(bytes.subarray(i, i + INPUT_CHUNK_BYTES));
    }
  }

  function wsUrl(session) {
    const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    const query = session ? '?session=' + encodeURIComponent(session) : '';
    return scheme + '//' + window.location.host + '/ws' + query;
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    setAction(null);
    const resume = joining ? { session: joining.session } : saved;
    if (resume && resume.session !== sessionId) {
      // A session this terminal has not shown yet (page load): ask for the whole replay buffer.
      haveStream = false;
    }
    if (phase !== 'reconnecting') setPhase('connecting', 'connecting');
    let ws;
    try {
      ws = new WebSocket(wsUrl(resume && resume.session), SUBPROTOCOL);
    } catch (e) {
      setPhase('error', 'error: ' + e.message);
      return;
    }
    ws.binaryType = 'arraybuffer';
    socket = ws;
    helloSent = false;
    opened = false;
    lastError = null;
    ws.onopen = function () {
      if (ws !== socket) return;
      opened = true;
      const hello = { type: 'hello', cols: clampDimension(term.cols), rows: clampDimension(term.rows) };
      if (token) hello.token = token;
      if (joining) {
        hello.join = { session: joining.session, grant: joining.grant };
      } else if (resume) {
        hello.resume = { session: resume.session, secret: resume.secret, offset: haveStream ? offset : 0 };
      } else {
        hello.env = { TERM: 'xterm-256color' };
      }
      ws.send(JSON.stringify(hello));
      helloSent = true;
    };
    ws.onmessage = function (ev) {
      if (ws !== socket) return;
      if (typeof ev.data === 'string') {
        onControl(ev.data);
      } else {
        onOutput(new Uint8Array(ev.data));
      }
    };
    ws.onclose = function (ev) {
      if (ws !== socket) return;
      socket = null;
      helloSent = false;
      onClose(ev.code);
    };
    // An error is always followed by a close, which decides what to do.
    ws.onerror = function () {};
  }

  function onOutput(bytes) {
    term.write(bytes);
    bytesReceived += bytes.length;
    offset += bytes.length;
    if (noticeEl.dataset.kind === 'idle') setNotice('');
  }

  function onControl(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (_) {
      return;
    }
    if (!msg || typeof msg !== 'object') return;
    switch (msg.type) {
      case 'queued':
        setPhase('queued', 'queued #' + msg.position);
        break;
      case 'session':
        if (typeof msg.session === 'string') {
          if (msg.session !== sessionId) haveStream = false;
          showSession(msg.session);
          if (typeof msg.secret === 'string' && msg.secret) saveSession(msg.session, msg.secret);
        }
        break;
      case 'joined':
        role = msg.role === 'writer' ? 'writer' : 'viewer';
        // A (re)join is sent the screen from the oldest byte held: start from a clean terminal.
        resetTerminal();
        if (typeof msg.session === 'string') showSession(msg.session);
        statusEl.dataset.role = role;
        break;
      case 'shared':
        if (typeof msg.url === 'string') {
          if (typeof msg.grant_id === 'string') grants.push(msg.grant_id);
          revokeEl.hidden = false;
          shareLinkEl.value = window.location.origin + msg.url;
          shareLinkEl.hidden = false;
          shareLinkEl.select();
          setNotice(msg.role + ' link made; it works until ' + new Date(msg.expires_at * 1000).toLocaleTimeString());
        }
        break;
      case 'revoked':
        grants = grants.filter(function (g) {
          return g !== msg.grant_id;
        });
        if (grants.length === 0) {
          revokeEl.hidden = true;
          shareLinkEl.hidden = true;
          shareLinkEl.value = '';
        }
        setNotice('link revoked');
        break;
      case 'presence':
        presence = Array.isArray(msg.viewers) ? msg.viewers : [];
        showPresence();
        break;
      case 'status':
        setPhase(msg.phase === 'pending' ? 'pending' : 'creating', msg.phase === 'pending' ? 'pending' : 'creating');
        break;
      case 'ready':
        attempt = 0;
        if (typeof msg.offset === 'number') offset = msg.offset;
        haveStream = true;
        setPhase('ready', role ? 'ready: ' + (role === 'viewer' ? 'read-only viewer' : 'writer') : 'ready');
        setNotice('');
        // Only the owner shares (the page that holds the session's resume secret).
        shareEl.hidden = joining !== null;
        if (msg.missed > 0) writeNotice(msg.missed + ' bytes of output were lost while disconnected');
        break;
      case 'gap':
        if (msg.missed > 0) {
          offset += msg.missed;
          writeNotice(msg.missed + ' bytes of output were dropped');
        }
        break;
      case 'warning':
        if (msg.code === 'idle') {
          setNotice('idle: this session ends in ' + msg.seconds + ' s unless there is input or output', 'idle');
        } else {
          setNotice(printable(msg.message) || printable(msg.code));
        }
        break;
      case 'exit':
        onExit(msg);
        break;
      case 'error':
        lastError = msg;
        // Fatal errors are followed by a close, which shows them; the others only inform.
        setNotice('error: ' + (printable(msg.message) || printable(msg.code)));
        break;
      default:
        break;
    }
  }

  function showPresence() {
    const names = presence.map(function (p) {
      return (printable(p.identity) || 'someone') + ' (' + (p.role === 'writer' ? 'writer' : 'viewer') + ')';
    });
    presenceEl.textContent = names.length ? names.length + ' connected: ' + names.join(', ') : '';
    presenceEl.hidden = names.length === 0;
  }

  function share(asRole) {
    sendControl({ type: 'share', role: asRole });
  }

  document.getElementById('share-viewer').addEventListener('click', function () {
    share('viewer');
  });
  document.getElementById('share-writer').addEventListener('click', function () {
    share('writer');
  });
  revokeEl.addEventListener('click', function () {
    grants.forEach(function (g) {
      sendControl({ type: 'revoke', grant_id: g });
    });
  });

  function onExit(msg) {
    const why = describeExit(msg);
    clearSaved();
    setPhase('ended', 'ended: ' + why);
    setNotice('');
    writeNotice('session ended: ' + why);
    shareEl.hidden = true;
    if (!joining) setAction('new session', newSession);
  }

  function onClose(code) {
    if (phase === 'ended') return; // the exit message already said why
    const next = afterClose(code, lastError, attempt, Math.random());
    switch (next.kind) {
      case 'ended':
        clearSaved();
        shareEl.hidden = true;
        setPhase('ended', 'ended: ' + describeClose(code, lastError, opened));
        if (!joining) setAction('new session', newSession);
        break;
      case 'taken_over':
        setPhase('taken_over', 'this session was opened in another tab');
        setNotice('');
        setAction('use it here', connect);
        break;
      case 'unknown_session': {
        const gone = sessionId;
        clearSaved();
        resetTerminal();
        showSession(null);
        writeNotice(
          'session ' + (gone ? gone.slice(0, 8) + ' ' : '') + 'no longer exists (' +
            describeClose(code, lastError, opened) + '); starting a new session',
        );
        setNotice('the previous session no longer exists; started a new one');
        connect();
        break;
      }
      case 'fatal':
        setPhase('error', 'error: ' + describeClose(code, lastError, opened));
        setNotice('');
        setAction('retry', function () {
          attempt = 0;
          connect();
        });
        break;
      default: {
        attempt += 1;
        const seconds = (next.delayMs / 1000).toFixed(1);
        setPhase('reconnecting', 'reconnecting in ' + seconds + ' s (' + describeClose(code, lastError, opened) + ')');
        retryTimer = setTimeout(function () {
          setPhase('reconnecting', 'reconnecting');
          connect();
        }, next.delayMs);
        break;
      }
    }
  }

  function newSession() {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (socket) {
      const old = socket;
      socket = null;
      old.close(CLOSE_NORMAL);
    }
    clearSaved();
    resetTerminal();
    showSession(null);
    setNotice('');
    attempt = 0;
    setPhase('connecting', 'connecting');
    connect();
  }

  actionEl.addEventListener('click', function () {
    if (action) action();
    term.focus();
  });

  term.onData(function (data) {
    sendInput(encoder.encode(data));
  });
  // Some mouse reports are not UTF-8: one byte per character.
  term.onBinary(function (data) {
    const bytes = new Uint8Array(data.length);
    for (let i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 0xff;
    sendInput(bytes);
  });
  term.onResize(function (size) {
    if (role === 'viewer') return; // a viewer's resizes are dropped
    sendControl({ type: 'resize', cols: clampDimension(size.cols), rows: clampDimension(size.rows) });
  });

  const refit = debounce(fit, RESIZE_DEBOUNCE_MS);
  window.addEventListener('resize', refit);
  if (typeof ResizeObserver === 'function') new ResizeObserver(refit).observe(container);
  // Back online: retry now instead of waiting out the backoff.
  window.addEventListener('online', function () {
    if (phase === 'reconnecting' && retryTimer !== null) connect();
  });

  window.berth = {
    term: term,
    get state() {
      return phase;
    },
    get bytesReceived() {
      return bytesReceived;
    },
    get offset() {
      return offset;
    },
    get sessionId() {
      return sessionId;
    },
    get role() {
      return role;
    },
    get presence() {
      return presence;
    },
    share: share,
    get grants() {
      return grants.slice();
    },
    newSession: newSession,
  };

  connect();
  term.focus();
})();
