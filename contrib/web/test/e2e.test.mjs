// e2e.test.mjs - the demo web app in headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core) against the real stack: lighttpd serving the page and the API on one origin,
// parley-fcgi with demo.tokens = yes, parley-ws. Two browser contexts: alice on WebSocket, bob
// forced onto long polling. Run by tests/integration/test_web.sh (under with-services).
//
// Screenshots go to $PARLEY_WEB_ARTEFACTS (default: $PARLEY_BUILDDIR/tests/web-artefacts); the
// test prints the directory. Every wait is for a condition, never a fixed sleep.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';
import { Stack, uname } from '../../js/test/stack.mjs';

const CHROMIUM = process.env.PARLEY_CHROMIUM ?? '/usr/bin/chromium';
const WAIT = Number(process.env.PARLEY_WEB_WAIT_MS ?? 20000);   // one condition, on a loaded box
const ART = resolve(process.env.PARLEY_WEB_ARTEFACTS ??
	join(process.env.PARLEY_BUILDDIR ?? '.', 'tests', 'web-artefacts'));

let stack, browser;
const pages = [];

before(async () => {
	mkdirSync(ART, { recursive: true });
	console.log('# screenshots: ' + ART);
	stack = await new Stack().start({ config: '[demo]\ntokens = yes\n', web: true });
	const args = ['--disable-dev-shm-usage'];
	if (process.getuid?.() === 0)
		args.push('--no-sandbox');   // Chromium refuses to sandbox as root
	browser = await chromium.launch({ executablePath: CHROMIUM, args });
});

after(async () => {
	for (const p of pages)
		writeFileSync(join(ART, p.user + '.console.log'), p.log.join('\n') + '\n');
	for (const p of pages)
		await p.context().close().catch(() => {});
	await browser?.close().catch(() => {});
	await stack?.stop();
});

async function shot(page, name) {
	await page.screenshot({ path: join(ART, name + '.png') });
}

/** A browser context signed in as user through the page's own sign-in form. */
async function signIn(user, { longpoll = false } = {}) {
	const ctx = await browser.newContext({ viewport: { width: 1100, height: 720 } });
	const page = await ctx.newPage();
	page.setDefaultTimeout(WAIT);
	const log = [];
	page.on('console', (m) => log.push(`${new Date().toISOString()} ${m.type()}: ${m.text()}`));
	page.on('pageerror', (e) => log.push('pageerror: ' + e.message));
	page.on('requestfailed', (r) => log.push(`${new Date().toISOString()} requestfailed: ${r.url()} ${r.failure()?.errorText}`));
	page.log = log;
	page.user = user;
	pages.push(page);
	await page.goto(stack.http + '/web/');
	await page.fill('#signin-user', user);
	if (longpoll)
		await page.check('#signin-longpoll');
	await page.click('#signin-go');
	await page.waitForSelector('#app:not([hidden])');
	return page;
}

const badge = (page) => page.getAttribute('#transport', 'data-transport');
const waitBadge = (page, t) => page.waitForSelector(`#transport[data-transport="${t}"]`);
const conv = (title) => `#conversations li.conv[data-title="${title}"]`;

/** Wait until the thread shows a message with this text (from them or from us). */
function waitMsg(page, text, who = '') {
	return page.waitForFunction(([t, w]) => [...document.querySelectorAll('#messages li.msg' + w)]
		.some((li) => li.querySelector('.text').textContent === t), [text, who]);
}

async function statusOf(page, text) {
	return page.evaluate((t) => [...document.querySelectorAll('#messages li.msg.mine')]
		.find((li) => li.querySelector('.text').textContent === t)?.dataset.status, text);
}

function waitStatus(page, text, status) {
	return page.waitForFunction(([t, s]) => [...document.querySelectorAll('#messages li.msg.mine')]
		.some((li) => li.querySelector('.text').textContent === t && li.dataset.status === s),
	[text, status]);
}

async function countMsgs(page, text) {
	return page.evaluate((t) => [...document.querySelectorAll('#messages li.msg')]
		.filter((li) => li.querySelector('.text').textContent === t).length, text);
}

