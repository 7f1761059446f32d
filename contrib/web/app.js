// app.js - the demo chat web app: one ES module on top of the client library (../js/parley.js).
// Served by the demo stack's lighttpd on the API's own origin (contrib/web/lighttpd.conf); signs
// in through POST /demo/token, which only a demo stack serves (demo.tokens = yes).
import { ParleyClient, webStorage } from '../js/parley.js';

const $ = (sel) => document.querySelector(sel);
const PAGE = 20;               // history page size
const TYPING_SHOW_MS = 4000;   // how long "x is typing" stays after the last typing event
const TYPING_SEND_MS = 2000;   // at most one typing event per this interval
const PRESENCE_EVERY_MS = 20000;
const ROOM_KEEP = 200;

// ---- state ----------------------------------------------------------------------------------
const S = {
	me: null,
	device: null,
	client: null,
	convs: new Map(),      // key ('u:bob' | 'g:17') -> {key, with, groupId, title, preview, unread, lastId, lastTs}
	threads: new Map(),    // key -> {msgs: Map(id -> message), pending: Map(cmid -> message), nextBefore, loaded}
	keyOfMsg: new Map(),   // message id -> key (for group receipts)
	floors: new Map(),     // key -> {delivered: id, read: id}: my messages up to these ids
	typing: new Map(),     // key -> {who, until}
	presence: new Map(),   // user -> online
	groups: new Map(),     // group id -> name
	rooms: new Map(),      // room -> [comments]
	active: null,          // {kind: 'conv', key} | {kind: 'room', room}
	lastTypingSent: 0,
	presenceTimer: null,
	readTimer: null,
};

// The device id of this tab: two tabs of one user are two devices with their own cursors.
function tabDevice() {
	let d = sessionStorage.getItem('parley-web:device');
	if (!d) {
		d = 'web-' + Math.random().toString(36).slice(2, 10);
		sessionStorage.setItem('parley-web:device', d);
	}
	return d;
}

function forcedLongpoll() {
	const q = new URLSearchParams(location.search).get('transport');
	if (q === 'longpoll' || q === 'websocket')
		return q === 'longpoll';
	return localStorage.getItem('parley-web:longpoll') === '1';
}

function showError(el, e) {
	el.textContent = e ? String(e.message ?? e) : '';
	el.hidden = !e;
}

// ---- sign-in --------------------------------------------------------------------------------
async function demoToken(user) {
	const res = await fetch('/demo/token', {
		method: 'POST',
		headers: { 'Content-Type': 'application/json' },
		body: JSON.stringify({ user, device: S.device }),
	});
	const body = await res.json().catch(() => null);
	if (!res.ok) {
		const msg = res.status === 404 ? 'this server hands out no demo tokens (demo.tokens is off)'
			: body?.error?.message ?? 'HTTP ' + res.status;
		throw new Error(msg);
	}
	return body.token;
}

async function signIn(user) {
	S.device = tabDevice();
	await demoToken(user);   // fails early and visibly when the server has no demo tokens
	S.me = user;
	sessionStorage.setItem('parley-web:user', user);
	$('#signin-screen').hidden = true;
	$('#app').hidden = false;
	$('#me').textContent = `${user} · ${S.device}`;
	$('#force-longpoll').checked = forcedLongpoll();
	await start();
}

function signOut() {
	stop();
	sessionStorage.removeItem('parley-web:user');
	location.reload();
}

