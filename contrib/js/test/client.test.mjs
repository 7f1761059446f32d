// client.test.mjs - parley.js against the real stack (lighttpd + parley-fcgi + parley-ws, MariaDB,
// memcached): both transports, forced fallback and upgrade back, parley-ws killed mid-conversation,
// a lost ack retried, the cursor resumed across transports, rooms.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import WS from 'ws';
import { ParleyClient, memoryStorage } from '../parley.js';
import { Stack, uname } from './stack.mjs';

let stack;
const clients = [];

before(async () => {
	stack = await new Stack().start();
});

after(async () => {
	for (const c of clients)
		c.close();
	await stack?.stop();
});

// Short timings so that fallback, backoff and upgrade happen within a test's time.
const T = 60000; // per test

const FAST = {
	backoffMin: 100, backoffMax: 1000, upgradeInterval: 1000, pollTimeout: 5, stableAfter: 1500,
	openTimeout: 3000, ackTimeout: 5000, pingInterval: 5000, gapTimeout: 500,
};

// PARLEY_JS_WEBSOCKET=builtin: the WHATWG WebSocket of node --experimental-websocket (the
// browsers' API) instead of the npm package "ws" (the fault injector LossyWS always wraps "ws").
const BUILTIN = process.env.PARLEY_JS_WEBSOCKET === 'builtin';
if (BUILTIN && typeof globalThis.WebSocket !== 'function')
	throw new Error('PARLEY_JS_WEBSOCKET=builtin needs node --experimental-websocket');

function client(user, opts = {}) {
	const dev = opts.dev ?? uname('d');
	const c = new ParleyClient({
		url: stack.http,
		getToken: () => stack.token(user, { dev }),
		WebSocket: BUILTIN ? globalThis.WebSocket : WS,
		storage: memoryStorage(),
		...FAST,
		...opts,
	});
	c.seen = [];
	c.on('event', (ev) => c.seen.push(ev));
	clients.push(c);
	return c;
}

async function waitFor(what, fn, ms = 15000) {
	const end = Date.now() + ms;
	for (;;) {
		const v = await fn();
		if (v)
			return v;
		if (Date.now() > end)
			throw new Error('timed out waiting for ' + what);
		await sleep(25);
	}
}

const messages = (c) => c.seen.filter((e) => e.type === 'new_message');
const byCmid = (c, cmid) => messages(c).filter((e) => e.message.client_msg_id === cmid);

// Every durable event a client emitted: seqs strictly +1 (nothing skipped, nothing twice).
function assertContiguous(c, what) {
	const seqs = c.seen.filter((e) => typeof e.seq === 'number').map((e) => e.seq);
	for (let i = 1; i < seqs.length; i++)
		assert.equal(seqs[i], seqs[i - 1] + 1, `${what}: seq ${seqs[i]} follows ${seqs[i - 1]}`);
}

// Two clients talk both ways: messages, receipts, typing, presence.
async function conversation(a, b, A, B) {
	const r1 = await a.send({ to: B, content: 'hello ' + B });
	assert.ok(r1.server_msg_id > 0 && r1.seq > 0);
	const got = await waitFor('b gets the message', () => byCmid(b, r1.client_msg_id)[0]);
	assert.equal(got.message.id, r1.server_msg_id);
	assert.equal(got.message.from, A);
	assert.equal(got.message.content, 'hello ' + B);
	// The sender's own log carries it too, on the seq the ack named.
	const own = await waitFor('a sees its own message', () => byCmid(a, r1.client_msg_id)[0]);
	assert.equal(own.seq, r1.seq);

	const r2 = await b.send({ to: A, content: 'hi ' + A });
	const back = await waitFor('a gets the answer', () => byCmid(a, r2.client_msg_id)[0]);
	assert.equal(back.message.id, r2.server_msg_id);

	await b.markRead(r1.server_msg_id);
	const receipt = await waitFor('a gets the read receipt', () => a.seen.find((e) =>
		e.type === 'message_status' && e.message_id === r1.server_msg_id && e.status === 'read'));
	assert.equal(receipt.by, B);

	await waitFor('b sees typing', async () => {
		await a.typing({ to: B });
		return b.seen.find((e) => e.type === 'typing' && e.from === A);
	});
	await waitFor('a sees typing', async () => {
		await b.typing({ to: A });
		return a.seen.find((e) => e.type === 'typing' && e.from === B);
	});
	assertContiguous(a, A);
	assertContiguous(b, B);
}

