// loadgen.js - the one load generator of bench/peers/run, for Parley and its peers.
//
//   node loadgen.js SCENARIO SYSTEM [key=value ...]
//
// SYSTEM: parley | sio (Socket.IO 4.8) | nchan (nginx + Nchan) | ejabberd (XMPP 23.01)
// SCENARIO:
//   idle    n=N pids=P,P            open N idle WebSockets; RSS of the pids (KiB) per connection
//   park    n=N pids=P,P wake=W     park N long polls; RSS per parked poll of the whole chain;
//                                   then W sends to parked users, send -> poll answered p50/p99
//   rate    rate=R secs=S pairs=P   1:1 over WebSocket at R msgs/s: send -> recipient p50/p99/p999
//   fanout  listeners=L members=M sends=K   send -> last of L listeners p50/p99
// Endpoints come from the environment (bench/peers/run sets them): PARLEY_WS, PARLEY_HTTP,
// PARLEY_SECRET, SIO_PORT, NCHAN_PORT, XMPP_PORT.
//
// Every figure line is also printed as one "RESULT {json}" line for the report; the load
// generator's own CPU (user + system over the timed phase, % of one core) is in each.
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const http = require("http");
const { performance } = require("perf_hooks");
const WebSocket = require("ws");

const [scenario, system, ...kv] = process.argv.slice(2);
const opt = {};
for (const a of kv) {
	const i = a.indexOf("=");
	opt[a.slice(0, i)] = a.slice(i + 1);
}
const num = (k, d) => (opt[k] !== undefined ? Number(opt[k]) : d);
const run = opt.run || crypto.randomBytes(3).toString("hex");
// client_msg_ids unique to this process: Parley answers a reused id as a retry (no delivery)
const uniq = crypto.randomBytes(4).toString("hex");
const now = () => performance.now();	// ms, sub-µs resolution
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
let srcAddr = 0;
const localAddress = () => "127.0.0." + (2 + (srcAddr++ % 8));	// 8 sources: no port exhaustion

function pct(sorted, q) {
	if (sorted.length === 0)
		return null;
	return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))];
}

