// Browser test of a shared session (docs/protocol.md, "Shared sessions") against a running berth whose default
// profile allows sharing: the owner's page makes a viewer link, a second page opens it and shows the owner's
// shell read-only, the owner sees it in presence; both pages are screenshotted (one PNG each: <screenshot-path>
// with -owner and -viewer before .png); then the owner revokes the link, which ends the viewer's page.
//
// Usage: node web/test/share.mjs <base-url> <screenshot-path>
// Exit status 0 only if every step passed. Prints one line per step with its duration.
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
const SIZE = { width: 900, height: 500 };

const [baseUrl, screenshotPath] = process.argv.slice(2);
if (!baseUrl || !screenshotPath) {
  console.error('usage: node web/test/share.mjs <base-url> <screenshot-path>');
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
  const owner = await (await browser.newContext({ viewport: SIZE })).newPage();
  owner.on('pageerror', (err) => pageErrors.push(err.message));
  let link;

  await step('a. the owner opens a session and runs a command', 60_000, async () => {
    await owner.goto(baseUrl, { timeout: 15_000 });
    await waitForState(owner, 'ready', 45_000);
    await waitForLines(owner, "a '$ ' prompt", 15_000, (lines) => lines.some(isPrompt));
    const at = await typeCommand(owner, 'echo shared-$((6*7))');
    await outputAfter(owner, at, "the output 'shared-42'", 10_000);
  });

  await step('b. the Share control makes a viewer link', 15_000, async () => {
    await owner.click('#share-viewer');
    await owner.waitForFunction(() => !document.getElementById('share-link').hidden, null, { timeout: 10_000 });
    link = await owner.evaluate(() => document.getElementById('share-link').value);
    if (!/\/\?session=[0-9a-f]{32}#grant=[0-9a-f]{64}$/.test(link)) throw new StepFailure(`link ${link}`);
  });

  const viewer = await (await browser.newContext({ viewport: SIZE })).newPage();
  viewer.on('pageerror', (err) => pageErrors.push(err.message));

  await step('c. the link opens the owner\'s shell, read-only', 60_000, async () => {
    await viewer.goto(link, { timeout: 15_000 });
    await waitForState(viewer, 'ready', 45_000);
    await waitForLines(viewer, "the owner's 'shared-42'", 15_000, (lines) => lines.includes('shared-42'));
    const status = await viewer.evaluate(() => document.getElementById('status').textContent);
    if (!status.includes('read-only')) throw new StepFailure(`the viewer's status says ${JSON.stringify(status)}`);
    const share = await viewer.evaluate(() => document.getElementById('share').hidden);
    if (!share) throw new StepFailure('a viewer is offered the Share control');
  });

  await step('d. the owner sees the viewer; the viewer sees the owner type; its own keys do nothing', 30_000, async () => {
    await owner.waitForFunction(
      () => /1 connected: .*\(viewer\)/.test(document.getElementById('presence').textContent),
      null,
      { timeout: 10_000 },
    );
    await viewer.evaluate(() => window.berth.term.focus());
    await viewer.keyboard.type('echo viewer-typed');
    await viewer.keyboard.press('Enter');
    const notice = await viewer.evaluate(() => document.getElementById('notice').textContent);
    if (!notice.includes('read-only')) throw new StepFailure(`the viewer was not told: ${JSON.stringify(notice)}`);
    const at = await typeCommand(owner, 'echo after-$((1+1))');
    await outputAfter(owner, at, "the output 'after-2'", 10_000);
    await waitForLines(viewer, "the owner's 'after-2'", 10_000, (lines) => lines.includes('after-2'));
    const ownerLines = await terminalLines(owner);
    if (ownerLines.some((l) => l.includes('viewer-typed'))) throw new StepFailure('the viewer typed into the shell');
  });

  await step(`e. screenshots to ${screenshotPath.replace(/\.png$/, '-{owner,viewer}.png')}`, 15_000, async () => {
    await owner.screenshot({ path: screenshotPath.replace(/\.png$/, '-owner.png'), timeout: 10_000 });
    await viewer.screenshot({ path: screenshotPath.replace(/\.png$/, '-viewer.png'), timeout: 10_000 });
  });

  await step('f. the owner revokes the link; the viewer page ends, saying so', 30_000, async () => {
    await owner.click('#share-revoke');
    await waitForState(viewer, 'ended', 20_000);
    const status = await viewer.evaluate(() => document.getElementById('status').textContent);
    if (!status.includes('revoked')) throw new StepFailure(`the viewer's status says ${JSON.stringify(status)}`);
    await owner.waitForFunction(() => document.getElementById('presence').hidden, null, { timeout: 10_000 });
  });

  await step('g. the owner ends the session', 20_000, async () => {
    await owner.evaluate(() => window.berth.term.focus());
    await owner.keyboard.type('exit');
    await owner.keyboard.press('Enter');
    await waitForState(owner, 'ended', 15_000);
  });
} catch (err) {
  if (!(err instanceof StepFailure) && failed === 0) {
    failed += 1;
    console.log(`FAIL  ${err.message}`);
  }
} finally {
  if (browser) await browser.close().catch(() => {});
}

console.log(`share: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