test('websocket: both clients on the WebSocket send, receive, receipt and type', { timeout: T }, async () => {
	const A = uname('wa'), B = uname('wb');
	const a = client(A), b = client(B);
	assert.equal(await a.connect(), 'websocket');
	assert.equal(await b.connect(), 'websocket');
	assert.equal(a.transport, 'websocket');
	await conversation(a, b, A, B);
	const p = await a.presence([B]);
	assert.equal(p[0].user, B);
	assert.equal(p[0].online, true);
});

test('long polling: a long-poll client and a WebSocket client talk both ways', { timeout: T }, async () => {
	const A = uname('la'), B = uname('lb');
	const a = client(A, { transports: ['longpoll'] }), b = client(B);
	assert.equal(await a.connect(), 'longpoll');
	assert.equal(await b.connect(), 'websocket');
	await conversation(a, b, A, B);
	await conversation(b, a, B, A);
	assert.equal(a.transport, 'longpoll');
});

test('fallback: a WebSocket URL that refuses the upgrade falls back to long polling, then upgrades back', { timeout: T }, async () => {
	const A = uname('fa'), B = uname('fb');
	// /nows is not the WebSocket path: lighttpd hands it to parley-fcgi, which answers 404.
	const a = client(A, { wsUrl: stack.http.replace(/^http/, 'ws') + '/nows' });
	const b = client(B);
	const transports = [];
	a.on('transport', (t) => transports.push(t));
	assert.equal(await a.connect(), 'longpoll');
	assert.deepEqual(transports, ['longpoll']);
	await b.connect();
	await conversation(a, b, A, B);

	// The WebSocket works again: the client finds out by itself and moves over.
	a.wsUrl = stack.wsUrl;
	await waitFor('upgrade back to the WebSocket', () => a.transport === 'websocket');
	assert.equal(transports.at(-1), 'websocket');
	const r = await b.send({ to: A, content: 'after the upgrade' });
	await waitFor('delivered after the upgrade', () => byCmid(a, r.client_msg_id)[0]);
	assertContiguous(a, A);
});

test('parley-ws killed and restarted mid-conversation: nothing lost, nothing doubled', { timeout: T }, async () => {
	const A = uname('ka'), B = uname('kb');
	const a = client(A), b = client(B);
	await a.connect();
	await b.connect();
	const transports = [];
	a.on('transport', (t) => transports.push(t));
	const N = 30;
	const sends = [];
	const send = (i) => sends.push(a.send({ to: B, content: 'm' + i, clientMsgId: `k-${A}-${i}` }));
	for (let i = 0; i < 10; i++) {
		send(i);
		await sleep(30);
	}
	await stack.stopWs('SIGKILL');
	for (let i = 10; i < 20; i++) {
		send(i);
		await sleep(100);
	}
	// The WebSocket keeps failing: both fall back to long polling and go on talking meanwhile.
	await waitFor('both fall back to long polling', () => a.transport === 'longpoll' && b.transport === 'longpoll');
	await waitFor('b has the first 20 while parley-ws is down', () => messages(b).length >= 20);
	await stack.startWs();
	for (let i = 20; i < N; i++) {
		send(i);
		await sleep(30);
	}
	const acks = await Promise.all(sends);
	await waitFor('b has every message', () => messages(b).length >= N, 30000);
	await sleep(300); // anything doubled would arrive now

	const got = messages(b);
	assert.equal(got.length, N, 'b got each message once');
	const ids = new Set(acks.map((r) => r.server_msg_id));
	assert.equal(ids.size, N, 'one server_msg_id per send');
	for (let i = 0; i < N; i++) {
		assert.equal(got[i].message.client_msg_id, `k-${A}-${i}`, 'in the order sent');
		assert.equal(got[i].message.id, acks[i].server_msg_id, 'the id the ack named');
	}
	assertContiguous(a, A);
	assertContiguous(b, B);
	// The server stored each exactly once (its log, not the client's view).
	const stored = (await stack.log(B)).filter((e) => e.type === 'new_message' && e.message.from === A);
	assert.deepEqual(stored.map((e) => e.message.id), acks.map((r) => r.server_msg_id));
	// It noticed the loss and came back to the WebSocket by itself.
	assert.ok(transports.includes(null), 'the drop was seen: ' + transports);
	await waitFor('a is back on the WebSocket', () => a.transport === 'websocket');
	await waitFor('b is back on the WebSocket', () => b.transport === 'websocket');
});