function rssKiB(pids) {
	let sum = 0;
	for (const p of pids) {
		const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${p}/status`, "utf8"));
		sum += m ? Number(m[1]) : 0;
	}
	return sum;
}

function cpuTicks(pids) {
	let sum = 0;
	for (const p of pids) {
		try {
			const s = fs.readFileSync(`/proc/${p}/stat`, "utf8");
			const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
			sum += Number(f[11]) + Number(f[12]);	// utime, stime
		} catch (e) { /* gone */ }
	}
	return sum;	// clock ticks (100/s)
}

let firstError = null;	// the first error a server answered, as received
const pids = (opt.pids || "").split(",").filter(Boolean).map(Number);

function meter() {
	const c0 = process.cpuUsage(), t0 = now(), s0 = cpuTicks(pids);
	return () => {
		const c = process.cpuUsage(c0), wall = now() - t0;
		return {
			loadgen_cpu_pct: Math.round((c.user + c.system) / 10 / wall),
			server_cpu_pct: Math.round((cpuTicks(pids) - s0) * 1000 / wall),	// ticks of 10 ms
			wall_s: Math.round(wall) / 1000,
		};
	};
}

function result(obj) {
	obj.system = system;
	obj.scenario = scenario;
	obj.iter = opt.iter === undefined ? null : Number(opt.iter);
	obj.load = opt.load === undefined ? null : opt.load;
	const line = JSON.stringify(obj);
	console.log("RESULT " + line);
	if (opt.out)
		fs.appendFileSync(opt.out, line + "\n");
}

// ---- HTTP helpers -------------------------------------------------------------------------

function request(url, { method = "GET", headers = {}, body = null, keep = true } = {}) {
	return new Promise((resolve, reject) => {
		const u = new URL(url);
		const h = Object.assign({}, headers);
		if (body !== null)
			h["Content-Length"] = Buffer.byteLength(body);
		const req = http.request({
			host: u.hostname, port: u.port, path: u.pathname + u.search, method, headers: h,
			agent: keep ? agent : false, localAddress: keep ? undefined : localAddress(),
		}, (res) => {
			const chunks = [];
			res.on("data", (c) => chunks.push(c));
			res.on("end", () => resolve({ status: res.statusCode, headers: res.headers,
				body: Buffer.concat(chunks).toString() }));
			res.on("error", reject);
		});
		req.on("error", reject);
		if (body !== null)
			req.write(body);
		req.end();
	});
}

// Each long poll on a socket of its own (an agent of one socket per poller keeps it alive).
function pollAgent() {
	return new http.Agent({ keepAlive: true, maxSockets: 1 });
}

function requestOn(ag, url, opts = {}) {
	return new Promise((resolve, reject) => {
		const u = new URL(url);
		const h = Object.assign({}, opts.headers || {});
		const body = opts.body === undefined ? null : opts.body;
		if (body !== null)
			h["Content-Length"] = Buffer.byteLength(body);
		const req = http.request({ host: u.hostname, port: u.port, path: u.pathname + u.search,
			method: opts.method || "GET", headers: h, agent: ag, localAddress: ag.localAddr }, (res) => {
			const chunks = [];
			res.on("data", (c) => chunks.push(c));
			res.on("end", () => resolve({ status: res.statusCode, headers: res.headers,
				body: Buffer.concat(chunks).toString() }));
		});
		req.on("error", reject);
		if (body !== null)
			req.write(body);
		req.end();
	});
}

// ---- Parley -------------------------------------------------------------------------------

function b64u(b) {
	return Buffer.from(b).toString("base64url");
}

function jwt(user) {
	const h = b64u('{"alg":"HS256","typ":"JWT"}');
	const p = b64u(JSON.stringify({ sub: user, exp: Math.floor(Date.now() / 1000) + 7200 }));
	const s = crypto.createHmac("sha256", process.env.PARLEY_SECRET).update(h + "." + p).digest("base64url");
	return h + "." + p + "." + s;
}

// A connection: { user, send1(to, text), sendRoom(room, text), join(room), onMsg, close() }.
// onMsg(text) is called for every message addressed to this user from someone else.
const parley = {
	connect(user) {
		return new Promise((resolve, reject) => {
			const ws = new WebSocket(`${process.env.PARLEY_WS}/ws?access_token=${jwt(user)}`, "parley.v1",
				{ perMessageDeflate: false, localAddress: localAddress() });
			const c = { user, ws, onMsg: null, errors: 0, acks: 0, n: 0 };
			ws.on("message", (d) => {
				const s = d.toString();
				if (s.startsWith('{"type":"new_message"')) {
					const m = JSON.parse(s).message;
					if (m.from !== user && c.onMsg)
						c.onMsg(m.content);
				} else if (s.startsWith('{"type":"ack"') || s.startsWith('{"type":"error"')) {
					if (s.includes('"status":"success"')) {
						c.acks++;
					} else {
						c.errors++;
						firstError = firstError || s.slice(0, 200);
					}
				} else if (s.startsWith('{"type":"ready"')) {
					resolve(c);
				}
			});
			ws.on("error", reject);
			ws.on("close", () => { c.closed = true; });
		});
	},
	send1(c, to, text) {
		c.ws.send(JSON.stringify({ type: "send_message", client_msg_id: `m${run}${uniq}_${c.n++}`, to, content: text }));
	},
	async makeRoom(room, owner, members) {
		const r = await request(`${process.env.PARLEY_HTTP}/groups`, { method: "POST",
			headers: { Authorization: "Bearer " + jwt(owner), "Content-Type": "application/json" },
			body: JSON.stringify({ name: room, members: members.filter((m) => m !== owner) }) });
		if (r.status !== 200)
			throw new Error("POST /groups: " + r.status + " " + r.body);
		return JSON.parse(r.body).group_id;
	},
	async join() {},
	sendRoom(c, room, text) {
		c.ws.send(JSON.stringify({ type: "send_message", client_msg_id: `g${run}${uniq}_${c.n++}`, group_id: room, content: text }));
	},
	// Long polls: lighttpd -> parley-fcgi
	async poller(user, onMsg) {
		const ag = pollAgent();
		ag.localAddr = localAddress();
		const tok = "Bearer " + jwt(user);
		let after = 0;
		const p = { parked: 0, stop: false };
		(async () => {
			while (!p.stop) {
				p.parked = 1;
				let r;
				try {
					r = await requestOn(ag, `${process.env.PARLEY_HTTP}/messages/long_poll?after=${after}&timeout=55`,
						{ headers: { Authorization: tok } });
				} catch (e) { p.failed = (p.failed || 0) + 1; await sleep(100); continue; }
				p.parked = 0;
				if (r.status !== 200) { p.failed = (p.failed || 0) + 1; await sleep(100); continue; }
				const j = JSON.parse(r.body);
				for (const e of j.events)
					if (e.type === "new_message" && e.message.from !== user)
						onMsg(e.message.content);
				after = j.next;
			}
		})();
		p.close = () => { p.stop = true; ag.destroy(); };
		return p;
	},
	async sender(user) {
		const tok = "Bearer " + jwt(user);
		let n = 0;
		return { send: (to, text) => request(`${process.env.PARLEY_HTTP}/messages`, { method: "POST",
			headers: { Authorization: tok, "Content-Type": "application/json" },
			body: JSON.stringify({ to, content: text, client_msg_id: `w${run}${uniq}_${n++}` }) }), close() {} };
	},
};

// ---- Socket.IO (Engine.IO v4 protocol spoken directly: no client library in the way) --------

const sioBase = () => `127.0.0.1:${process.env.SIO_PORT}/socket.io/?EIO=4`;

function sioPacket(c, p) {
	// p: one Engine.IO packet
	if (p === "2") {	// ping
		c.pong();
	} else if (p.startsWith("40")) {
		c.ready && c.ready();
	} else if (p.startsWith("42")) {
		const [ev, m] = JSON.parse(p.slice(2));
		if ((ev === "msg" || ev === "room") && m.from !== c.user && c.onMsg)
			c.onMsg(m.content);
	} else if (p.startsWith("43")) {
		const id = parseInt(p.slice(2), 10);
		if (c.pendingAcks && c.pendingAcks.has(id)) {
			c.pendingAcks.get(id)();
			c.pendingAcks.delete(id);
		}
	}
}

const sio = {
	connect(user) {
		return new Promise((resolve, reject) => {
			const ws = new WebSocket(`ws://${sioBase()}&transport=websocket&user=${user}`,
				{ perMessageDeflate: false, localAddress: localAddress() });
			const c = { user, ws, onMsg: null, acks: 0, errors: 0, n: 0 };
			c.pong = () => ws.send("3");
			c.ready = () => { c.ready = null; resolve(c); };
			ws.on("message", (d) => {
				const s = d.toString();
				if (s[0] === "0")
					ws.send("40");
				else
					sioPacket(c, s);
			});
			ws.on("error", reject);
			ws.on("close", () => { c.closed = true; });
		});
	},
	send1(c, to, text) {
		c.ws.send("42" + JSON.stringify(["send", { from: c.user, to, content: text }]));
	},
	async makeRoom(room) { return room; },
	join(c, room) {
		return new Promise((resolve) => {
			const id = c.n++;
			c.pendingAcks = c.pendingAcks || new Map();
			c.pendingAcks.set(id, resolve);
			c.ws.send("42" + id + JSON.stringify(["join", room]));	// answered by 43<id>
		});
	},
	sendRoom(c, room, text) {
		c.ws.send("42" + JSON.stringify(["room", { from: c.user, room, content: text }]));
	},
	// HTTP long-polling transport
	async poller(user, onMsg) {
		const ag = pollAgent();
		ag.localAddr = localAddress();
		const base = `http://${sioBase()}&transport=polling`;
		let r = await requestOn(ag, `${base}&user=${user}`);
		const sid = JSON.parse(r.body.slice(1)).sid;
		const url = `${base}&sid=${sid}`;
		const post = (b) => request(url, { method: "POST", body: b, headers: { "Content-Type": "text/plain" } });
		await post("40");
		const p = { parked: 0, stop: false };
		const c = { user, onMsg, acks: 0, pong: () => post("3") };
		(async () => {
			while (!p.stop) {
				p.parked = 1;
				try {
					r = await requestOn(ag, url);
				} catch (e) { if (!p.stop) p.failed = (p.failed || 0) + 1; return; }
				p.parked = 0;
				if (r.status !== 200) { p.failed = (p.failed || 0) + 1; return; }
				for (const pk of r.body.split("\x1e"))
					sioPacket(c, pk);
			}
		})();
		p.close = () => { p.stop = true; ag.destroy(); };
		return p;
	},
	async sender(user) {
		const c = await sio.connect(user);
		return { send: (to, text) => sio.send1(c, to, text), close: () => c.ws.terminate() };
	},
};