// ---- the client -----------------------------------------------------------------------------
async function start() {
	stop();
	const c = new ParleyClient({
		getToken: () => demoToken(S.me),
		deviceId: S.device,
		storage: webStorage(localStorage),
		storageKey: 'parley-web:',
		transports: forcedLongpoll() ? ['longpoll'] : ['websocket', 'longpoll'],
		// Back from long polling to the WebSocket within 5-15 s of it being usable again (after a
		// parley-ws restart, say: lighttpd answers 503 for a few seconds after it is back).
		upgradeInterval: 10000,
	});
	S.client = c;
	c.on('transport', (t) => {
		if (S.client !== c)
			return;
		setBadge(t);
		// A transport (back) up: the summaries may have moved while nothing listened.
		if (t)
			loadConversations().catch(() => {});
	});
	c.on('message', (ev) => S.client === c && onMessage(ev.message));
	c.on('receipt', (ev) => S.client === c && onReceipt(ev));
	c.on('typing', (ev) => S.client === c && onTyping(ev));
	c.on('presence', (ev) => S.client === c && onPresence(ev));
	c.on('group', (ev) => S.client === c && onGroup(ev));
	c.on('room', (ev) => S.client === c && onRoom(ev));
	c.on('reset', () => S.client === c && onReset());
	c.on('error', (e) => console.warn('parley:', e));
	setBadge(null);
	// Summaries first, so that events replayed from the cursor do not count as unread twice. If the
	// server is not there yet, the transport event loads them once it is.
	await loadConversations().catch((e) => console.warn('conversations:', e));
	await c.connect();
	for (const room of S.rooms.keys())
		c.joinRoom(room).catch((e) => showError($('#app-error'), e));
	S.presenceTimer = setInterval(refreshPresence, PRESENCE_EVERY_MS);
}

function stop() {
	clearInterval(S.presenceTimer);
	S.client?.close();
	S.client = null;
}

function setBadge(t) {
	const b = $('#transport');
	b.dataset.transport = t ?? '';
	b.textContent = t === 'websocket' ? 'WebSocket' : t === 'longpoll' ? 'Long poll' : 'reconnecting…';
}

// ---- conversations --------------------------------------------------------------------------
function convKey(m) {
	if (m.group_id != null)
		return 'g:' + m.group_id;
	return 'u:' + (m.from === S.me ? m.to : m.from);
}

function convOf(key) {
	let c = S.convs.get(key);
	if (!c) {
		c = { key, unread: 0, lastId: 0, lastTs: 0, preview: '' };
		if (key.startsWith('g:'))
			c.groupId = Number(key.slice(2));
		else
			c.with = key.slice(2);
		c.title = c.with ?? S.groups.get(c.groupId) ?? 'group ' + c.groupId;
		S.convs.set(key, c);
		if (c.groupId != null && !S.groups.has(c.groupId))
			groupName(c.groupId);
	}
	return c;
}

async function groupName(id) {
	S.groups.set(id, 'group ' + id);
	try {
		const g = await S.client.group(id);
		S.groups.set(id, g.name);
		const c = S.convs.get('g:' + id);
		if (c)
			c.title = g.name;
		renderConvs();
		renderHead();
	} catch { /* not a member any more: keep the number */ }
}

function preview(m) {
	return (m.from === S.me ? 'you: ' : m.group_id != null ? m.from + ': ' : '') + m.content;
}

async function loadConversations() {
	const c = S.client;
	const list = await c.conversations(100);
	if (S.client !== c)
		return;
	for (const s of list) {
		const m = s.last_message;
		const key = s.group_id != null ? 'g:' + s.group_id : 'u:' + s.with;
		const conv = convOf(key);
		conv.unread = s.unread;
		if (m && m.id >= conv.lastId) {
			conv.lastId = m.id;
			conv.preview = preview(m);
		}
		conv.lastTs = Math.max(conv.lastTs, s.last_ts ?? m?.ts ?? 0);
	}
	if (S.active?.kind === 'conv')
		S.convs.get(S.active.key) && (S.convs.get(S.active.key).unread = 0);
	renderConvs();
	await refreshPresence();
}

async function refreshPresence() {
	const users = [...S.convs.values()].filter((c) => c.with).map((c) => c.with);
	if (!S.client || users.length === 0)
		return;
	try {
		for (const p of await S.client.presence(users.slice(0, 500)))
			S.presence.set(p.user, p.online);
		renderConvs();
		renderHead();
	} catch { /* next time */ }
}