// A WebSocket around the real one ("ws") that can lose what comes back after one frame: the
// fault a real server will not produce on demand (an ack lost with its connection).
class LossyWS {
	static sockets = [];
	static sent = [];
	static loseAfter = null;   // predicate on an outgoing frame
	static dropIncoming = null; // predicate on an incoming frame: lost once
	static lost = null;        // resolves with the socket once armed and fired

	constructor(url, protocols) {
		this.inner = new WS(url, protocols);
		this.losing = false;
		this.swallowed = [];
		this.inner.onopen = (e) => this.onopen?.(e);
		this.inner.onclose = (e) => this.onclose?.(e);
		this.inner.onerror = (e) => this.onerror?.(e);
		this.inner.onmessage = (e) => {
			if (LossyWS.dropIncoming?.(JSON.parse(e.data))) {
				LossyWS.dropIncoming = null;
				return;
			}
			if (this.losing)
				this.swallowed.push(JSON.parse(e.data));
			else
				this.onmessage?.(e);
		};
		LossyWS.sockets.push(this);
	}

	get readyState() {
		return this.inner.readyState;
	}

	send(data) {
		const f = JSON.parse(data);
		LossyWS.sent.push(f);
		this.inner.send(data);
		if (LossyWS.loseAfter?.(f)) {
			LossyWS.loseAfter = null;
			this.losing = true;
			LossyWS.fired(this);
		}
	}

	close(code, reason) {
		this.inner.close(code, reason);
	}

	terminate() {
		this.inner.terminate();
	}
}

test('lost ack on the WebSocket: the retry with the same client_msg_id stores one message', { timeout: T }, async () => {
	const A = uname('aa'), B = uname('ab');
	const a = client(A, { WebSocket: LossyWS }), b = client(B);
	await a.connect();
	await b.connect();
	const cmid = 'lost-' + A;
	const fired = new Promise((r) => { LossyWS.fired = r; });
	LossyWS.loseAfter = (f) => f.type === 'send_message' && f.client_msg_id === cmid;
	const p = a.send({ to: B, content: 'ack lost', clientMsgId: cmid });
	const sock = await fired;
	// The server stored it (B's log has it) while nothing came back to the client...
	const first = await waitFor('stored', async () => (await stack.log(B)).find((e) =>
		e.type === 'new_message' && e.message.client_msg_id === cmid));
	// ...then the connection dies before the client saw the ack.
	sock.terminate();
	const r = await p;
	assert.equal(r.server_msg_id, first.message.id, 'the retry answers the first id');
	assert.ok(LossyWS.sent.filter((f) => f.type === 'send_message' && f.client_msg_id === cmid).length >= 2,
		'the frame was sent again');
	assert.ok(LossyWS.sockets.indexOf(sock) < LossyWS.sockets.length - 1, 'on a new connection');
	await waitFor('b got it', () => byCmid(b, cmid).length === 1);
	await sleep(300);
	assert.equal(byCmid(b, cmid).length, 1, 'delivered once');
	assert.equal(byCmid(a, cmid).length, 1, 'in the sender\'s stream once');
	const stored = (await stack.log(B)).filter((e) => e.type === 'new_message' && e.message.client_msg_id === cmid);
	assert.equal(stored.length, 1, 'stored once');
});

