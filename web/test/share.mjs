// Browser test of a shared session (docs/protocol.md, "Shared sessions") against a running berth whose default
// profile allows sharing: the owner's page makes a viewer link, a second page opens it and shows the owner's
// shell read-only, the owner sees it in presence; both pages are screenshotted (one PNG each: <screenshot-path>
// with -owner and -viewer before .png); then the owner revokes the link, which ends the viewer's page.
//
// Usage: node web/test/share.mjs <base-url> <screenshot-path>
// Exit status 0 only if every step passed. Prints one line per step with its duration.
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
  terminalLines,
  typeCommand,
  waitForLines,
  waitForState,
} from './common.mjs';

const SIZE = { width: 900, height: 500 };

const [baseUrl, screenshotPath] = process.argv.slice(2);
if (!baseUrl || !screenshotPath) {
  console.error('usage: node web/test/share.mjs <base-url> <screenshot-path>');
  process.exit(64);
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
  failedOutside(err);
} finally {
  if (browser) await browser.close().catch(() => {});
}

exit('share');