// ---- Nchan (nginx): channels; nothing kept beyond a 10-message buffer in shared memory -------

const nchanHttp = () => `http://127.0.0.1:${process.env.NCHAN_PORT}`;
const nchan = {
	// 1:1 over WebSocket: sender and recipient share the pair's channel (/ps/, publish + subscribe)
	connect(user, channel, room) {
		const path = channel ? `ps/${channel}` : `sub/${room || user}`;
		return new Promise((resolve, reject) => {
			const ws = new WebSocket(`ws://127.0.0.1:${process.env.NCHAN_PORT}/${path}`,
				{ perMessageDeflate: false, localAddress: localAddress() });
			const c = { user, ws, onMsg: null, acks: 0, errors: 0 };
			ws.on("open", () => resolve(c));
			ws.on("message", (d) => {
				const s = d.toString();
				const i = s.indexOf("|");
				if (s.slice(0, i) !== user && c.onMsg)
					c.onMsg(s.slice(i + 1));
			});
			ws.on("error", reject);
			ws.on("close", () => { c.closed = true; });
		});
	},
	send1(c, to, text) { c.ws.send(c.user + "|" + text); },
	async makeRoom(room) { return room; },
	async join() {},
	sendRoom(c, room, text) {
		request(`${nchanHttp()}/pub/${room}`, { method: "POST", body: c.user + "|" + text })
			.catch(() => { c.errors++; });
	},
	async poller(user, onMsg) {
		const ag = pollAgent();
		ag.localAddr = localAddress();
		const p = { parked: 0, stop: false };
		let hdr = {};
		(async () => {
			while (!p.stop) {
				p.parked = 1;
				let r;
				try {
					r = await requestOn(ag, `${nchanHttp()}/sub/${user}`, { headers: hdr });
				} catch (e) { if (!p.stop) p.failed = (p.failed || 0) + 1; await sleep(100); continue; }
				p.parked = 0;
				if (r.status === 200) {
					const i = r.body.indexOf("|");
					onMsg(r.body.slice(i + 1));
					hdr = { "If-Modified-Since": r.headers["last-modified"], "If-None-Match": r.headers.etag };
				} else if (r.status !== 304 && r.status !== 408) {
					p.failed = (p.failed || 0) + 1;
					await sleep(100);
				}
			}
		})();
		p.close = () => { p.stop = true; ag.destroy(); };
		return p;
	},
	async sender(user) {
		return { send: (to, text) => request(`${nchanHttp()}/pub/${to}`, { method: "POST", body: user + "|" + text }),
			close() {} };
	},
};