test('duplicates: events the server sends again are dropped by seq', { timeout: T }, async () => {
	const A = uname('da'), B = uname('db');
	const a = client(A), b = client(B);
	await a.connect();
	await b.connect();
	for (let i = 0; i < 3; i++)
		await b.send({ to: A, content: 'd' + i });
	await waitFor('a got three', () => messages(a).length === 3);
	// Ask the server to replay the whole log on the client's connection, as a racing replay
	// would: every event comes again, and none of them may reach the application twice.
	a._ws.send(JSON.stringify({ type: 'sync', after: 0 }));
	const r = await b.send({ to: A, content: 'after the replay' });
	await waitFor('a got the fourth', () => byCmid(a, r.client_msg_id)[0]);
	await sleep(300);
	assert.equal(messages(a).length, 4);
	assertContiguous(a, A);
});

test('gap: an event lost on the way is noticed at the next one and synced', { timeout: T }, async () => {
	const A = uname('pa'), B = uname('pb');
	const a = client(A, { WebSocket: LossyWS }), b = client(B);
	await a.connect();
	await b.connect();
	const lost = 'gap-' + A;
	LossyWS.dropIncoming = (f) => f.type === 'new_message' && f.message.client_msg_id === lost;
	const r1 = await b.send({ to: A, content: 'lost on the way', clientMsgId: lost });
	await sleep(200);
	assert.equal(byCmid(a, lost).length, 0, 'the frame was lost');
	assert.equal(LossyWS.dropIncoming, null);
	const r2 = await b.send({ to: A, content: 'the next one' });
	await waitFor('both arrive', () => messages(a).length === 2);
	assert.deepEqual(messages(a).map((e) => e.message.id), [r1.server_msg_id, r2.server_msg_id]);
	assertContiguous(a, A);
});

test('lost answer on long polling: POST /messages retried, answered duplicate with the same id', { timeout: T }, async () => {
	const A = uname('ha'), B = uname('hb');
	let firstAnswer = null;
	const lossyFetch = async (url, init) => {
		const res = await fetch(url, init);
		if (init?.method === 'POST' && url.endsWith('/messages') && !firstAnswer) {
			firstAnswer = await res.json();
			throw new TypeError('fetch failed'); // the answer never reached the client
		}
		return res;
	};
	const a = client(A, { transports: ['longpoll'], fetch: lossyFetch });
	await a.connect();
	const r = await a.send({ to: B, content: 'answer lost' });
	assert.ok(firstAnswer && firstAnswer.duplicate === false);
	assert.equal(r.server_msg_id, firstAnswer.server_msg_id);
	assert.equal(r.seq, firstAnswer.seq);
	assert.equal(r.duplicate, true);
	const stored = (await stack.log(B)).filter((e) => e.type === 'new_message' &&
		e.message.client_msg_id === r.client_msg_id);
	assert.equal(stored.length, 1);
});

test('cursor: one stored cursor across transports and restarts of the client', { timeout: T }, async () => {
	const A = uname('ca'), B = uname('cb');
	const storage = memoryStorage();
	const dev = uname('dev');
	const b = client(B);
	await b.connect();
	const a1 = client(A, { storage, dev });
	await a1.connect();
	const r1 = await b.send({ to: A, content: 'one' });
	await waitFor('a1 got one', () => byCmid(a1, r1.client_msg_id)[0]);
	a1.close();

	// Offline meanwhile; the next client (same storage, long polling) resumes at the cursor.
	const r2 = await b.send({ to: A, content: 'two' });
	const r3 = await b.send({ to: A, content: 'three' });
	const a2 = client(A, { storage, dev, transports: ['longpoll'] });
	await a2.connect();
	await waitFor('a2 got two and three', () => messages(a2).length >= 2);
	await sleep(300);
	assert.deepEqual(messages(a2).map((e) => e.message.id), [r2.server_msg_id, r3.server_msg_id]);
	a2.close();

	// And back on the WebSocket: nothing again, then what is new.
	const a3 = client(A, { storage, dev });
	assert.equal(await a3.connect(), 'websocket');
	const r4 = await b.send({ to: A, content: 'four' });
	await waitFor('a3 got four', () => byCmid(a3, r4.client_msg_id)[0]);
	assert.deepEqual(messages(a3).map((e) => e.message.id), [r4.server_msg_id]);
	assert.equal(a3.cursor, messages(a3)[0].seq);
});

