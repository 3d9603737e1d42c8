// Browser test of the replay page (GET /replay) against a running berth whose default profile records: a real
// Chromium (Debian's /usr/bin/chromium, driven by playwright-core) opens the terminal page as the session's
// owner, types commands that draw a recognisable screen (several lines, a `clear`, colours), reads the final
// screen from xterm.js, ends the session through the admin API, then opens the replay page for the session's
// recording, skips to the end, and checks that the replayed screen is the owner's: the same size,
// text, colours and cursor; then replays it again at 100× in time, to the same screen. The owner's window is
// resized halfway, so the replay follows an 'r' event. It takes a screenshot of each page, and checks that a
// wrong admin token plays nothing.
//
// Usage: node web/test/replay.mjs <base-url> <admin-token> <owner-screenshot> <replay-screenshot>
// Exit status 0 only if every step passed. Prints one line per step with its duration.
import http from 'node:http';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, StepFailure, exit, failedOutside, pageErrors, step } from './common.mjs';

const VIEWPORT = { width: 860, height: 460 };
// The owner's window shrinks halfway, so the recording holds a resize ('r' event) that the replay must follow.
const SECOND_VIEWPORT = { width: 760, height: 420 };
// What the owner types: several lines; then, in one command line, a clear and colours (SGR bold, red, green, a
// blue background). Nothing is typed after the clear: busybox's line editor has been seen to drop keys typed at
// the first prompt after a `clear` (see decision 0024), and this test is about the replay, not that.
const BEFORE_CLEAR = 'echo before-clear; seq 1 3';
const CLEAR_AND_COLOURS = [
  'clear',
  "printf '\\033[1;31mred bold\\033[0m plain \\033[32mgreen\\033[0m\\n'",
  'for i in 1 2 3 4; do echo "row-$i $((i*i))"; done',
  "printf '\\033[44;97m berth replay \\033[0m %s\\n' $((6*7))",
].join('; ');

const [baseUrl, adminToken, ownerShot, replayShot] = process.argv.slice(2);
if (!baseUrl || !adminToken || !ownerShot || !replayShot) {
  console.error('usage: node web/test/replay.mjs <base-url> <admin-token> <owner-screenshot> <replay-screenshot>');
  process.exit(64);
}

/** A request to the admin API with the token, from node (no browser headers): `{status, body}`. */
function admin(method, path) {
  const url = new URL(path, baseUrl);
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      { method, headers: { Authorization: `Bearer ${adminToken}` }, timeout: 10_000 },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode, body }));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on('error', reject);
    req.end();
  });
}

/** The terminal's logical lines (wrapped rows joined), right-trimmed, from `window[global].term`. */
function terminalLines(page, global) {
  return page.evaluate((g) => {
    const term = window[g] && window[g].term;
    if (!term) return [];
    const buffer = term.buffer.active;
    const lines = [];
    for (let i = 0; i < buffer.length; i++) {
      const line = buffer.getLine(i);
      if (!line) continue;
      const text = line.translateToString(true);
      if (line.isWrapped && lines.length > 0) lines[lines.length - 1] += text;
      else lines.push(text);
    }
    while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
    return lines;
  }, global);
}

/**
 * The visible screen of `window[global].term`: its size, each row's text (right-trimmed), each row's styled
 * cells (column, colour modes and colours, bold) and the cursor.
 */
function screen(page, global) {
  return page.evaluate((g) => {
    const term = window[g].term;
    const buffer = term.buffer.active;
    const rows = [];
    const styles = [];
    for (let y = 0; y < term.rows; y++) {
      const line = buffer.getLine(buffer.baseY + y);
      rows.push(line ? line.translateToString(true) : '');
      let style = '';
      for (let x = 0; line && x < term.cols; x++) {
        const c = line.getCell(x);
        if (!c || (c.isFgDefault() && c.isBgDefault() && !c.isBold())) continue;
        style += `${x}:${c.getFgColorMode()}/${c.getFgColor()},${c.getBgColorMode()}/${c.getBgColor()}${c.isBold() ? 'b' : ''} `;
      }
      styles.push(style.trim());
    }
    return { size: `${term.cols}x${term.rows}`, rows, styles, cursor: [buffer.cursorX, buffer.cursorY] };
  }, global);
}

async function waitForLines(page, what, timeoutMs, check) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const found = check(await terminalLines(page, 'berth'));
    if (found) return found;
    if (Date.now() > until) {
      const tail = (await terminalLines(page, 'berth')).slice(-6).map((l) => JSON.stringify(l)).join(', ');
      throw new StepFailure(`${what} did not appear within ${timeoutMs} ms; last lines: [${tail}]`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function waitFor(page, what, timeoutMs, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: timeoutMs });
  } catch {
    throw new StepFailure(`${what} within ${timeoutMs} ms`);
  }
}

const isPrompt = (line) => line === '$' || line.startsWith('$ ');