function renderConvs() {
	const ul = $('#conversations');
	const list = [...S.convs.values()].sort((a, b) => b.lastTs - a.lastTs || b.lastId - a.lastId);
	ul.replaceChildren(...list.map((c) => {
		const li = document.createElement('li');
		li.className = 'conv' + (S.active?.kind === 'conv' && S.active.key === c.key ? ' active' : '');
		li.dataset.key = c.key;
		li.dataset.title = c.title;
		const dot = document.createElement('span');
		dot.className = 'dot' + (c.groupId != null ? ' group' : S.presence.get(c.with) ? ' online' : '');
		const name = document.createElement('span');
		name.className = 'name';
		name.textContent = c.title;
		const unread = document.createElement('span');
		unread.className = 'unread';
		unread.textContent = c.unread > 0 ? String(c.unread) : '';
		const pv = document.createElement('span');
		pv.className = 'preview';
		pv.textContent = c.preview;
		li.append(dot, name, unread, pv);
		li.addEventListener('click', () => openConv(c.key));
		return li;
	}));
	for (const li of $('#rooms').children)
		li.classList.toggle('active', S.active?.kind === 'room' && S.active.room === li.dataset.room);
}

// ---- a thread -------------------------------------------------------------------------------
function threadOf(key) {
	let t = S.threads.get(key);
	if (!t) {
		t = { msgs: new Map(), pending: new Map(), nextBefore: null, loaded: false };
		S.threads.set(key, t);
	}
	return t;
}

function target(key) {
	return key.startsWith('g:') ? { groupId: Number(key.slice(2)) } : { to: key.slice(2) };
}

async function openConv(key) {
	convOf(key);
	S.active = { kind: 'conv', key };
	$('#empty').hidden = true;
	$('#room').hidden = true;
	$('#thread').hidden = false;
	renderConvs();
	renderHead();
	const t = threadOf(key);
	renderThread(true);
	refreshPresence();
	if (!t.loaded) {
		await loadOlder(key, true);
		await loadReceipts(key);
	}
	markRead(key);
	$('#compose').focus();
}

async function loadOlder(key, first = false) {
	const t = threadOf(key);
	const q = { ...target(key), limit: PAGE };
	if (!first) {
		if (t.nextBefore == null)
			return;
		q.before = t.nextBefore;
	}
	q.with = q.to;
	delete q.to;
	const scroller = $('#scroller');
	const fromBottom = scroller.scrollHeight - scroller.scrollTop;
	const page = await S.client.history(q);
	for (const m of page.messages)
		addMsg(key, m);
	t.nextBefore = page.next_before;
	t.loaded = true;
	if (S.active?.key !== key)
		return;
	renderThread(first);
	if (!first)
		scroller.scrollTop = scroller.scrollHeight - fromBottom;
}

// Receipts of my newest message in the thread: everything up to it is at least that far.
async function loadReceipts(key) {
	const t = threadOf(key);
	const mine = [...t.msgs.values()].filter((m) => m.from === S.me).sort((a, b) => b.id - a.id)[0];
	if (!mine)
		return;
	try {
		const r = await S.client.receipts(mine.id);
		const others = (l) => l.filter((u) => u !== S.me).length > 0;
		if (others(r.read))
			raiseFloor(key, 'read', mine.id);
		else if (others(r.delivered))
			raiseFloor(key, 'delivered', mine.id);
		renderThread();
	} catch { /* ticks stay single */ }
}

function addMsg(key, m) {
	const t = threadOf(key);
	t.msgs.set(m.id, m);
	S.keyOfMsg.set(m.id, key);
	if (m.client_msg_id)
		t.pending.delete(m.client_msg_id);
}

function raiseFloor(key, status, id) {
	const f = S.floors.get(key) ?? { delivered: 0, read: 0 };
	if (status === 'read')
		f.read = Math.max(f.read, id);
	f.delivered = Math.max(f.delivered, id, f.read);
	S.floors.set(key, f);
}

function statusOf(key, m) {
	const f = S.floors.get(key);
	if (f && m.id <= f.read)
		return 'read';
	if (f && m.id <= f.delivered)
		return 'delivered';
	return 'sent';
}

function renderHead() {
	if (S.active?.kind !== 'conv')
		return;
	const c = S.convs.get(S.active.key);
	if (!c)
		return;
	$('#thread-title').textContent = c.title;
	const dot = $('#thread-presence');
	dot.className = 'dot' + (c.groupId != null ? ' group' : S.presence.get(c.with) ? ' online' : '');
	dot.dataset.online = c.with && S.presence.get(c.with) ? 'true' : 'false';
	const ty = S.typing.get(c.key);
	$('#typing').textContent = ty && ty.until > Date.now() ? `${ty.who} is typing…` : '';
}