// ---- ejabberd: a minimal XMPP client (RFC 7395 over WebSocket, XEP-0124/0206 BOSH) ---------

const XMPP_DOMAIN = "localhost";
const XMPP_PASSWORD = "bench";
const saslPlain = (user) => Buffer.from(`\0${user}\0${XMPP_PASSWORD}`).toString("base64");
const xmlEsc = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
const bodyOf = (s) => { const m = /<body>([^<]*)<\/body>/.exec(s); return m ? m[1] : null; };
const fromOf = (s) => { const m = / from=['"]([^'"]*)['"]/.exec(s); return m ? m[1] : ""; };

const ejabberd = {
	connect(user) {
		return new Promise((resolve, reject) => {
			const ws = new WebSocket(`ws://127.0.0.1:${process.env.XMPP_PORT}/ws`, "xmpp",
				{ perMessageDeflate: false, localAddress: localAddress() });
			const c = { user, ws, onMsg: null, acks: 0, errors: 0, n: 0, step: 0 };
			const open = () => ws.send(`<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="${XMPP_DOMAIN}" version="1.0"/>`);
			ws.on("open", open);
			ws.on("message", (d) => {
				const s = d.toString();
				if (c.step === 3) {
					if (s.startsWith("<message") && c.onMsg) {
						const b = bodyOf(s);
						const f = fromOf(s);
						if (b !== null && !f.startsWith(user + "@") && !f.endsWith("/" + user))
							c.onMsg(b);
					} else if (c.onIq && s.startsWith("<iq")) {
						c.onIq(s);
					} else if (c.onPresence && s.startsWith("<presence")) {
						c.onPresence(s);
					} else if (s.startsWith("<stream:error") || s.startsWith("<close")) {
						c.errors++;
					}
					return;
				}
				if (s.includes("<failure") || s.includes("stream:error")) {
					reject(new Error("xmpp " + user + ": " + s));
				} else if (c.step === 0 && s.includes("<stream:features") && s.includes("PLAIN")) {
					ws.send(`<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">${saslPlain(user)}</auth>`);
					c.step = 1;
				} else if (c.step === 1 && s.startsWith("<success")) {
					open();
				} else if (c.step === 1 && s.includes("<stream:features")) {
					ws.send(`<iq type="set" id="bind"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>r</resource></bind></iq>`);
					c.step = 2;
				} else if (c.step === 2 && s.startsWith("<iq")) {
					ws.send("<presence/>");
					c.step = 3;
					resolve(c);
				}
			});
			ws.on("error", reject);
			ws.on("close", () => { c.closed = true; });
		});
	},
	send1(c, to, text) {
		c.ws.send(`<message to="${to}@${XMPP_DOMAIN}" type="chat" id="m${c.n++}"><body>${xmlEsc(text)}</body></message>`);
	},
	// A MUC room: the owner creates it (instant room), makes every member a member (one iq)
	async makeRoom(room, owner, members, ownerConn) {
		const jid = `${room}@conference.${XMPP_DOMAIN}`;
		const iq = (x) => new Promise((resolve) => {
			const id = "iq" + ownerConn.n++;
			ownerConn.onIq = (s) => { if (s.includes(`id="${id}"`) || s.includes(`id='${id}'`)) resolve(s); };
			ownerConn.ws.send(x.replace("@ID@", id));
		});
		await new Promise((resolve) => {
			ownerConn.onPresence = (s) => { if (s.includes("110")) resolve(); };	// self-presence
			ownerConn.ws.send(`<presence to="${jid}/${owner}"><x xmlns="http://jabber.org/protocol/muc"><history maxstanzas="0"/></x></presence>`);
		});
		ownerConn.onPresence = null;
		await iq(`<iq type="set" id="@ID@" to="${jid}"><query xmlns="http://jabber.org/protocol/muc#owner"><x xmlns="jabber:x:data" type="submit"/></query></iq>`);
		const items = members.filter((m) => m !== owner)
			.map((m) => `<item affiliation="member" jid="${m}@${XMPP_DOMAIN}"/>`).join("");
		const r = await iq(`<iq type="set" id="@ID@" to="${jid}"><query xmlns="http://jabber.org/protocol/muc#admin">${items}</query></iq>`);
		if (!r.includes('type="result"') && !r.includes("type='result'"))
			throw new Error("muc#admin: " + r.slice(0, 300));
		return jid;
	},
	join(c, jid) {
		return new Promise((resolve, reject) => {
			const t = setTimeout(() => reject(new Error("MUC join " + c.user + ": no self-presence in 10 s")), 10000);
			c.onPresence = (s) => {
				if (s.includes("110")) {
					c.onPresence = null;
					clearTimeout(t);
					resolve();
				} else if (s.includes('type="error"') || s.includes("type='error'")) {
					c.onPresence = null;
					clearTimeout(t);
					reject(new Error("MUC join " + c.user + ": " + s.slice(0, 300)));
				}
			};
			c.ws.send(`<presence to="${jid}/${c.user}"><x xmlns="http://jabber.org/protocol/muc"><history maxstanzas="0"/></x></presence>`);
		});
	},
	sendRoom(c, jid, text) {
		c.ws.send(`<message to="${jid}" type="groupchat" id="g${c.n++}"><body>${xmlEsc(text)}</body></message>`);
	},
	// BOSH (ejabberd's long polling): one request held by the server (hold=1), a new one sent
	// as soon as none is outstanding.
	async poller(user, onMsg) {
		const ag = new http.Agent({ keepAlive: true, maxSockets: 2 });
		ag.localAddr = localAddress();
		const url = `http://127.0.0.1:${process.env.XMPP_PORT}/bosh`;
		let rid = 1000 + Math.floor(Math.random() * 1e6);
		let sid = "";
		const NS = 'xmlns="http://jabber.org/protocol/httpbind"';
		const post = (inner, attrs = "") => requestOn(ag, url, { method: "POST",
			headers: { "Content-Type": "text/xml; charset=utf-8" },
			body: `<body rid="${rid++}" sid="${sid}" ${NS}${attrs}>${inner}</body>` });
		let r = await requestOn(ag, url, { method: "POST", headers: { "Content-Type": "text/xml; charset=utf-8" },
			body: `<body rid="${rid++}" ${NS} to="${XMPP_DOMAIN}" xml:lang="en" wait="60" hold="1" ver="1.6" ` +
				`xmpp:version="1.0" xmlns:xmpp="urn:xmpp:xbosh"/>` });
		sid = /sid=['"]([^'"]+)['"]/.exec(r.body)[1];
		if (!r.body.includes("PLAIN"))
			r = await post("");
		r = await post(`<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">${saslPlain(user)}</auth>`);
		if (!r.body.includes("<success"))
			throw new Error("bosh auth " + user + ": " + r.body);
		r = await post("", ` to="${XMPP_DOMAIN}" xml:lang="en" xmpp:restart="true" xmlns:xmpp="urn:xmpp:xbosh"`);
		if (!r.body.includes("bind"))
			r = await post("");
		r = await post(`<iq type="set" id="bind"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>b</resource></bind></iq>`);
		const p = { parked: 0, stop: false, out: 0 };
		const issue = (inner) => {
			p.out++;
			p.parked = 1;
			post(inner).then((res) => {
				p.out--;
				for (const m of res.body.split("<message").slice(1)) {
					const b = bodyOf(m);
					if (b !== null)
						onMsg(b);
				}
				if (res.body.includes('type="terminate"') || res.body.includes("type='terminate'"))
					p.failed = (p.failed || 0) + 1, p.stop = true;
				if (p.out === 0) {
					p.parked = 0;
					if (!p.stop)
						issue("");
				}
			}, () => { p.out--; if (!p.stop) p.failed = (p.failed || 0) + 1; });
		};
		issue("<presence/>");
		p.close = () => { p.stop = true; ag.destroy(); };
		return p;
	},
	async sender(user) {
		const c = await ejabberd.connect(user);
		return { send: (to, text) => ejabberd.send1(c, to, text), close: () => c.ws.terminate() };
	},
};