test('long polling with a stored cursor and nothing new: connect() resolves when the server answers', { timeout: T }, async () => {
	const A = uname('lp'), B = uname('lq');
	const storage = memoryStorage();
	const dev = uname('dev');
	const a1 = client(A, { storage, dev, transports: ['longpoll'] });
	const b = client(B);
	await b.connect();
	const r1 = await b.send({ to: A, content: 'one' });
	await a1.connect();
	await waitFor('a1 got one', () => byCmid(a1, r1.client_msg_id)[0]);
	a1.close();
	// Nothing is new for A: a first poll that parked for pollTimeout would hold connect() (and the
	// transport event) for 20 s.
	const a2 = client(A, { storage, dev, transports: ['longpoll'], pollTimeout: 20 });
	const t0 = Date.now();
	assert.equal(await a2.connect(), 'longpoll');
	assert.ok(Date.now() - t0 < 5000, `connect() took ${Date.now() - t0} ms`);
	// And then it long-polls: a message arrives without any new request from us.
	const r2 = await b.send({ to: A, content: 'two' });
	await waitFor('a2 got two', () => byCmid(a2, r2.client_msg_id)[0]);
	assert.deepEqual(messages(a2).map((e) => e.message.id), [r2.server_msg_id]);
});

test('groups and rooms on both transports', { timeout: T }, async () => {
	const A = uname('ga'), B = uname('gb');
	const a = client(A), b = client(B, { transports: ['longpoll'] });
	await a.connect();
	await b.connect();
	const gid = await a.createGroup('js test', [B]);
	assert.ok(gid > 0);
	await waitFor('b sees the group', () => b.seen.find((e) => e.type === 'group_update' && e.group_id === gid));
	const r = await b.send({ groupId: gid, content: 'to the group' });
	const got = await waitFor('a gets the group message', () => byCmid(a, r.client_msg_id)[0]);
	assert.equal(got.message.group_id, gid);
	assert.deepEqual((await a.group(gid)).members.sort(), [A, B].sort());

	const room = uname('room');
	await a.joinRoom(room);
	await b.joinRoom(room);
	await a.roomMessage(room, 'from the websocket');
	await b.roomMessage(room, 'from long polling');
	for (const c of [a, b]) {
		await waitFor('both room messages', () => c.seen.filter((e) => e.type === 'room_message').length >= 2);
		assert.deepEqual(c.seen.filter((e) => e.type === 'room_message').map((e) => e.comment.text).sort(),
			['from long polling', 'from the websocket']);
	}
	await b.leaveRoom(room);
	await a.roomMessage(room, 'after leaving');
	await waitFor('a sees its third', () => a.seen.filter((e) => e.type === 'room_message').length >= 3);
	await sleep(300);
	assert.equal(b.seen.filter((e) => e.type === 'room_message').length, 2, 'b left the room');
});

test('history: a conversation and a group, newest first, paged with before', { timeout: T }, async () => {
	const A = uname('ya'), B = uname('yb');
	const a = client(A), b = client(B, { transports: ['longpoll'] });
	await a.connect();
	await b.connect();
	const ids = [];
	for (let i = 0; i < 5; i++)
		ids.push((await (i % 2 ? b.send({ to: A, content: 'h' + i }) : a.send({ to: B, content: 'h' + i }))).server_msg_id);
	for (const c of [a, b]) {
		const peer = c === a ? B : A;
		const got = [];
		let before;
		for (let pages = 0; pages < 5; pages++) {
			const page = await c.history({ with: peer, before, limit: 2 });
			assert.ok(page.messages.length <= 2);
			got.push(...page.messages);
			if (page.next_before == null)
				break;
			before = page.next_before;
		}
		assert.deepEqual(got.map((m) => m.id), [...ids].reverse(), 'every message once, newest first');
		assert.deepEqual(got.map((m) => m.content), ['h4', 'h3', 'h2', 'h1', 'h0']);
	}
	const gid = await a.createGroup('history', [B]);
	const g1 = await b.send({ groupId: gid, content: 'g1' });
	const g2 = await a.send({ groupId: gid, content: 'g2' });
	const page = await b.history({ groupId: gid });
	assert.deepEqual(page.messages.map((m) => m.id), [g2.server_msg_id, g1.server_msg_id]);
	assert.equal(page.next_before, null);
	const stranger = client(uname('ys'));
	await assert.rejects(stranger.history({ groupId: gid }), (e) => e.code === 'forbidden' && e.status === 403);
});