test('demo tokens: POST /demo/token with demo.tokens = yes', async () => {
	const user = uname('demo');
	const post = (body, method = 'POST') => fetch(stack.http + '/demo/token', {
		method, headers: { 'Content-Type': 'application/json' },
		body: method === 'POST' ? body : undefined,
	});
	let r = await post(JSON.stringify({ user, device: 'web-1' }));
	assert.equal(r.status, 200);
	const j = await r.json();
	assert.equal(j.user, user);
	assert.ok(j.expires_in > 0);
	const claims = JSON.parse(Buffer.from(j.token.split('.')[1], 'base64url').toString());
	assert.equal(claims.sub, user);
	assert.equal(claims.dev, 'web-1');
	r = await fetch(stack.http + '/conversations', { headers: { Authorization: 'Bearer ' + j.token } });
	assert.equal(r.status, 200, 'the demo token is a real token');
	for (const [body, field] of [[JSON.stringify({ user: 'bad user!' }), 'user'], ['{}', 'user'],
		['not json', 'body'], [JSON.stringify({ user, device: 7 }), 'device']]) {
		r = await post(body);
		const e = await r.json();
		assert.equal(r.status, 400, body);
		assert.equal(e.error.code, 'bad_request');
		assert.match(e.error.message, new RegExp(field));
	}
	r = await post(null, 'GET');
	assert.equal(r.status, 405);
	assert.equal((await r.json()).error.code, 'method_not_allowed');
});

