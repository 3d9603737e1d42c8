// Browser test of berth's terminal page against a running berth: a real Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core, which never downloads a browser) opens the page, runs commands in the shell,
// resizes the window, reloads the page into the same shell, and takes a screenshot.
// With BERTH_TEST_RESTART=1 it also has berth restarted under the open page: it prints the line
// `RESTART berth`, waits for the harness to answer `restarted` on stdin, and checks that the page came back to
// the same shell by itself.
//
// Usage: node web/test/browser.mjs <base-url> <screenshot-path>
// Exit status 0 only if every step passed. Prints one line per step with its duration.
import readline from 'node:readline';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.BERTH_CHROMIUM || '/usr/bin/chromium';
// The machine's network is closed: without these, Chromium waits on connections that never come.
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const FIRST_SIZE = { width: 1000, height: 600 };
const SECOND_SIZE = { width: 700, height: 400 };

const [baseUrl, screenshotPath] = process.argv.slice(2);
if (!baseUrl || !screenshotPath) {
  console.error('usage: node web/test/browser.mjs <base-url> <screenshot-path>');
  process.exit(64);
}

class StepFailure extends Error {}

let passed = 0;
let failed = 0;
const pageErrors = [];

/** Runs one step within `timeoutMs`, prints its line, and stops the test at the first failure. */
async function step(name, timeoutMs, fn) {
  const started = Date.now();
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new StepFailure(`timed out after ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    await Promise.race([fn(), deadline]);
    if (pageErrors.length > 0) throw new StepFailure(`JavaScript error on the page: ${pageErrors.join(' | ')}`);
    passed += 1;
    console.log(`ok    ${name} (${Date.now() - started} ms)`);
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

/** The terminal's logical lines (wrapped rows joined), right-trimmed, read from xterm's active buffer. */
function terminalLines(page) {
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

async function describePage(page) {
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
async function waitForLines(page, what, timeoutMs, check) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const found = check(await terminalLines(page));
    if (found) return found;
    if (Date.now() > until) throw new StepFailure(`${what} did not appear within ${timeoutMs} ms; ${await describePage(page)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function waitForState(page, state, timeoutMs) {
  try {
    await page.waitForFunction((s) => window.berth && window.berth.state === s, state, { timeout: timeoutMs });
  } catch {
    throw new StepFailure(`state did not become '${state}' within ${timeoutMs} ms; ${await describePage(page)}`);
  }
}

const isPrompt = (line) => line === '$' || line.startsWith('$ ');

/** Types a command into the terminal and waits until its line (prompt + command) is echoed. */
async function typeCommand(page, command) {
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
async function outputAfter(page, index, what, timeoutMs) {
  return waitForLines(page, what, timeoutMs, (lines) => {
    for (let i = index + 1; i < lines.length; i++) {
      if (isPrompt(lines[i])) return { output: lines.slice(index + 1, i) };
    }
    return null;
  });
}

let browser;
try {
  await step(`launch ${CHROMIUM}`, 30_000, async () => {
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 25_000 });
  });
  const context = await browser.newContext({ viewport: FIRST_SIZE });
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(err.message));

  await step('a. page opens, session is ready, shell prompt shows', 60_000, async () => {
    const response = await page.goto(baseUrl, { timeout: 15_000 });
    if (!response || !response.ok()) {
      throw new StepFailure(`GET ${baseUrl} answered ${response ? response.status() : 'nothing'}`);
    }
    await waitForState(page, 'ready', 45_000);
    await waitForLines(page, "a '$ ' prompt", 15_000, (lines) => lines.some(isPrompt));
  });

  await step('b. echo $((6*7)) prints 42', 20_000, async () => {
    const at = await typeCommand(page, 'echo $((6*7))');
    const { output } = await outputAfter(page, at, "the output '42' and the next prompt", 10_000);
    if (!output.includes('42')) throw new StepFailure(`expected a line '42', got ${JSON.stringify(output)}`);
  });

  await step('c. the shell follows a window resize (stty size)', 20_000, async () => {
    const before = await page.evaluate(() => [window.berth.term.rows, window.berth.term.cols]);
    await page.setViewportSize(SECOND_SIZE);
    try {
      await page.waitForFunction(
        ([rows, cols]) => window.berth.term.rows !== rows || window.berth.term.cols !== cols,
        before,
        { timeout: 5_000 },
      );
    } catch {
      throw new StepFailure(`the terminal stayed ${before[0]}x${before[1]} after resizing the window`);
    }
    const [rows, cols] = await page.evaluate(() => [window.berth.term.rows, window.berth.term.cols]);
    const at = await typeCommand(page, 'stty size');
    const { output } = await outputAfter(page, at, "the output of 'stty size'", 10_000);
    const expected = `${rows} ${cols}`;
    if (output.length !== 1 || output[0] !== expected) {
      throw new StepFailure(`stty size printed ${JSON.stringify(output)}, the terminal is '${expected}' (rows cols)`);
    }
  });

  await step('d. a page reload resumes the same shell', 60_000, async () => {
    const at = await typeCommand(page, 'export BERTH_MARK=kept$((1+1))');
    await outputAfter(page, at, 'the prompt after export', 10_000);
    const sessionBefore = await page.evaluate(() => window.berth.sessionId);
    await page.reload({ timeout: 15_000 });
    await waitForState(page, 'ready', 30_000);
    await waitForLines(page, "a '$ ' prompt after the reload", 10_000, (lines) => lines.some(isPrompt));
    const sessionAfter = await page.evaluate(() => window.berth.sessionId);
    if (sessionAfter !== sessionBefore) {
      throw new StepFailure(`the reload opened session ${sessionAfter}, not ${sessionBefore}`);
    }
    const echoed = await typeCommand(page, 'echo $BERTH_MARK');
    const { output } = await outputAfter(page, echoed, "the output 'kept2'", 10_000);
    if (!output.includes('kept2')) throw new StepFailure(`expected a line 'kept2', got ${JSON.stringify(output)}`);
  });

  if (process.env.BERTH_TEST_RESTART === '1') {
    await step('e. berth restarts under the page, which comes back to the same shell by itself', 120_000, async () => {
      const sessionBefore = await page.evaluate(() => window.berth.sessionId);
      const answers = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
      console.log('RESTART berth');
      const answer = await answers.next();
      if (answer.done || answer.value.trim() !== 'restarted') {
        throw new StepFailure(`the harness answered ${JSON.stringify(answer.value)}, not 'restarted'`);
      }
      // The old process is gone, so the page's socket closed; it reconnects with backoff and resumes.
      await waitForState(page, 'ready', 60_000);
      const sessionAfter = await page.evaluate(() => window.berth.sessionId);
      if (sessionAfter !== sessionBefore) {
        throw new StepFailure(`after the restart the page holds session ${sessionAfter}, not ${sessionBefore}`);
      }
      const echoed = await typeCommand(page, 'echo again-$BERTH_MARK');
      const { output } = await outputAfter(page, echoed, "the output 'again-kept2'", 10_000);
      if (!output.includes('again-kept2')) {
        throw new StepFailure(`expected a line 'again-kept2', got ${JSON.stringify(output)}`);
      }
    });
  }

  await step(`f. screenshot to ${screenshotPath}`, 15_000, async () => {
    await page.screenshot({ path: screenshotPath, timeout: 10_000 });
  });
} catch (err) {
  if (!(err instanceof StepFailure) && failed === 0) {
    failed += 1;
    console.log(`FAIL  ${err.message}`);
  }
} finally {
  if (browser) await browser.close().catch(() => {});
}

console.log(`browser: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