test('reset: events pruned while the client was away give one reset event, then history reloads', { timeout: T }, async () => {
	for (const transports of [['longpoll'], ['websocket']]) {
		const A = uname('ra'), B = uname('rb');
		const storage = memoryStorage();
		const dev = uname('dev');
		const b = client(B);
		await b.connect();
		const a1 = client(A, { storage, dev, transports });
		await a1.connect();
		const r1 = await b.send({ to: A, content: 'before' });
		await waitFor('a1 got it', () => byCmid(a1, r1.client_msg_id)[0]);
		const left = a1.cursor;
		a1.close();
		const r2 = await b.send({ to: A, content: 'missed 1' });
		const r3 = await b.send({ to: A, content: 'missed 2' });
		await stack.prune();

		const a2 = client(A, { storage, dev, transports });
		const resets = [];
		a2.on('reset', (r) => resets.push(r));
		assert.equal(await a2.connect(), transports[0]);
		await waitFor('the reset', () => resets.length === 1);
		assert.ok(resets[0].oldest_seq > left + 1, `oldest_seq ${resets[0].oldest_seq} is past ${left}`);
		assert.ok(a2.cursor >= resets[0].oldest_seq - 1, 'the cursor moved past what is gone');
		// What the reset tells the app to do: reload from history, which outlives the events.
		const h = await a2.history({ with: B });
		assert.deepEqual(h.messages.map((m) => m.id), [r3.server_msg_id, r2.server_msg_id, r1.server_msg_id]);
		// And the stream goes on from there, without a second reset.
		const r4 = await b.send({ to: A, content: 'after the reset' });
		await waitFor('a2 got the next', () => byCmid(a2, r4.client_msg_id)[0]);
		await sleep(300);
		assert.equal(resets.length, 1);
		assert.deepEqual(messages(a2).map((e) => e.message.id), [r4.server_msg_id], 'the pruned events are gone');
		assertContiguous(a2, A);
	}
});

// A token the server refuses (its signature is wrong), as an expired one would be.
const badToken = (user) => stack.token(user).replace(/\.[^.]*$/, '.AAAAAAAA');

test('token refresh: a refused token makes the client ask getToken({force: true}), on both transports', { timeout: T }, async () => {
	for (const transports of [['longpoll'], ['websocket']]) {
		const A = uname('ta');
		const asked = [];
		// A login service that is down at first, then hands out a token the server refuses, and
		// a good one only when told the last one was refused.
		const a = client(A, {
			transports,
			getToken: ({ force }) => {
				asked.push(force);
				if (asked.length === 1)
					throw new Error('login service down');
				return force ? stack.token(A) : badToken(A);
			},
		});
		const errors = [];
		a.on('error', (e) => errors.push(e));
		assert.equal(await a.connect(), transports[0]);
		assert.deepEqual(asked, [false, false, true]);
		assert.equal(errors[0]?.message, 'login service down');
		const r = await a.send({ to: A, content: 'with the new token' });
		assert.ok(r.server_msg_id > 0);
	}
});

test('errors: a refused send rejects with the contract code and is not retried', { timeout: T }, async () => {
	for (const transports of [['longpoll'], ['websocket']]) {
		const a = client(uname('ea'), { transports });
		await a.connect();
		await assert.rejects(a.send({ to: 'x', content: '   ' }), (e) => e.code === 'bad_request');
		await assert.rejects(a.send({ groupId: 999999999, content: 'x' }), (e) => e.code === 'not_found');
		assert.equal(a.unacknowledged.length, 0);
	}
});
