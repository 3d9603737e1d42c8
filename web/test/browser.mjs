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
import {
  CHROMIUM,
  CHROMIUM_ARGS,
  StepFailure,
  exit,
  failedOutside,
  isPrompt,
  outputAfter,
  pageErrors,
  step,
  typeCommand,
  waitForLines,
  waitForState,
} from './common.mjs';

const FIRST_SIZE = { width: 1000, height: 600 };
const SECOND_SIZE = { width: 700, height: 400 };

const [baseUrl, screenshotPath] = process.argv.slice(2);
if (!baseUrl || !screenshotPath) {
  console.error('usage: node web/test/browser.mjs <base-url> <screenshot-path>');
  process.exit(64);
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
  failedOutside(err);
} finally {
  if (browser) await browser.close().catch(() => {});
}

exit('browser');
