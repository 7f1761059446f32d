// parley.js - the Parley chat client: WebSocket with long-poll fallback, one event stream, one cursor.
//
// One ES module, no build step, no dependencies; browsers and Node 20 (built-in fetch; pass a
// WebSocket constructor, e.g. the npm "ws" package, where there is no global one). The wire contract
// is docs/protocol.md and docs/websocket.md; contrib/js/README.md documents this API.

/** A failed call: `code` is the contract's error code (or "network", "closed", "timeout"). */
export class ParleyError extends Error {
	constructor(code, message, status = 0, retryAfter = 0) {
		super(message || code);
		this.name = 'ParleyError';
		this.code = code;
		this.status = status;
		this.retryAfter = retryAfter;
	}
}

/** Storage that lives as long as the page or process (the default outside browsers). */
export function memoryStorage() {
	const m = new Map();
	return {
		get: (k) => (m.has(k) ? m.get(k) : null),
		set: (k, v) => { m.set(k, String(v)); },
		remove: (k) => { m.delete(k); },
	};
}

/** Storage on a Web Storage object (`localStorage` by default: the default in browsers). */
export function webStorage(store = globalThis.localStorage) {
	return {
		get: (k) => store.getItem(k),
		set: (k, v) => store.setItem(k, String(v)),
		remove: (k) => store.removeItem(k),
	};
}

// localStorage when the page may use it (reading it throws where the browser forbids storage).
function defaultStorage() {
	try {
		if (globalThis.localStorage)
			return webStorage(globalThis.localStorage);
	} catch {
		// fall through: cookies and site data blocked
	}
	return memoryStorage();
}

const OPEN = 1;
// Errors of a send that a retry cannot fix: the promise is rejected. Others are retried.
const FINAL_CODES = new Set(['bad_request', 'forbidden', 'not_found', 'payload_too_large',
	'unauthorized', 'method_not_allowed']);

const DEFAULTS = {
	transports: ['websocket', 'longpoll'],
	authMode: 'frame',         // 'frame' (auth frame) or 'url' (?access_token=)
	storageKey: 'parley:',
	pollTimeout: 25,           // s, the long poll's timeout parameter
	pollLimit: 100,
	backoffMin: 250,           // ms
	backoffMax: 30000,
	backoffFactor: 2,
	fallbackAfter: 2,          // WebSocket failures in a row before long polling
	stableAfter: 10000,        // ms a WebSocket must stay up to count as working
	upgradeInterval: 30000,    // ms between tries to go back to the WebSocket (jittered)
	openTimeout: 10000,        // ms from new WebSocket() to "ready"
	ackTimeout: 20000,         // ms without an ack before the WebSocket is taken for dead
	gapTimeout: 2000,          // ms an out-of-order event waits before a sync asks for the gap
	pingInterval: 20000,       // ms between {"type":"ping"}; silence for 2.5x that drops the socket
	tokenMargin: 30,           // s before a token's exp when getToken() is asked for a new one
};

// Milliseconds to wait before attempt n (0-based): exponential, capped, "equal jitter" (half fixed,
// half random) so that clients cut off together do not come back together.
function backoff(o, n) {
	const d = Math.min(o.backoffMax, o.backoffMin * Math.pow(o.backoffFactor, n));
	return d / 2 + Math.random() * d / 2;
}

function sleep(ms, signal) {
	return new Promise((resolve) => {
		const t = setTimeout(resolve, ms);
		signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
	});
}

// The claims of a JWT, unverified (only to read sub, dev and exp; the server verifies).
function claims(token) {
	try {
		const p = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
		const text = typeof atob === 'function' ? atob(p) : Buffer.from(p, 'base64').toString();
		return JSON.parse(decodeURIComponent(escape(text)));
	} catch {
		return {};
	}
}