const systems = { parley, sio, nchan, ejabberd };
if (scenario === "token") {	// a Parley JWT for wrk
	console.log(jwt(system));
	process.exit(0);
}
const S = systems[system];
if (!S || !scenario) {
	console.error("usage: loadgen.js idle|park|rate|fanout parley|sio|nchan|ejabberd [key=value ...]");
	process.exit(2);
}

// Open n connections, at most `par` handshakes at a time.
async function openMany(users, par, connect) {
	const out = new Array(users.length);
	let next = 0, failed = 0, firstErr = null;
	async function worker() {
		while (next < users.length) {
			const i = next++;
			try {
				out[i] = await connect(users[i], i);
			} catch (e) {
				failed++;
				firstErr = firstErr || String(e.message || e).slice(0, 200);
			}
		}
	}
	await Promise.all(Array.from({ length: par }, worker));
	return { conns: out.filter(Boolean), failed, firstErr };
}

const PAR = num("par", 64);

async function scIdle() {
	const n = num("n", 1000);
	const users = Array.from({ length: n }, (_, i) => `i${run}_${i}`);
	await sleep(num("settle", 2000));	// the server's start-up settles first
	const rss0 = rssKiB(pids);
	const m = meter();
	const { conns, failed, firstErr } = await openMany(users, PAR, (u) => S.connect(u));
	const up = m();
	await sleep(num("settle", 2000));	// let the server settle (GC, buffers)
	const rss1 = rssKiB(pids);
	const per = (rss1 - rss0) / Math.max(conns.length, 1);
	const alive = conns.filter((c) => !c.closed).length;
	console.log(`${system} idle: ${alive}/${n} open (${failed} failed${firstErr ? ": " + firstErr : ""}), ` +
		`RSS ${rss0} -> ${rss1} KiB: ${per.toFixed(2)} KiB per connection; opened in ${up.wall_s} s, ` +
		`load generator CPU ${up.loadgen_cpu_pct}%`);
	result({ n, open: alive, failed, rss0, rss1, kib_per_conn: per, loadgen_cpu_pct: up.loadgen_cpu_pct });
	for (const c of conns)
		c.ws.terminate();
}