test('two browsers, WebSocket and long poll, talk; parley-ws restarts under them', async (t) => {
	const alice = uname('alice'), bob = uname('bob');
	// History to page through: 25 messages from bob before anyone signs in.
	const tok = stack.token(bob);
	for (let i = 1; i <= 25; i++) {
		const r = await fetch(stack.http + '/messages', {
			method: 'POST',
			headers: { Authorization: 'Bearer ' + tok, 'Content-Type': 'application/json' },
			body: JSON.stringify({ to: alice, content: `old ${i}`, client_msg_id: `old-${i}` }),
		});
		assert.equal(r.status, 200, await r.text());
	}

	const A = await signIn(alice);
	const B = await signIn(bob, { longpoll: true });

	await t.test('transport badges: alice WebSocket, bob long poll', async () => {
		await waitBadge(A, 'websocket');
		await waitBadge(B, 'longpoll');
		assert.equal(await A.textContent('#transport'), 'WebSocket');
		assert.equal(await B.textContent('#transport'), 'Long poll');
	});

	await t.test('unread count, history paging, read receipts', async () => {
		await A.waitForSelector(`${conv(bob)} .unread:text-is("25")`);
		await shot(A, '01-alice-unread');
		await B.click(conv(alice));
		await waitMsg(B, 'old 25', '.mine');
		await A.click(conv(bob));
		await waitMsg(A, 'old 25', '.theirs');
		assert.equal(await A.locator('#messages li.msg').count(), 20, 'one page of history');
		assert.equal(await countMsgs(A, 'old 5'), 0);
		await A.click('#older');
		await waitMsg(A, 'old 1');
		assert.equal(await A.locator('#messages li.msg').count(), 25);
		assert.ok(await A.isHidden('#older'), 'nothing older is left');
		await A.waitForSelector(`${conv(bob)} .unread:text-is("")`, { state: 'attached' });
		// alice read them: bob's page shows ✓✓ read on his own messages (receipt via long poll).
		await waitStatus(B, 'old 25', 'read');
		assert.equal(await B.textContent('#messages li.msg[data-status="read"] .ticks >> nth=-1'), '✓✓');
		await shot(B, '02-bob-read-receipts');
	});

	await t.test('presence: bob sees alice (WebSocket) online', async () => {
		await B.waitForSelector('#thread-presence.online');
		await B.waitForSelector(`${conv(alice)} .dot.online`);
	});

	await t.test('typing both ways', async () => {
		await A.type('#compose', 'hel');
		await B.waitForSelector(`#typing:text-is("${alice} is typing…")`);
		await B.type('#compose', 'hm');
		await A.waitForSelector(`#typing:text-is("${bob} is typing…")`);
		await shot(B, '03-bob-sees-typing');
		await A.fill('#compose', '');
		await B.fill('#compose', '');
	});

	await t.test('messages both ways with ✓ and ✓✓', async () => {
		await A.fill('#compose', 'hello from the WebSocket');
		await A.press('#compose', 'Enter');
		await waitMsg(B, 'hello from the WebSocket', '.theirs');
		await waitStatus(A, 'hello from the WebSocket', 'read');
		await B.fill('#compose', 'hello from long polling');
		await B.click('#send');
		await waitMsg(A, 'hello from long polling', '.theirs');
		await waitStatus(B, 'hello from long polling', 'read');
		assert.equal(await countMsgs(A, 'hello from long polling'), 1);
		assert.equal(await countMsgs(B, 'hello from the WebSocket'), 1);
		await shot(A, '04-alice-thread');
		await shot(B, '05-bob-thread');
	});

	await t.test('a group: created by alice, seen and answered by bob', async () => {
		const g = uname('team');
		await A.click('#new-group summary');
		await A.fill('#group-name', g);
		await A.fill('#group-members', bob);
		await A.click('#group-create');
		await A.waitForSelector(`#thread-title:text-is("${g}")`);
		await A.fill('#compose', 'welcome to the group');
		await A.press('#compose', 'Enter');
		await B.waitForSelector(conv(g));
		await B.click(conv(g));
		await waitMsg(B, 'welcome to the group', '.theirs');
		await B.fill('#compose', 'thanks');
		await B.press('#compose', 'Enter');
		await waitMsg(A, 'thanks', '.theirs');
		await waitStatus(A, 'welcome to the group', 'read');
		await shot(B, '06-bob-group');
	});

	const room = uname('live');
	await t.test('a live room, joined by both', async () => {
		for (const p of [A, B]) {
			await p.fill('#room-name', room);
			await p.press('#room-name', 'Enter');
			await p.waitForSelector(`#room-title:text-is("# ${room}")`);
			await p.waitForSelector(`#rooms li[data-room="${room}"]`);
		}
		await A.fill('#room-text', 'first in the room');
		await A.press('#room-text', 'Enter');
		await B.waitForSelector('#room-messages li.room-msg:has-text("first in the room")');
		await B.fill('#room-text', 'second, over long polling');
		await B.press('#room-text', 'Enter');
		await A.waitForSelector('#room-messages li.room-msg:has-text("second, over long polling")');
		await shot(A, '07-alice-room');
	});

	await t.test('parley-ws restarts: the page recovers by itself, nothing lost or doubled', async () => {
		await A.click(conv(bob));
		await B.click(conv(alice));
		await waitBadge(A, 'websocket');
		await stack.stopWs('SIGTERM');
		// The page notices: its WebSocket is gone (reconnecting, or long polling meanwhile).
		await A.waitForFunction(() => document.querySelector('#transport').dataset.transport !== 'websocket');
		await shot(A, '08-alice-ws-down');
		await B.fill('#compose', 'sent while parley-ws was down');
		await B.press('#compose', 'Enter');
		await waitStatus(B, 'sent while parley-ws was down', 'sent');
		await stack.startWs();
		await waitMsg(A, 'sent while parley-ws was down', '.theirs');
		await A.fill('#compose', 'back again');
		await A.press('#compose', 'Enter');
		await waitMsg(B, 'back again', '.theirs');
		await waitStatus(A, 'back again', 'read');
		await A.click(`#rooms li[data-room="${room}"]`);
		await A.fill('#room-text', 'room after the restart');
		await A.press('#room-text', 'Enter');
		await B.click(`#rooms li[data-room="${room}"]`);
		await B.waitForSelector('#room-messages li.room-msg:has-text("room after the restart")');
		await A.click(conv(bob));
		await B.click(conv(alice));
		assert.equal(await countMsgs(A, 'sent while parley-ws was down'), 1);
		assert.equal(await countMsgs(A, 'hello from long polling'), 1);
		const tr = await badge(A);
		assert.ok(tr === 'websocket' || tr === 'longpoll', 'a transport is up: ' + tr);
		// Back on the WebSocket: at once, or at the page's next upgrade try (every 5-15 s).
		const t0 = Date.now();
		await A.waitForSelector('#transport[data-transport="websocket"]', { timeout: 45000 });
		console.log(`# alice after the restart: ${tr}, on the WebSocket again ${Date.now() - t0} ms later`);
		await B.fill('#compose', 'over the new WebSocket');
		await B.press('#compose', 'Enter');
		await waitMsg(A, 'over the new WebSocket', '.theirs');
		await shot(A, '09-alice-recovered');
	});

	await t.test('the switch moves alice onto long polling and back', async () => {
		await B.click(conv(alice));
		await A.check('#force-longpoll');
		await waitBadge(A, 'longpoll');
		await B.fill('#compose', 'to alice on long polling');
		await B.press('#compose', 'Enter');
		await waitMsg(A, 'to alice on long polling', '.theirs');
		await A.uncheck('#force-longpoll');
		await waitBadge(A, 'websocket');
		await B.fill('#compose', 'to alice on the WebSocket again');
		await B.press('#compose', 'Enter');
		await waitMsg(A, 'to alice on the WebSocket again', '.theirs');
		assert.equal(await countMsgs(A, 'to alice on long polling'), 1);
		await shot(A, '10-alice-switched-back');
	});

	const errors = [...A.log, ...B.log].filter((l) => l.includes('pageerror'));
	assert.deepEqual(errors, [], 'no uncaught errors in the pages');
});