/**
 * Counts the shell's cursor-position requests (CSI 6 n) and xterm.js's answers. Busybox's line editor asks at
 * each prompt; a command is typed only once every request has its answer, so no key reaches the shell in the
 * same read as an answer.
 */
async function watchCursorReports(page) {
  await page.evaluate(() => {
    const dsr = { asked: 0, answered: 0 };
    window.berth.term.parser.registerCsiHandler({ final: 'n' }, (params) => {
      if (params[0] === 6) dsr.asked += 1;
      return false; // xterm.js answers as usual
    });
    window.berth.term.onData((data) => {
      if (/\x1b\[\d+;\d+R/.test(data)) dsr.answered += 1;
    });
    window.berthTestDsr = dsr;
  });
}

/**
 * Types a command once, then waits until `done(lines)` holds for the screen's lines and the last line is a
 * prompt. By default `done` is the command's echo at a prompt.
 */
async function run(page, command, what, done) {
  await waitFor(page, 'the shell asked for the cursor position and got no answer', 5_000, () =>
    window.berthTestDsr.answered >= window.berthTestDsr.asked);
  await page.evaluate(() => window.berth.term.focus());
  await page.keyboard.type(command);
  await page.keyboard.press('Enter');
  await waitForLines(page, what, 10_000, (lines) => done(lines) && lines.length > 0 && isPrompt(lines[lines.length - 1]));
}

let browser;
let pageCsp = null; // the terminal page's Content-Security-Policy, which the replay page must share
try {
  await step(`launch ${CHROMIUM}`, 30_000, async () => {
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 25_000 });
  });
  const context = await browser.newContext({ viewport: VIEWPORT });
  const owner = await context.newPage();
  owner.on('pageerror', (err) => pageErrors.push(`owner: ${err.message}`));

  await step('a. the owner opens the page; the session is ready at a prompt', 60_000, async () => {
    const response = await owner.goto(baseUrl, { timeout: 15_000 });
    if (!response || !response.ok()) throw new StepFailure(`GET ${baseUrl} answered ${response && response.status()}`);
    pageCsp = response.headers()['content-security-policy'];
    if (!pageCsp || !pageCsp.includes("script-src 'self'")) throw new StepFailure(`the page's CSP is ${pageCsp}`);
    if ((await response.text()).includes('replay')) throw new StepFailure('the terminal page mentions the replay');
    await waitFor(owner, "the state did not become 'ready'", 45_000, () => window.berth && window.berth.state === 'ready');
    await waitForLines(owner, "a '$ ' prompt", 15_000, (lines) => lines.some(isPrompt));
    await watchCursorReports(owner);
  });

  const session = await owner.evaluate(() => window.berth.sessionId);
  const ownerScreen = await step('b. the owner draws a screen: lines, a clear, colours', 60_000, async () => {
    await run(owner, BEFORE_CLEAR, "the output of 'seq 1 3'", (lines) =>
      lines.some((l) => isPrompt(l) && l.endsWith(BEFORE_CLEAR)) && lines.includes('3'));
    const before = await owner.evaluate(() => [window.berth.term.cols, window.berth.term.rows]);
    await owner.setViewportSize(SECOND_VIEWPORT);
    await waitFor(owner, `the terminal stayed ${before[0]}x${before[1]} after a window resize`, 5_000, ([c, r]) =>
      window.berth.term.cols !== c || window.berth.term.rows !== r, before);
    await run(owner, CLEAR_AND_COLOURS, 'a cleared screen with the coloured lines', (lines) =>
      !lines.some((l) => l.includes('before-clear')) && lines.some((l) => l.includes(' berth replay  42')));
    const s = await screen(owner, 'berth');
    const text = s.rows.join('\n');
    if (text.includes('before-clear')) throw new StepFailure(`the clear did not clear: ${JSON.stringify(s.rows)}`);
    for (const want of ['red bold plain green', 'row-4 16', ' berth replay  42']) {
      if (!text.includes(want)) throw new StepFailure(`'${want}' is not on the screen: ${JSON.stringify(s.rows)}`);
    }
    if (!s.styles.some((st) => st.length > 0)) throw new StepFailure('no coloured cell on the screen');
    return s;
  });
  console.log(`      owner's screen ${ownerScreen.size}, cursor ${ownerScreen.cursor}:`);
  for (const row of ownerScreen.rows) if (row) console.log(`      | ${row}`);

  await step(`c. screenshot of the owner's page to ${ownerShot}`, 15_000, async () => {
    await owner.screenshot({ path: ownerShot, timeout: 10_000 });
  });

  const name = await step('d. the session ends through the admin API and its recording closes', 60_000, async () => {
    const ended = await admin('DELETE', `/admin/sessions/${session}`);
    if (ended.status !== 202) throw new StepFailure(`DELETE /admin/sessions answered ${ended.status}: ${ended.body}`);
    await waitFor(owner, "the owner's page did not show the end", 30_000, () => window.berth.state === 'ended');
    for (;;) {
      const list = await admin('GET', '/admin/recordings');
      if (list.status !== 200) throw new StepFailure(`GET /admin/recordings answered ${list.status}: ${list.body}`);
      const mine = JSON.parse(list.body).filter((r) => r.session === session);
      if (mine.length > 1) throw new StepFailure(`more than one recording of ${session}: ${list.body}`);
      if (mine.length === 1 && !mine[0].active) return mine[0].name;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  });

  const replay = await context.newPage();
  replay.on('pageerror', (err) => pageErrors.push(`replay: ${err.message}`));
  const replayUrl = new URL(`replay#token=${encodeURIComponent(adminToken)}&name=${encodeURIComponent(name)}&speed=1`, baseUrl);

  /** Checks that the replayed screen is the owner's: size, text, colours, cursor. */
  async function sameScreen() {
    const got = await screen(replay, 'berthReplay');
    const diffs = [];
    if (got.size !== ownerScreen.size) diffs.push(`size ${got.size}, the owner's ${ownerScreen.size}`);
    for (let y = 0; y < Math.max(got.rows.length, ownerScreen.rows.length); y++) {
      if (got.rows[y] !== ownerScreen.rows[y]) {
        diffs.push(`row ${y}: ${JSON.stringify(got.rows[y])}, the owner's ${JSON.stringify(ownerScreen.rows[y])}`);
      } else if (got.styles[y] !== ownerScreen.styles[y]) {
        diffs.push(`row ${y} styles: ${got.styles[y]}, the owner's ${ownerScreen.styles[y]}`);
      }
    }
    if (String(got.cursor) !== String(ownerScreen.cursor)) diffs.push(`cursor ${got.cursor}, the owner's ${ownerScreen.cursor}`);
    if (diffs.length > 0) throw new StepFailure(`the screens differ:\n  ${diffs.join('\n  ')}`);
  }

  async function played() {
    const r = await replay.evaluate(() => {
      const b = window.berthReplay;
      return { applied: b.applied, events: b.events, resizes: b.resizes, header: b.headerSize };
    });
    if (r.applied !== r.events || r.events === 0) throw new StepFailure(`applied ${r.applied} of ${r.events} events`);
    if (r.resizes < 1) throw new StepFailure(`the recording holds no resize (header ${r.header})`);
    return r;
  }

  await step(`e. the replay page plays ${name} at 1×; "skip to end" gives the owner's screen`, 30_000, async () => {
    const response = await replay.goto(replayUrl.href, { timeout: 15_000 });
    if (!response || !response.ok()) throw new StepFailure(`GET /replay answered ${response && response.status()}`);
    const csp = response.headers()['content-security-policy'] || '';
    if (csp !== pageCsp) throw new StepFailure(`the replay page's CSP is ${JSON.stringify(csp)}, not the page's`);
    await waitFor(replay, 'the replay did not start playing', 10_000, () =>
      window.berthReplay && window.berthReplay.state === 'playing');
    if (await replay.evaluate(() => window.location.hash.includes('token='))) {
      throw new StepFailure('the token is still in the address bar');
    }
    await replay.click('#end');
    await waitFor(replay, 'the replay did not reach its end', 10_000, () => window.berthReplay.state === 'done');
    const r = await played();
    console.log(`      ${r.events} events, header ${r.header}, ${r.resizes} resizes`);
    await sameScreen();
  });

  await step('f. restarted at 100×, played in time, it ends on the same screen', 30_000, async () => {
    await replay.selectOption('#speed', '100');
    await replay.click('#restart');
    await waitFor(replay, 'the replay did not reach its end', 20_000, () => window.berthReplay.state === 'done');
    await played();
    await sameScreen();
  });

  await step(`g. screenshot of the replay page to ${replayShot}`, 15_000, async () => {
    await replay.screenshot({ path: replayShot, timeout: 10_000 });
  });

  await step('h. with a wrong token the replay page plays nothing and says why', 15_000, async () => {
    const wrong = await context.newPage();
    wrong.on('pageerror', (err) => pageErrors.push(`wrong token: ${err.message}`));
    await wrong.goto(new URL(`replay#token=not-the-token&name=${encodeURIComponent(name)}`, baseUrl).href);
    await waitFor(wrong, 'the page did not show an error', 10_000, () =>
      window.berthReplay && window.berthReplay.state === 'error');
    const notice = await wrong.evaluate(() => document.getElementById('notice').textContent);
    if (!notice.includes('admin token is missing or wrong')) throw new StepFailure(`the notice says ${JSON.stringify(notice)}`);
    const lines = await terminalLines(wrong, 'berthReplay');
    if (lines.length > 0) throw new StepFailure(`the terminal shows ${JSON.stringify(lines)}`);
  });
} catch (err) {
  failedOutside(err);
} finally {
  if (browser) await browser.close().catch(() => {});
}

exit('replay');