async function scPark() {
	const n = num("n", 1000), wake = num("wake", 300);
	const users = Array.from({ length: n }, (_, i) => `p${run}_${i}`);
	const got = new Map();	// user -> resolve of the pending wake
	const lat = [];
	await sleep(num("settle", 2000));	// the server's start-up settles first
	const rss0 = rssKiB(pids);
	const m = meter();
	const { conns: polls, failed, firstErr } = await openMany(users, PAR, (u) =>
		S.poller(u, (text) => {
			const t = Number(text.slice(2));
			lat.push(now() - t);
			const r = got.get(u);
			if (r) { got.delete(u); r(); }
		}));
	const up = m();
	await sleep(num("settle", 2000));
	const rss1 = rssKiB(pids);
	const parked = polls.filter((p) => p.parked && !p.failed).length;
	const per = (rss1 - rss0) / Math.max(parked, 1);
	console.log(`${system} park: ${parked}/${n} parked (${failed} failed${firstErr ? ": " + firstErr : ""}), ` +
		`RSS ${rss0} -> ${rss1} KiB: ${per.toFixed(2)} KiB per parked poll; load generator CPU ${up.loadgen_cpu_pct}%`);
	// wake: one send at a time to a user whose poll is parked, spread over the parked users
	const snd = await S.sender(`p${run}_sender`);
	await sleep(300);
	const m2 = meter();
	let missed = 0;
	const idx = polls.map((_, i) => i);
	for (let k = 0; k < wake; k++) {
		let i = idx[(k * 7919) % idx.length];
		for (let j = 0; j < idx.length && !polls[i].parked; j++)
			i = idx[(k * 7919 + j) % idx.length];
		const u = users[i];
		const done = new Promise((resolve) => got.set(u, resolve));
		snd.send(u, "t=" + now().toFixed(3));
		const ok = await Promise.race([done.then(() => true), sleep(2000).then(() => false)]);
		if (!ok) { missed++; got.delete(u); }
		await sleep(2);	// the poller re-parks
	}
	const w = m2();
	lat.sort((a, b) => a - b);
	const p50 = pct(lat, 0.5), p99 = pct(lat, 0.99);
	console.log(`${system} wake: ${wake} sends one at a time: send -> poll answered p50 ${p50 && p50.toFixed(2)} ms, ` +
		`p99 ${p99 && p99.toFixed(2)} ms, ${missed} missed; load generator CPU ${w.loadgen_cpu_pct}%`);
	result({ n, parked, failed, rss0, rss1, kib_per_poll: per, wake, missed, wake_p50: p50, wake_p99: p99,
		loadgen_cpu_pct: Math.max(up.loadgen_cpu_pct, w.loadgen_cpu_pct) });
	snd.close();
	for (const p of polls)
		p.close();
}