function randomId(prefix) {
	const b = new Uint8Array(12);
	if (globalThis.crypto?.getRandomValues)
		globalThis.crypto.getRandomValues(b);
	else // Node 18 has no global crypto: ids need only be unique per sender, not secret
		for (let i = 0; i < b.length; i++)
			b[i] = Math.floor(Math.random() * 256);
	return prefix + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

function isAbort(e) {
	return e && (e.name === 'AbortError' || e.code === 'aborted');
}

/**
 * A Parley client. `new ParleyClient({url, getToken})`, then `connect()`. Events: see `on()`.
 */
export class ParleyClient {
	constructor(opts = {}) {
		this.opts = { ...DEFAULTS, ...opts };
		const o = this.opts;
		const base = o.url ?? globalThis.location?.origin;
		if (!base)
			throw new TypeError('url is required outside a browser');
		this.url = base.replace(/\/+$/, '');
		this.wsUrl = o.wsUrl ?? this.url.replace(/^http/, 'ws') + '/ws';
		if (typeof o.getToken === 'function')
			this._getToken = o.getToken;
		else if (typeof o.token === 'string')
			this._getToken = () => o.token;
		else
			throw new TypeError('getToken (or token) is required');
		this._WS = o.WebSocket ?? globalThis.WebSocket;
		this._fetch = o.fetch ?? globalThis.fetch.bind(globalThis);
		this.transports = o.transports.filter((t) => t === 'longpoll' || (t === 'websocket' && this._WS));
		if (this.transports.length === 0)
			throw new TypeError('no usable transport (no WebSocket constructor?)');
		this.storage = o.storage ?? defaultStorage();

		this.user = null;
		this.deviceId = o.deviceId ?? null;
		this.cursor = null;        // highest seq processed; null until known
		this.transport = null;     // 'websocket' | 'longpoll' | null while (re)connecting
		this._handlers = new Map();
		this._token = null;
		this._tokenRefused = false;  // the server refused _token: getToken({force: true}) next
		this._closed = false;
		this._started = null;
		this._mode = this.transports[0];
		this._wsFailures = 0;
		this._ws = null;           // the WebSocket that delivers (after its "ready")
		this._pollAbort = null;
		this._outbox = new Map();  // client_msg_id -> pending send, in order of send()
		this._pendingEvents = new Map();
		this._gapTimer = null;
		this._rooms = new Map();   // room -> {lastId, seen:Set, abort}
		this._timers = new Set();
		this._flushing = false;
	}

	// ---- events ----------------------------------------------------------------------------

	/**
	 * Listen: 'message', 'receipt', 'group', 'typing', 'presence', 'room', 'reset', 'event' (every
	 * event), 'transport', 'error'. Returns a function that removes the listener.
	 */
	on(type, fn) {
		if (!this._handlers.has(type))
			this._handlers.set(type, new Set());
		this._handlers.get(type).add(fn);
		return () => this.off(type, fn);
	}

	off(type, fn) {
		this._handlers.get(type)?.delete(fn);
	}

	once(type, fn) {
		const off = this.on(type, (...a) => { off(); fn(...a); });
		return off;
	}

	_emit(type, ...args) {
		for (const fn of [...(this._handlers.get(type) ?? [])]) {
			try {
				fn(...args);
			} catch (e) {
				// A listener's bug must not stop the stream; report it where it can be seen.
				setTimeout(() => { throw e; });
			}
		}
	}

	// ---- life cycle --------------------------------------------------------------------------

	/** Start; resolves once a transport is up (it keeps trying meanwhile, never rejects but on close). */
	connect() {
		if (this._started)
			return this._started;
		this._started = (async () => {
			// The token names the user whose cursor to load: wait for one (a login service that
			// is down for a moment is retried like a network).
			for (let n = 0; ; n++) {
				try {
					await this._auth();
					break;
				} catch (e) {
					if (this._closed)
						throw new ParleyError('closed', 'client closed');
					this._emit('error', e);
					await sleep(backoff(this.opts, n));
				}
			}
			await this._loadCursor();
			const up = new Promise((resolve, reject) => {
				this._upResolve = resolve;
				this._upReject = reject;
			});
			this._supervise().catch((e) => this._emit('error', e));
			return up;
		})();
		return this._started;
	}

	/** Stop everything; unacknowledged sends are rejected with code "closed". */
	close() {
		if (this._closed)
			return;
		this._closed = true;
		this._pollAbort?.abort();
		for (const r of this._rooms.values())
			r.abort?.abort();
		if (this._ws)
			this._dropWs(this._ws, 'closed', true);
		for (const t of this._timers)
			clearTimeout(t);
		this._timers.clear();
		clearTimeout(this._gapTimer);
		for (const e of this._outbox.values()) {
			clearTimeout(e.timer);
			e.reject(new ParleyError('closed', 'client closed'));
		}
		this._outbox.clear();
		this._upReject?.(new ParleyError('closed', 'client closed'));
		this._setTransport(null);
	}

	_later(ms, fn) {
		const t = setTimeout(() => { this._timers.delete(t); fn(); }, ms);
		this._timers.add(t);
		return t;
	}

	_setTransport(t) {
		if (this.transport === t)
			return;
		this.transport = t;
		if (t) {
			this._upResolve?.(t);
			this._upResolve = null;
		}
		this._emit('transport', t);
	}

	// The supervisor: one transport at a time, WebSocket preferred, long polling after
	// fallbackAfter failed or short-lived WebSockets in a row, until an upgrade try succeeds.
	async _supervise() {
		let attempt = 0;
		while (!this._closed) {
			let closed;
			if (this._mode === 'websocket') {
				try {
					closed = (await this._openWs()).closed;
				} catch (e) {
					if (this._closed)
						return;
					this._wsFailed();
					if (this._mode === 'websocket')
						await sleep(backoff(this.opts, attempt++));
					continue;
				}
			} else {
				const h = await this._longPoll();
				if (!h)
					continue;
				closed = h.closed;
			}
			attempt = 0;
			const up = await closed;
			if (this._closed)
				return;
			if (up.uptime >= this.opts.stableAfter) {
				this._wsFailures = 0;
				await sleep(backoff(this.opts, 0));
			} else {
				this._wsFailed();
				if (this._mode === 'websocket')
					await sleep(backoff(this.opts, attempt++));
			}
		}
	}

	_wsFailed() {
		this._wsFailures++;
		if (this._wsFailures >= this.opts.fallbackAfter && this.transports.includes('longpoll'))
			this._mode = 'longpoll';
	}

	// ---- tokens and HTTP ---------------------------------------------------------------------

	// The current token, asking getToken() for one when there is none, it is about to expire, or
	// the server refused it (force).
	async _auth(force = false) {
		force = force || this._tokenRefused;
		const now = Date.now() / 1000;
		if (!force && this._token && !(this._exp && this._exp - this.opts.tokenMargin < now))
			return this._token;
		const t = await this._getToken({ force });
		if (typeof t !== 'string' || !t)
			throw new ParleyError('unauthorized', 'getToken() gave no token');
		this._tokenRefused = false;
		const c = claims(t);
		this._token = t;
		this._exp = typeof c.exp === 'number' ? c.exp : 0;
		if (c.sub)
			this.user = c.sub;
		if (!this.deviceId)
			this.deviceId = c.dev ?? await this._storedDevice();
		return t;
	}

	async _storedDevice() {
		const k = this.opts.storageKey + 'device';
		let d = await this.storage.get(k);
		if (!d) {
			d = randomId('js-');
			await this.storage.set(k, d);
		}
		return d;
	}

	_cursorKey() {
		return this.opts.storageKey + 'cursor:' + this.user + ':' + this.deviceId;
	}

	async _loadCursor() {
		if (this.opts.cursor != null) {
			this.cursor = this.opts.cursor;
			return;
		}
		const v = await this.storage.get(this._cursorKey());
		this.cursor = v == null || v === '' ? null : Number(v);
	}

	_saveCursor() {
		try {
			const r = this.storage.set(this._cursorKey(), this.cursor);
			r?.catch?.(() => {});
		} catch {
			// a full or refused storage costs a replay after a restart, nothing else
		}
	}

	/** One HTTP call of the API; resolves to the JSON answer (null for 204), rejects a ParleyError. */
	async request(method, path, { query, body, signal } = {}, retried = false) {
		const token = await this._auth();
		let url = this.url + path;
		if (query) {
			const q = Object.entries(query).filter(([, v]) => v != null)
				.map(([k, v]) => encodeURIComponent(k) + '=' + encodeURIComponent(v)).join('&');
			if (q)
				url += '?' + q;
		}
		const headers = { Authorization: 'Bearer ' + token };
		if (body !== undefined)
			headers['Content-Type'] = 'application/json';
		let res;
		try {
			res = await this._fetch(url, {
				method, headers, signal,
				body: body === undefined ? undefined : JSON.stringify(body),
			});
		} catch (e) {
			if (isAbort(e))
				throw e;
			throw new ParleyError('network', String(e?.cause?.message ?? e?.message ?? e));
		}
		if (res.status === 401 && !retried) {
			await res.text().catch(() => {});
			await this._auth(true);
			return this.request(method, path, { query, body, signal }, true);
		}
		const text = await res.text();
		let data = null;
		try {
			data = text ? JSON.parse(text) : null;
		} catch {
			data = null;
		}
		if (!res.ok) {
			const err = data?.error ?? {};
			throw new ParleyError(err.code ?? 'http_' + res.status, err.message ?? res.statusText,
				res.status, Number(res.headers.get('Retry-After')) || 0);
		}
		return data;
	}

	// ---- the event stream ----------------------------------------------------------------------

	// Take one event from either transport: ephemeral events at once; durable ones once each, in
	// seq order (an early one waits for the gap to fill; a gap that stays asks for a sync).
	_ingest(ev) {
		if (!ev || typeof ev !== 'object')
			return;
		if (ev.type === 'room_message') {
			this._ingestRoom(ev);
			return;
		}
		if (typeof ev.seq !== 'number') {
			this._dispatch(ev);
			return;
		}
		if (this.cursor == null)
			this.cursor = ev.seq - 1;
		if (ev.seq <= this.cursor)
			return;
		if (ev.seq > this.cursor + 1) {
			this._pendingEvents.set(ev.seq, ev);
			this._armGap();
			return;
		}
		this._deliver(ev);
		while (this._pendingEvents.has(this.cursor + 1)) {
			const next = this._pendingEvents.get(this.cursor + 1);
			this._pendingEvents.delete(this.cursor + 1);
			this._deliver(next);
		}
		for (const s of this._pendingEvents.keys())
			if (s <= this.cursor)
				this._pendingEvents.delete(s);
		if (this._pendingEvents.size === 0) {
			clearTimeout(this._gapTimer);
			this._gapTimer = null;
		}
	}

	_deliver(ev) {
		this.cursor = ev.seq;
		this._saveCursor();
		this._dispatch(ev);
	}

	_armGap() {
		if (this._gapTimer)
			return;
		this._gapTimer = setTimeout(() => {
			this._gapTimer = null;
			if (this._pendingEvents.size === 0)
				return;
			// On the WebSocket a sync replays from the cursor; a long poll asks from it anyway.
			if (this._wsOpen())
				this._wsSend({ type: 'sync', after: this.cursor });
			this._armGap();
		}, this.opts.gapTimeout);
	}

	// The server pruned events this client had not seen: skip to what is kept, tell the app.
	_reset(oldest) {
		if (typeof oldest === 'number' && (this.cursor == null || this.cursor < oldest - 1)) {
			this.cursor = oldest - 1;
			this._saveCursor();
			for (const s of this._pendingEvents.keys())
				if (s <= this.cursor)
					this._pendingEvents.delete(s);
		}
		this._emit('reset', { oldest_seq: oldest });
	}

	_dispatch(ev) {
		const kind = {
			new_message: 'message', message_status: 'receipt', group_update: 'group',
			typing: 'typing', presence: 'presence',
		}[ev.type];
		if (kind)
			this._emit(kind, ev);
		this._emit('event', ev);
	}

	_ingestRoom(ev) {
		const r = this._rooms.get(ev.room);
		const id = ev.comment?.id;
		if (!r || typeof id !== 'number')
			return;
		if (r.seen.has(id) || (r.floor != null && id <= r.floor))
			return;
		r.seen.add(id);
		if (r.seen.size > 1000)
			r.seen.delete(r.seen.values().next().value);
		if (r.lastId == null || id > r.lastId)
			r.lastId = id;
		this._emit('room', ev);
		this._emit('event', ev);
	}

	// ---- WebSocket ---------------------------------------------------------------------------

	_wsOpen() {
		return this._ws != null && this._ws.readyState === OPEN;
	}

	_wsSend(obj, ws = this._ws) {
		try {
			ws.send(JSON.stringify(obj));
			return true;
		} catch {
			return false;
		}
	}

	// Open a WebSocket and wait for "ready"; then it becomes the transport and the promise
	// resolves to {closed}, a promise settled with {uptime} when that socket is gone.
	_openWs() {
		return new Promise((resolve, reject) => {
			let ws;
			let done = false;
			const fail = (why) => {
				if (done)
					return;
				done = true;
				clearTimeout(timer);
				try {
					if (typeof ws?.terminate === 'function')
						ws.terminate();
					else
						ws?.close();
				} catch { /* already gone */ }
				reject(why instanceof Error ? why : new ParleyError('network', String(why)));
			};
			const timer = setTimeout(() => fail(new ParleyError('timeout', 'no ready')),
				this.opts.openTimeout);
			this._auth().then((token) => {
				if (this._closed)
					return fail(new ParleyError('closed', 'client closed'));
				let url = this.wsUrl;
				if (this.opts.authMode === 'url')
					url += (url.includes('?') ? '&' : '?') + 'access_token=' + encodeURIComponent(token);
				try {
					ws = new this._WS(url, 'parley.v1');
				} catch (e) {
					return fail(e); // a bad URL, a blocked port: a failure like any other
				}
				ws.onopen = () => {
					if (this.opts.authMode !== 'url')
						this._wsSend({ type: 'auth', token }, ws);
				};
				ws.onerror = () => {};
				ws.onclose = (e) => {
					if (e?.code === 1008)
						this._tokenRefused = true;
					fail(new ParleyError(e?.code === 1008 ? 'unauthorized' : 'network',
						'WebSocket closed before ready (' + (e?.code ?? '?') + ')'));
				};
				ws.onmessage = (e) => {
					let m;
					try {
						m = JSON.parse(typeof e.data === 'string' ? e.data : String(e.data));
					} catch {
						return;
					}
					if (m.type === 'error' && m.code === 'unauthorized')
						this._tokenRefused = true;
					if (m.type !== 'ready' || done)
						return;
					done = true;
					clearTimeout(timer);
					if (this._closed) {
						ws.close();
						return reject(new ParleyError('closed', 'client closed'));
					}
					resolve({ closed: this._attachWs(ws, m) });
				};
			}, fail);
		});
	}

	// Make a ready WebSocket the transport (synchronously, so no frame after "ready" is missed):
	// stop long polling, sync from the cursor, resend what is unacknowledged, rejoin rooms.
	_attachWs(ws, ready) {
		this._mode = 'websocket';
		this._pollAbort?.abort();
		this._ws = ws;
		const since = Date.now();
		let lastHeard = since;
		let closedResolve;
		const closed = new Promise((r) => { closedResolve = r; });
		ws._parleyDone = (uptime) => closedResolve({ uptime });
		ws._parleyClosed = closed;
		ws._parleySince = since;
		if (this.cursor == null)
			this.cursor = ready.last_seq ?? 0;
		ws.onmessage = (e) => {
			lastHeard = Date.now();
			let m;
			try {
				m = JSON.parse(typeof e.data === 'string' ? e.data : String(e.data));
			} catch {
				return;
			}
			this._onFrame(m, ws);
		};
		ws.onclose = () => this._dropWs(ws, 'closed');
		ws.onerror = () => {};
		const beat = setInterval(() => {
			if (Date.now() - lastHeard > this.opts.pingInterval * 2.5)
				return this._dropWs(ws, 'silent');
			this._wsSend({ type: 'ping' }, ws);
		}, this.opts.pingInterval);
		ws._parleyBeat = beat;
		this._wsSend({ type: 'sync', after: this.cursor }, ws);
		for (const [room, r] of this._rooms) {
			r.abort?.abort();
			r.abort = null;
			this._wsSend({ type: 'join_room', room }, ws);
			if (r.lastId != null)
				this._roomCatchUp(room, r);
		}
		this._setTransport('websocket');
		this._flush();
		return closed;
	}

	// The socket is gone (closed, silent, or given up on): sends on it go back to the outbox.
	_dropWs(ws, why, quiet = false) {
		if (ws._parleyDropped)
			return;
		ws._parleyDropped = true;
		clearInterval(ws._parleyBeat);
		ws.onclose = ws.onmessage = null;
		try {
			if (typeof ws.terminate === 'function')
				ws.terminate();
			else if (ws.readyState <= OPEN)
				ws.close(1000);
		} catch { /* already gone */ }
		if (this._ws === ws) {
			this._ws = null;
			if (!quiet)
				this._setTransport(null);
		}
		for (const e of this._outbox.values()) {
			if (e.sock === ws) {
				clearTimeout(e.timer);
				e.sock = null;
				e.via = null;
			}
		}
		ws._parleyDone?.(Date.now() - ws._parleySince, why);
	}

	_onFrame(m, ws) {
		switch (m.type) {
		case 'ack': {
			const e = this._outbox.get(m.client_msg_id);
			if (!e || e.sock !== ws)
				return;
			clearTimeout(e.timer);
			if (m.status === 'success') {
				this._settle(e, { server_msg_id: m.server_msg_id, seq: m.seq,
					duplicate: !!m.duplicate });
			} else {
				this._sendError(e, new ParleyError(m.error?.code ?? 'internal', m.error?.message));
			}
			return;
		}
		case 'reset':
			this._reset(m.oldest_seq);
			return;
		case 'pong':
		case 'ready':
			return;
		case 'history':
			return;
		case 'error':
			this._emit('error', new ParleyError(m.code, m.message));
			return;
		default:
			this._ingest(m);
		}
	}

	// ---- long polling ------------------------------------------------------------------------

	// Poll /sync until closed or a WebSocket upgrade took over (then resolve to {closed} of that
	// socket, as _openWs does); null when the loop ended otherwise.
	async _longPoll() {
		let attempt = 0;
		const upgrade = this.transports.includes('websocket') ? this._upgradeLoop() : null;
		for (const [room, r] of this._rooms)
			this._roomPoll(room, r);
		this._flush();
		// The first poll, and the first after an error, answers at once: the transport is up (and
		// connect() resolves) when the server answers, not when the first event or timeout comes.
		let answered = false;
		while (!this._closed && this._mode === 'longpoll') {
			const ac = new AbortController();
			this._pollAbort = ac;
			try {
				const first = this.cursor == null;
				const page = await this.request('GET', '/sync', {
					query: {
						device_id: this.deviceId,
						after: first ? undefined : this.cursor,
						limit: this.opts.pollLimit,
						timeout: first || !answered ? 0 : this.opts.pollTimeout,
					},
					signal: ac.signal,
				});
				if (this._closed)
					break;
				answered = true;
				if (this._mode === 'longpoll') {
					attempt = 0;
					this._setTransport('longpoll');
				}
				// An answer that raced an upgrade is still good: the WebSocket's replay repeats it.
				this._page(page, first);
				if (this._mode !== 'longpoll')
					break;
				this._flush();
			} catch (e) {
				if (isAbort(e) || this._closed || this._mode !== 'longpoll')
					break;
				answered = false;
				this._setTransport(null);
				const wait = e.retryAfter ? e.retryAfter * 1000 : backoff(this.opts, attempt++);
				await sleep(wait, ac.signal);
			}
		}
		this._pollAbort = null;
		upgrade?.stop();
		if (!this._closed && this._mode === 'websocket' && this._ws?._parleyClosed)
			return { closed: this._ws._parleyClosed };
		return null;
	}

	// One /sync answer: its reset, then its events in order.
	_page(page, first) {
		if (!page)
			return;
		if (page.reset)
			this._reset(page.oldest_seq);
		const events = Array.isArray(page.events) ? page.events : [];
		if (first && this.cursor == null) {
			const s = events.find((ev) => typeof ev.seq === 'number');
			this.cursor = s ? s.seq - 1 : (page.next ?? 0);
			this._saveCursor();
		}
		for (const ev of events)
			this._ingest(ev);
	}

	// Every upgradeInterval (jittered) try a WebSocket while long polling; a try that reaches
	// "ready" takes over (_attachWs stops the poll).
	_upgradeLoop() {
		const ac = new AbortController();
		(async () => {
			while (!ac.signal.aborted && !this._closed && this._mode === 'longpoll') {
				const i = this.opts.upgradeInterval;
				await sleep(i / 2 + Math.random() * i, ac.signal);
				if (ac.signal.aborted || this._closed || this._mode !== 'longpoll')
					return;
				try {
					await this._openWs();
					this._wsFailures = 0;
					return;
				} catch {
					// still no WebSocket: keep polling
				}
			}
		})();
		return { stop: () => ac.abort() };
	}

	// ---- sending -----------------------------------------------------------------------------

	/**
	 * Send a message: {to} or {groupId}, content, optional clientMsgId. Resolves with
	 * {server_msg_id, seq, duplicate, client_msg_id} once the server stored it; retried (same
	 * client_msg_id) across reconnects and transports until then.
	 */
	send({ to, groupId, group_id, content, clientMsgId } = {}) {
		const gid = groupId ?? group_id;
		const cmid = clientMsgId ?? randomId('m-');
		if (this._outbox.has(cmid))
			return this._outbox.get(cmid).promise;
		const body = { client_msg_id: cmid, content };
		if (gid != null)
			body.group_id = gid;
		else
			body.to = to;
		const e = { cmid, body, via: null, sock: null, timer: null, attempt: 0 };
		e.promise = new Promise((resolve, reject) => {
			e.resolve = resolve;
			e.reject = reject;
		});
		if (this._closed) {
			e.reject(new ParleyError('closed', 'client closed'));
			return e.promise;
		}
		this._outbox.set(cmid, e);
		this._flush();
		return e.promise;
	}

	/** Sends not acknowledged yet: [{client_msg_id, to|group_id, content}]. */
	get unacknowledged() {
		return [...this._outbox.values()].map((e) => ({ ...e.body }));
	}

	_settle(e, result) {
		clearTimeout(e.timer);
		if (this._outbox.get(e.cmid) !== e)
			return;
		this._outbox.delete(e.cmid);
		e.resolve({ ...result, client_msg_id: e.cmid });
	}

	// A refused send: final errors reject it, others (unavailable, rate limits) retry later.
	_sendError(e, err) {
		e.via = null;
		e.sock = null;
		if (FINAL_CODES.has(err.code) && err.code !== 'unauthorized') {
			this._outbox.delete(e.cmid);
			e.reject(err);
			return;
		}
		const wait = err.retryAfter ? err.retryAfter * 1000 : backoff(this.opts, e.attempt++);
		this._later(wait, () => this._flush());
	}

	// Hand every idle send to the transport that is up: all at once as frames on the WebSocket,
	// one after the other over HTTP (so they are stored in the order of send()).
	_flush() {
		if (this._closed)
			return;
		if (this._wsOpen()) {
			for (const e of this._outbox.values()) {
				if (e.via !== null)
					continue;
				e.via = 'ws';
				e.sock = this._ws;
				this._wsSend({ type: 'send_message', ...e.body });
				const ws = this._ws;
				e.timer = setTimeout(() => this._dropWs(ws, 'no ack'), this.opts.ackTimeout);
			}
			return;
		}
		if (this._mode === 'longpoll' && !this._flushing)
			this._flushHttp();
	}

	async _flushHttp() {
		this._flushing = true;
		try {
			for (;;) {
				if (this._closed || this._wsOpen())
					break;
				const e = [...this._outbox.values()].find((x) => x.via === null);
				if (!e)
					break;
				e.via = 'http';
				let r;
				try {
					r = await this.request('POST', '/messages', { body: e.body });
				} catch (err) {
					if (isAbort(err))
						break;
					this._sendError(e, err);
					if (this._outbox.has(e.cmid))
						break; // retried later by the timer _sendError set
					continue;
				}
				e.attempt = 0;
				this._settle(e, { server_msg_id: r.server_msg_id, seq: r.seq, duplicate: !!r.duplicate });
			}
		} finally {
			this._flushing = false;
		}
		// A send that came back while this loop ended goes to whatever transport is up now.
		if (!this._closed && [...this._outbox.values()].some((x) => x.via === null) && this._wsOpen())
			this._flush();
	}

	// ---- receipts, typing, groups, history, presence -------------------------------------------

	/** Mark everything up to messageId in its conversation read (implies delivered). */
	markRead(messageId) {
		return this._receipt(messageId, 'read');
	}

	/** Mark everything up to messageId in its conversation delivered. */
	markDelivered(messageId) {
		return this._receipt(messageId, 'delivered');
	}

	// On the WebSocket the frame has no answer: resolved once written. Over HTTP: once stored.
	async _receipt(id, status) {
		if (this._wsOpen() && this._wsSend({ type: status, message_id: id }))
			return;
		await this.request('POST', '/receipts', { body: { message_id: id, status } });
	}

	/** Tell the peer (to) or the group (groupId) that this user is typing. */
	async typing({ to, groupId, group_id } = {}) {
		const gid = groupId ?? group_id;
		const target = gid != null ? { group_id: gid } : { to };
		if (this._wsOpen() && this._wsSend({ type: 'typing', ...target }))
			return;
		await this.request('POST', '/typing', { body: target });
	}

	/** Create a group; resolves with its id. */
	async createGroup(name, members = []) {
		const r = await this.request('POST', '/groups', { body: { name, members } });
		return r.group_id;
	}

	group(id) {
		return this.request('GET', '/groups/' + encodeURIComponent(id));
	}

	addMember(groupId, user) {
		return this.request('POST', '/groups/' + encodeURIComponent(groupId) + '/members', { body: { user } });
	}

	removeMember(groupId, user) {
		return this.request('DELETE', '/groups/' + encodeURIComponent(groupId) + '/members/' +
			encodeURIComponent(user));
	}

	/** Conversation summaries, newest first. */
	async conversations(limit) {
		const r = await this.request('GET', '/conversations', { query: { limit } });
		return r.conversations;
	}

	/** Who received and read a message: {members, delivered, read}. */
	receipts(messageId) {
		return this.request('GET', '/messages/' + encodeURIComponent(messageId) + '/receipts');
	}

	/**
	 * A conversation's history, newest first: {with} or {groupId}, optional before (a message id)
	 * and limit. Resolves with {messages, next_before} (next_before null: nothing older).
	 */
	history({ with: peer, groupId, group_id, before, limit } = {}) {
		const gid = groupId ?? group_id;
		const path = gid != null ? '/groups/' + encodeURIComponent(gid) + '/messages'
			: '/conversations/' + encodeURIComponent(peer) + '/messages';
		return this.request('GET', path, { query: { before, limit } });
	}

	/** Presence of users: [{user, online, last_seen}]. */
	async presence(users) {
		const list = Array.isArray(users) ? users : [users];
		const r = await this.request('GET', '/presence', { query: { users: list.join(',') } });
		return r.presence;
	}

	// ---- rooms -------------------------------------------------------------------------------

	/** Receive a room's messages ('room' events) from now on, on either transport. */
	async joinRoom(room) {
		if (this._rooms.has(room))
			return;
		const r = { lastId: null, floor: null, seen: new Set(), abort: null };
		this._rooms.set(room, r);
		// Where "now" is in the room, so that a later switch of transport resumes from there.
		let after = 0;
		try {
			for (;;) {
				const page = await this.request('GET', '/rooms/' + encodeURIComponent(room) + '/messages',
					{ query: { after, limit: 500 } });
				const n = page.events?.length ?? 0;
				if (n === 0 || page.next == null || page.next <= after)
					break;
				after = page.next;
			}
		} catch (e) {
			if (this._rooms.get(room) === r)
				this._rooms.delete(room);
			throw e;
		}
		if (this._rooms.get(room) !== r)
			return;
		r.floor = after;
		r.lastId = after;
		if (this._wsOpen())
			this._wsSend({ type: 'join_room', room });
		else if (this._mode === 'longpoll')
			this._roomPoll(room, r);
	}

	/** Stop receiving a room's messages. */
	async leaveRoom(room) {
		const r = this._rooms.get(room);
		if (!r)
			return;
		this._rooms.delete(room);
		r.abort?.abort();
		if (this._wsOpen())
			this._wsSend({ type: 'leave_room', room });
	}

	/** Post to a room (joined or not). */
	async roomMessage(room, text) {
		if (this._wsOpen() && this._wsSend({ type: 'room_message', room, text }))
			return;
		const ev = await this.request('POST', '/rooms/' + encodeURIComponent(room) + '/messages',
			{ body: { text } });
		if (ev)
			this._ingestRoom(ev);
	}

	// Long-poll one room while long polling is the transport.
	async _roomPoll(room, r) {
		if (r.abort || r.lastId == null)
			return;
		const ac = new AbortController();
		r.abort = ac;
		let attempt = 0;
		while (!ac.signal.aborted && this._rooms.get(room) === r && !this._closed) {
			try {
				const page = await this.request('GET', '/rooms/' + encodeURIComponent(room) + '/messages',
					{ query: { after: r.lastId, timeout: this.opts.pollTimeout }, signal: ac.signal });
				attempt = 0;
				for (const ev of page.events ?? [])
					this._ingestRoom(ev);
				if (typeof page.next === 'number' && page.next > r.lastId)
					r.lastId = page.next;
			} catch (e) {
				if (isAbort(e) || ac.signal.aborted)
					break;
				await sleep(backoff(this.opts, attempt++), ac.signal);
			}
		}
		if (r.abort === ac)
			r.abort = null;
	}

	// After a switch to the WebSocket: what the room got while no transport listened.
	async _roomCatchUp(room, r) {
		try {
			const page = await this.request('GET', '/rooms/' + encodeURIComponent(room) + '/messages',
				{ query: { after: r.lastId } });
			for (const ev of page.events ?? [])
				this._ingestRoom(ev);
		} catch {
			// best effort: room messages are live chat, not durable events
		}
	}
}

export default ParleyClient;
