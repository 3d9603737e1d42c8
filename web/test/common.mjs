// What berth's browser tests share: Chromium (Debian's, driven by playwright-core, which never downloads a
// browser), steps that each print one line with their duration and stop the test at the first failure, and
// readers of the terminal page (xterm's buffer through `window.berth`).

export const CHROMIUM = process.env.BERTH_CHROMIUM || '/usr/bin/chromium';
// The machine's network is closed: without these, Chromium waits on connections that never come.
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export class StepFailure extends Error {}

let passed = 0;
let failed = 0;
/** Errors the pages threw: push a page's `pageerror`s here, and the next step fails with them. */
export const pageErrors = [];

/** Runs one step within `timeoutMs`, prints its line, returns what `fn` returned, and stops the test at the
 * first failure. */
export async function step(name, timeoutMs, fn) {
  const started = Date.now();
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new StepFailure(`timed out after ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    const value = await Promise.race([fn(), deadline]);
    if (pageErrors.length > 0) throw new StepFailure(`JavaScript error on a page: ${pageErrors.join(' | ')}`);
    passed += 1;
    console.log(`ok    ${name} (${Date.now() - started} ms)`);
    return value;
  } catch (err) {
    failed += 1;
    // Playwright's errors carry a call log after the first line.
    const message = err instanceof StepFailure ? err.message : String(err.message).split('\n')[0];
    console.log(`FAIL  ${name} (${Date.now() - started} ms): ${message}`);
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/** Counts an error that ended the test outside the steps' own reports (a step's failure is already counted). */
export function failedOutside(err) {
  if (!(err instanceof StepFailure) && failed === 0) {
    failed += 1;
    console.log(`FAIL  ${err.message}`);
  }
}

/** Prints the tally and exits: 0 only if every step passed. */
export function exit(test) {
  console.log(`${test}: ${passed} passed, ${failed} failed`);
  process.exit(failed === 0 && passed > 0 ? 0 : 1);
}

/** The terminal's logical lines (wrapped rows joined), right-trimmed, read from xterm's active buffer. */
export function terminalLines(page) {
  return page.evaluate(() => {
    const term = window.berth && window.berth.term;
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
  });
}

export async function describePage(page) {
  try {
    const info = await page.evaluate(() => ({
      state: window.berth ? window.berth.state : '(no window.berth)',
      status: (document.getElementById('status') || {}).textContent,
      notice: (document.getElementById('notice') || {}).textContent,
      size: window.berth ? `${window.berth.term.rows}x${window.berth.term.cols}` : '',
    }));
    const tail = (await terminalLines(page)).slice(-6).map((l) => JSON.stringify(l)).join(', ');
    return `state=${info.state} status=${JSON.stringify(info.status)} notice=${JSON.stringify(info.notice)} ` +
      `rows x cols=${info.size}; last lines: [${tail}]`;
  } catch (err) {
    return `(page not readable: ${err.message})`;
  }
}

/** Polls `check(lines)` until it returns a truthy value, which is returned; fails with `what` and the page. */
export async function waitForLines(page, what, timeoutMs, check) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const found = check(await terminalLines(page));
    if (found) return found;
    if (Date.now() > until) throw new StepFailure(`${what} did not appear within ${timeoutMs} ms; ${await describePage(page)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export async function waitForState(page, state, timeoutMs) {
  try {
    await page.waitForFunction((s) => window.berth && window.berth.state === s, state, { timeout: timeoutMs });
  } catch {
    throw new StepFailure(`state did not become '${state}' within ${timeoutMs} ms; ${await describePage(page)}`);
  }
}

export const isPrompt = (line) => line === '$' || line.startsWith('$ ');

/** Types a command into the terminal and waits until its line (prompt + command) is echoed. */
export async function typeCommand(page, command) {
  await page.evaluate(() => window.berth.term.focus());
  const before = (await terminalLines(page)).length;
  await page.keyboard.type(command);
  await page.keyboard.press('Enter');
  const at = await waitForLines(page, `the echo of '${command}'`, 10_000, (lines) => {
    for (let i = lines.length - 1; i >= Math.max(0, before - 1); i--) {
      if (isPrompt(lines[i]) && lines[i].endsWith(command)) return { index: i };
    }
    return null;
  });
  return at.index;
}

/** Waits for the next prompt after line `index`, and returns the lines in between (the command's output). */
export async function outputAfter(page, index, what, timeoutMs) {
  return waitForLines(page, what, timeoutMs, (lines) => {
    for (let i = index + 1; i < lines.length; i++) {
      if (isPrompt(lines[i])) return { output: lines.slice(index + 1, i) };
    }
    return null;
  });
}