async function scRate() {
	const rate = num("rate", 500), secs = num("secs", 3), pairs = num("pairs", 100);
	const users = Array.from({ length: 2 * pairs }, (_, i) => `r${run}_${i}`);
	const lat = [];
	const { conns, failed, firstErr } = await openMany(users, PAR, (u, i) =>
		S.connect(u, system === "nchan" ? `pair${run}_${i % pairs}` : undefined));
	if (failed) {
		console.log(`${system} rate ${rate}: ${failed} connections failed: ${firstErr}`);
		result({ rate, failed_conns: failed, sent: 0, delivered: 0, saturated: true });
		process.exit(0);
	}
	for (let i = pairs; i < 2 * pairs; i++)
		conns[i].onMsg = (text) => lat.push(now() - Number(text.slice(2)));
	await sleep(500);
	const m = meter();
	const t0 = now(), end = t0 + secs * 1000;
	let sent = 0;
	while (now() < end) {
		const owed = Math.floor((now() - t0) * rate / 1000) - sent;
		for (let k = 0; k < owed; k++, sent++) {
			const s = conns[sent % pairs];
			S.send1(s, users[pairs + (sent % pairs)], "t=" + now().toFixed(3));
		}
		await new Promise((r) => setImmediate(r));
		await sleep(1);
	}
	const sendWall = now() - t0;
	for (let w = 0; w < 50 && lat.length < sent; w++)
		await sleep(100);
	const mm = m();
	const lost = sent - lat.length;
	const errors = conns.reduce((a, c) => a + c.errors, 0);
	const closed = conns.filter((c) => c.closed).length;
	lat.sort((a, b) => a - b);
	const p50 = pct(lat, 0.5), p99 = pct(lat, 0.99), p999 = pct(lat, 0.999);
	const saturated = lost > 0 || errors > 0 || closed > 0 || p99 === null || p99 > 100;
	console.log(`${system} rate ${rate}/s: sent ${sent} in ${(sendWall / 1000).toFixed(1)} s, delivered ${lat.length}, ` +
		`lost ${lost}, errors ${errors}, closed ${closed}; p50 ${p50 && p50.toFixed(2)} p99 ${p99 && p99.toFixed(2)} ` +
		`p999 ${p999 && p999.toFixed(2)} ms; server CPU ${mm.server_cpu_pct}%, load generator CPU ${mm.loadgen_cpu_pct}%` +
		(saturated ? " SATURATED" : "") + (firstError ? "; first error: " + firstError : ""));
	result({ rate, secs, pairs, sent, delivered: lat.length, lost, errors, closed, p50, p99, p999, saturated,
		achieved: sent / (sendWall / 1000), server_cpu_pct: mm.server_cpu_pct, loadgen_cpu_pct: mm.loadgen_cpu_pct });
	for (const c of conns)
		c.ws.terminate();
}