function msgItem(key, m, pending) {
	const li = document.createElement('li');
	const mine = m.from === S.me;
	li.className = 'msg ' + (mine ? 'mine' : 'theirs');
	if (m.id)
		li.dataset.id = m.id;
	li.dataset.cmid = m.client_msg_id ?? '';
	if (key.startsWith('g:') && !mine) {
		const from = document.createElement('div');
		from.className = 'from';
		from.textContent = m.from;
		li.append(from);
	}
	const text = document.createElement('div');
	text.className = 'text';
	text.textContent = m.content;
	const meta = document.createElement('div');
	meta.className = 'meta';
	meta.textContent = m.ts ? new Date(m.ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '';
	if (mine) {
		const st = pending ? (m.failed ? 'failed' : 'sending') : statusOf(key, m);
		li.dataset.status = st;
		const ticks = document.createElement('span');
		ticks.className = 'ticks ' + st;
		ticks.textContent = { sending: '🕓', failed: '⚠', sent: '✓', delivered: '✓✓', read: '✓✓' }[st];
		ticks.title = st;
		meta.append(ticks);
	}
	li.append(text, meta);
	return li;
}

function renderThread(toBottom = false) {
	if (S.active?.kind !== 'conv')
		return;
	const key = S.active.key;
	const t = threadOf(key);
	const sc = $('#scroller');
	const atBottom = toBottom || sc.scrollHeight - sc.scrollTop - sc.clientHeight < 40;
	const msgs = [...t.msgs.values()].sort((a, b) => a.id - b.id);
	$('#messages').replaceChildren(...msgs.map((m) => msgItem(key, m, false)),
		...[...t.pending.values()].map((m) => msgItem(key, m, true)));
	$('#older').hidden = !t.loaded || t.nextBefore == null;
	if (atBottom)
		sc.scrollTop = sc.scrollHeight;
}

// Read receipts for what the open thread shows, once the page is looked at.
function markRead(key) {
	clearTimeout(S.readTimer);
	S.readTimer = setTimeout(() => {
		if (S.active?.key !== key || document.hidden)
			return;
		const c = S.convs.get(key);
		const t = threadOf(key);
		const theirs = [...t.msgs.values()].filter((m) => m.from !== S.me).map((m) => m.id);
		const newest = Math.max(0, ...theirs);
		if (newest > (t.readUpTo ?? 0)) {
			t.readUpTo = newest;
			S.client.markRead(newest).catch(() => { t.readUpTo = 0; });
		}
		if (c && c.unread) {
			c.unread = 0;
			renderConvs();
		}
	}, 100);
}

async function send(text) {
	const key = S.active.key;
	const t = threadOf(key);
	const cmid = 'w-' + Date.now().toString(36) + '-' + Math.random().toString(36).slice(2, 8);
	const m = { from: S.me, content: text, client_msg_id: cmid, ts: Date.now(), ...target(key) };
	t.pending.set(cmid, m);
	renderThread(true);
	try {
		const r = await S.client.send({ ...target(key), content: text, clientMsgId: cmid });
		if (t.pending.has(cmid)) {
			// The ack came before our own copy of the message: show it as sent already.
			t.pending.delete(cmid);
			const real = { id: r.server_msg_id, from: S.me, content: text, client_msg_id: cmid,
				ts: m.ts, to: m.to ?? null, group_id: m.groupId ?? null };
			if (!t.msgs.has(real.id))
				addMsg(key, real);
			bump(key, real, false);
		}
	} catch (e) {
		m.failed = true;
		showError($('#app-error'), e);
	}
	renderThread();
}

// A conversation's summary after message m (counted unread when it is new and not ours).
function bump(key, m, count) {
	const c = convOf(key);
	if (m.id <= c.lastId)
		return;
	c.lastId = m.id;
	c.lastTs = m.ts;
	c.preview = preview(m);
	const open = S.active?.kind === 'conv' && S.active.key === key && !document.hidden;
	if (count && m.from !== S.me && !open)
		c.unread++;
	renderConvs();
}

// ---- events ---------------------------------------------------------------------------------
function onMessage(m) {
	const key = convKey(m);
	const t = threadOf(key);
	if (t.loaded || t.pending.has(m.client_msg_id))
		addMsg(key, m);
	else
		S.keyOfMsg.set(m.id, key);
	bump(key, m, true);
	if (m.from !== S.me) {
		const ty = S.typing.get(key);
		if (ty && ty.who === m.from)
			S.typing.delete(key);
		if (S.active?.key === key)
			markRead(key);
		else
			S.client.markDelivered(m.id).catch(() => {});
	}
	if (S.active?.key === key) {
		renderThread();
		renderHead();
	}
}

function onReceipt(ev) {
	if (ev.by === S.me)
		return;   // my own other devices
	const key = S.keyOfMsg.get(ev.message_id) ?? 'u:' + ev.by;
	raiseFloor(key, ev.status, ev.message_id);
	if (S.active?.key === key)
		renderThread();
}

function onTyping(ev) {
	if (ev.from === S.me)
		return;
	const key = ev.group_id != null ? 'g:' + ev.group_id : 'u:' + ev.from;
	S.typing.set(key, { who: ev.from, until: Date.now() + TYPING_SHOW_MS });
	renderHead();
	setTimeout(renderHead, TYPING_SHOW_MS + 50);
}

function onPresence(ev) {
	S.presence.set(ev.user, ev.online);
	renderConvs();
	renderHead();
}

function onGroup(ev) {
	const key = 'g:' + ev.group_id;
	if (ev.action === 'member_removed' && ev.user === S.me) {
		S.convs.delete(key);
		if (S.active?.key === key) {
			S.active = null;
			$('#thread').hidden = true;
			$('#empty').hidden = false;
		}
	} else {
		const c = convOf(key);
		c.lastTs = Math.max(c.lastTs, Date.now());
		if (!S.groups.has(ev.group_id) || S.groups.get(ev.group_id).startsWith('group '))
			groupName(ev.group_id);
	}
	renderConvs();
}

function onReset() {
	S.threads.clear();
	S.floors.clear();
	loadConversations().catch(() => {});
	if (S.active?.kind === 'conv')
		openConv(S.active.key);
}

// ---- rooms ----------------------------------------------------------------------------------
async function joinRoom(room) {
	if (!S.rooms.has(room)) {
		S.rooms.set(room, []);
		// The last comments before we joined, then live ones as 'room' events.
		try {
			const page = await S.client.request('GET', '/rooms/' + encodeURIComponent(room) + '/messages',
				{ query: { after: 0, limit: 50 } });
			for (const ev of page.events ?? [])
				onRoom(ev, false);
		} catch { /* an empty start */ }
		await S.client.joinRoom(room);
		renderRooms();
	}
	openRoom(room);
}

function renderRooms() {
	$('#rooms').replaceChildren(...[...S.rooms.keys()].map((room) => {
		const li = document.createElement('li');
		li.className = 'room-item';
		li.dataset.room = room;
		const dot = document.createElement('span');
		dot.className = 'dot none';
		const name = document.createElement('span');
		name.className = 'name';
		name.textContent = '# ' + room;
		li.append(dot, name);
		li.addEventListener('click', () => openRoom(room));
		return li;
	}));
	renderConvs();
}

function openRoom(room) {
	S.active = { kind: 'room', room };
	$('#empty').hidden = true;
	$('#thread').hidden = true;
	$('#room').hidden = false;
	$('#room-title').textContent = '# ' + room;
	renderConvs();
	renderRoom();
	$('#room-text').focus();
}

function onRoom(ev, render = true) {
	const list = S.rooms.get(ev.room);
	if (!list || list.some((c) => c.id === ev.comment.id))
		return;
	list.push(ev.comment);
	list.sort((a, b) => a.id - b.id);
	if (list.length > ROOM_KEEP)
		list.splice(0, list.length - ROOM_KEEP);
	if (render && S.active?.kind === 'room' && S.active.room === ev.room)
		renderRoom();
}

function renderRoom() {
	const sc = $('#room-scroller');
	const atBottom = sc.scrollHeight - sc.scrollTop - sc.clientHeight < 40;
	$('#room-messages').replaceChildren(...S.rooms.get(S.active.room).map((c) => {
		const li = document.createElement('li');
		li.className = 'room-msg';
		li.dataset.id = c.id;
		const from = document.createElement('span');
		from.className = 'from';
		from.textContent = c.user;
		const text = document.createElement('span');
		text.className = 'text';
		text.textContent = c.text;
		li.append(from, text);
		return li;
	}));
	if (atBottom)
		sc.scrollTop = sc.scrollHeight;
}

// ---- wiring ---------------------------------------------------------------------------------
function wire() {
	$('#signin').addEventListener('submit', async (e) => {
		e.preventDefault();
		showError($('#signin-error'), null);
		localStorage.setItem('parley-web:longpoll', $('#signin-longpoll').checked ? '1' : '0');
		try {
			await signIn($('#signin-user').value.trim());
		} catch (err) {
			$('#signin-screen').hidden = false;
			$('#app').hidden = true;
			showError($('#signin-error'), err);
		}
	});
	for (const b of document.querySelectorAll('#signin .quick button'))
		b.addEventListener('click', () => { $('#signin-user').value = b.dataset.user; });
	$('#signin-longpoll').checked = forcedLongpoll();
	$('#signout').addEventListener('click', signOut);
	$('#force-longpoll').addEventListener('change', (e) => {
		localStorage.setItem('parley-web:longpoll', e.target.checked ? '1' : '0');
		if (new URLSearchParams(location.search).has('transport'))
			history.replaceState(null, '', location.pathname);   // the switch decides from now on
		// The same user, device and stored cursor on the other transport: nothing is replayed twice.
		start().catch((err) => showError($('#app-error'), err));
	});
	$('#new-chat').addEventListener('submit', (e) => {
		e.preventDefault();
		const u = $('#new-chat-user').value.trim();
		if (u && u !== S.me) {
			$('#new-chat-user').value = '';
			openConv('u:' + u);
			refreshPresence();
		}
	});
	$('#group-form').addEventListener('submit', async (e) => {
		e.preventDefault();
		showError($('#app-error'), null);
		const name = $('#group-name').value.trim();
		const members = $('#group-members').value.split(/[\s,]+/).filter(Boolean);
		try {
			const id = await S.client.createGroup(name, members);
			S.groups.set(id, name);
			$('#group-name').value = '';
			$('#group-members').value = '';
			$('#new-group').open = false;
			const c = convOf('g:' + id);
			c.title = name;
			c.lastTs = Date.now();
			openConv('g:' + id);
		} catch (err) {
			showError($('#app-error'), err);
		}
	});
	$('#join-room').addEventListener('submit', (e) => {
		e.preventDefault();
		const room = $('#room-name').value.trim();
		$('#room-name').value = '';
		joinRoom(room).catch((err) => showError($('#app-error'), err));
	});
	$('#leave-room').addEventListener('click', () => {
		const room = S.active.room;
		S.client.leaveRoom(room);
		S.rooms.delete(room);
		S.active = null;
		$('#room').hidden = true;
		$('#empty').hidden = false;
		renderRooms();
	});
	$('#older').addEventListener('click', () => loadOlder(S.active.key).catch((err) => showError($('#app-error'), err)));
	$('#composer').addEventListener('submit', (e) => {
		e.preventDefault();
		const text = $('#compose').value.trim();
		if (!text)
			return;
		$('#compose').value = '';
		send(text);
	});
	$('#compose').addEventListener('input', () => {
		if (S.active?.kind !== 'conv' || !$('#compose').value || Date.now() - S.lastTypingSent < TYPING_SEND_MS)
			return;
		S.lastTypingSent = Date.now();
		S.client.typing(target(S.active.key)).catch(() => {});
	});
	$('#room-composer').addEventListener('submit', (e) => {
		e.preventDefault();
		const text = $('#room-text').value.trim();
		if (!text)
			return;
		$('#room-text').value = '';
		S.client.roomMessage(S.active.room, text).catch((err) => showError($('#app-error'), err));
	});
	document.addEventListener('visibilitychange', () => {
		if (!document.hidden && S.active?.kind === 'conv')
			markRead(S.active.key);
	});
}

wire();
// A reload keeps the tab signed in (the token comes from /demo/token again).
const again = sessionStorage.getItem('parley-web:user');
if (again)
	signIn(again).catch((e) => showError($('#signin-error'), e));
