// stack.mjs - the real stack for the client's tests: parley-fcgi and parley-ws on a private bus,
// lighttpd in front of both (tests/harness/webserver: /ws proxied to parley-ws), tokens from
// parleyctl. MariaDB and memcached come from tests/harness/with-services (PARLEY_TEST_CONFIG).
import { spawn, execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, readFileSync, writeFileSync, existsSync, chmodSync, createWriteStream, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const execFileP = promisify(execFile);
const BUILD = process.env.PARLEY_BUILDDIR ?? '.';
const SRC = process.env.PARLEY_SRCDIR ?? '.';
const BASE = process.env.PARLEY_TEST_CONFIG;
let counter = 0;
const RUN = process.pid.toString(16) + (Date.now() % 65536).toString(16);

/** A user id unique across runs sharing the database. */
export function uname(prefix) {
	return `${prefix}_${RUN}_${++counter}`;
}

function freePort() {
	return new Promise((resolve, reject) => {
		const s = createServer();
		s.listen(0, '127.0.0.1', () => {
			const { port } = s.address();
			s.close(() => resolve(port));
		});
		s.on('error', reject);
	});
}

function canConnect(port) {
	return new Promise((resolve) => {
		const c = connect(port, '127.0.0.1');
		c.on('connect', () => { c.destroy(); resolve(true); });
		c.on('error', () => resolve(false));
	});
}

async function until(fn, ms, what) {
	const end = Date.now() + ms;
	while (Date.now() < end) {
		if (await fn())
			return;
		await sleep(50);
	}
	throw new Error('timed out: ' + what);
}

export class Stack {
	/**
	 * Start it. opts.config: more configuration text (e.g. "[demo]\ntokens = yes\n"); opts.web:
	 * lighttpd also serves the demo web app (contrib/web) at /web/.
	 */
	async start(opts = {}) {
		if (!BASE)
			throw new Error('PARLEY_TEST_CONFIG is not set: run under tests/harness/with-services');
		// The web server's user may need to traverse the directory of the FastCGI socket.
		this.dir = mkdtempSync('/tmp/parley-js-test.');
		chmodSync(this.dir, 0o711);
		this.wsPort = await freePort();
		const base = readFileSync(BASE, 'utf8');
		let skip = false;
		const kept = base.split('\n').filter((line) => {
			const m = line.match(/^\s*\[(\w+)\]/);
			if (m)
				skip = ['bus', 'fcgi', 'ws', 'log'].includes(m[1]);
			return !skip;
		});
		this.conf = join(this.dir, 'parley.conf');
		writeFileSync(this.conf, kept.join('\n') + `
[bus]
dir = ${this.dir}/bus
[fcgi]
listen = ${this.dir}/fcgi.sock
socket_mode = 0660
threads = 4
[ws]
listen = 127.0.0.1
port = ${this.wsPort}
[log]
level = info
` + (opts.config ?? ''));
		this.fcgi = this._spawn('parley-fcgi', ['-c', this.conf]);
		await until(() => existsSync(join(this.dir, 'fcgi.sock')), 10000, 'parley-fcgi socket');
		await this.startWs();
		const out = execFileSync(join(SRC, 'tests/harness/webserver'),
			['start', 'lighttpd', join(this.dir, 'lighttpd'), '--fcgi', join(this.dir, 'fcgi.sock'),
				'--ws', `127.0.0.1:${this.wsPort}`, ...(opts.web ? ['--web'] : [])], { encoding: 'utf8' });
		this.http = out.trim().split('\n').pop().replace(/^export PARLEY_HTTP=/, '');
		this.wsUrl = this.http.replace(/^http/, 'ws') + '/ws';
		return this;
	}

	_spawn(name, args) {
		const log = createWriteStream(join(this.dir, name + '.log'), { flags: 'a' });
		const p = spawn(join(BUILD, name), args, { stdio: ['ignore', 'pipe', 'pipe'] });
		p.stdout.pipe(log);
		p.stderr.pipe(log);
		p.exited = new Promise((r) => p.on('exit', (code, sig) => r({ code, sig })));
		return p;
	}

	/** Start parley-ws (again) on its port. */
	async startWs() {
		this.ws = this._spawn('parley-ws', ['--config', this.conf]);
		let gone = false;
		this.ws.exited.then(() => { gone = true; });
		await until(async () => {
			if (gone)
				throw new Error('parley-ws exited; see ' + this.dir + '/parley-ws.log');
			return canConnect(this.wsPort);
		}, 10000, 'parley-ws port');
	}

	/** Stop parley-ws with a signal (SIGKILL: a crash) and wait until it is gone. */
	async stopWs(signal = 'SIGKILL') {
		const p = this.ws;
		if (p.exitCode === null && p.signalCode === null)
			p.kill(signal);
		await p.exited;
	}

	/** A token minted by parleyctl. */
	token(user, { dev, ttl = 3600 } = {}) {
		const args = ['--config', this.conf, 'token', user, '--ttl', String(ttl)];
		if (dev)
			args.push('--device', dev);
		return execFileSync(join(BUILD, 'parleyctl'), args, { encoding: 'utf8' }).trim();
	}

	/**
	 * parleyctl prune as an operator would run it, with retention.events_days = 1 and "now" two
	 * days ahead: every event appended so far is pruned (messages are kept, so history stays).
	 */
	async prune() {
		const conf = join(this.dir, 'prune.conf');
		// No pause between batches: the database is a throwaway one shared by the serial tests.
		writeFileSync(conf, readFileSync(this.conf, 'utf8') +
			'\n[retention]\nevents_days = 1\nbatch = 10000\npause_ms = 0\n');
		const { stdout } = await execFileP(join(BUILD, 'parleyctl'),
			['--config', conf, 'prune', '--now', String(Date.now() + 2 * 86400 * 1000)]);
		return stdout.trim();
	}

	/** A plain HTTP call as USER (for checks that must not go through the client under test). */
	async api(user, method, path, body) {
		const res = await fetch(this.http + path, {
			method,
			headers: { Authorization: 'Bearer ' + this.token(user), 'Content-Type': 'application/json' },
			body: body === undefined ? undefined : JSON.stringify(body),
		});
		const text = await res.text();
		if (!res.ok)
			throw new Error(`${method} ${path}: ${res.status} ${text}`);
		return text ? JSON.parse(text) : null;
	}

	/** Every event in USER's log (GET /messages, paged). */
	async log(user) {
		const events = [];
		let after = 0;
		for (;;) {
			const page = await this.api(user, 'GET', `/messages?after=${after}&limit=500`);
			events.push(...page.events);
			if (page.events.length === 0 || page.next <= after)
				return events;
			after = page.next;
		}
	}

	async stop() {
		try {
			execFileSync(join(SRC, 'tests/harness/webserver'), ['stop', join(this.dir, 'lighttpd')]);
		} catch { /* not started */ }
		for (const p of [this.ws, this.fcgi]) {
			if (p && p.exitCode === null && p.signalCode === null) {
				p.kill('SIGTERM');
				await Promise.race([p.exited, sleep(5000)]);
				if (p.exitCode === null && p.signalCode === null)
					p.kill('SIGKILL');
			}
		}
		if (process.env.PARLEY_KEEP_TEST_DIR !== '1')
			rmSync(this.dir, { recursive: true, force: true });
	}
}