async function scFanout() {
	const L = num("listeners", 500), M = num("members", 1000), K = num("sends", 20);
	const users = Array.from({ length: M }, (_, i) => `f${run}_${i}`);
	const owner = users[0];
	const ownerConn = await S.connect(owner);
	const room = await S.makeRoom(`room${run}`, owner, users, ownerConn);
	// (Nchan: each listener subscribes to the room's channel)
	const { conns, failed, firstErr } = await openMany(users.slice(1, L + 1), PAR, (u) => S.connect(u, null, room));
	if (failed)
		console.log(`${system} fanout: ${failed} listeners failed: ${firstErr}`);
	const tj = now();
	const joined = await openMany(conns, 16, (c) => Promise.resolve(S.join(c, room)).then(() => c));
	const joinS = (now() - tj) / 1000;
	if (joined.failed) {
		console.log(`${system} fanout: ${joined.failed} listeners could not join: ${joined.firstErr}`);
		conns.splice(0, conns.length, ...joined.conns);
	}
	let pending = 0, last = 0, resolveSend = null;
	for (const c of conns)
		c.onMsg = () => {
			last = now();
			if (--pending === 0 && resolveSend)
				resolveSend();
		};
	await sleep(500);
	const m = meter();
	const lat = [];
	let incomplete = 0;
	for (let k = 0; k < K; k++) {
		pending = conns.length;
		const t = now();
		const done = new Promise((r) => { resolveSend = r; });
		S.sendRoom(ownerConn, room, "t=" + t.toFixed(3));
		const ok = await Promise.race([done.then(() => true), sleep(5000).then(() => false)]);
		if (ok)
			lat.push(last - t);
		else
			incomplete++;
		await sleep(50);
	}
	const mm = m();
	lat.sort((a, b) => a - b);
	const p50 = pct(lat, 0.5), p99 = pct(lat, 0.99);
	console.log(`${system} fanout: ${conns.length} listeners online of ${M} members (joined in ${joinS.toFixed(1)} s), ` +
		`${K} sends: send -> last listener p50 ${p50 && p50.toFixed(2)} ms, p99 ${p99 && p99.toFixed(2)} ms, ` +
		`${incomplete} incomplete; server CPU ${mm.server_cpu_pct}%, load generator CPU ${mm.loadgen_cpu_pct}%`);
	result({ listeners: conns.length, members: M, sends: K, incomplete, p50, p99,
		server_cpu_pct: mm.server_cpu_pct, loadgen_cpu_pct: mm.loadgen_cpu_pct });
	for (const c of conns)
		c.ws.terminate();
	ownerConn.ws.terminate();
}

const scenarios = { idle: scIdle, park: scPark, rate: scRate, fanout: scFanout };
if (!scenarios[scenario]) {
	console.error("unknown scenario " + scenario);
	process.exit(2);
}
scenarios[scenario]().then(() => process.exit(0), (e) => {
	console.log(`${system} ${scenario}: failed: ${e.stack || e}`);
	result({ error: String(e.message || e).slice(0, 300) });
	process.exit(1);
});
