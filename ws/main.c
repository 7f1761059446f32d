/* main.c - parley-ws: start-up, the threads around the libwebsockets loop, and shutdown. */
#include <sys/resource.h>
#include <sys/socket.h>

#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>

#include "actor.h"
#include "cache.h"
#include "chat.h"
#include "config.h"
#include "conn.h"
#include "log.h"
#include "redis.h"
#include "store.h"
#include "ws.h"
#include "xmalloc.h"

/* lws's rx buffer per connection: small, because idle connections are the common case. */
#define WS_RX_BUFFER	1024
/* lws's header space for a request's headers beside its URI (ws.max_url). */
#define WS_HEADER_SPACE	8192
/*
 * Descriptors kept free of client sockets: each worker's MySQL and memcached connections (and a
 * reconnect's overlap), the bus (listener, one per peer), epoll, lws's own, handshakes in flight.
 */
#define WS_FD_RESERVE	64
#define WS_FD_PER_WORKER 3

/* --help: the text on stdout, exit 0; a usage error: on stderr, exit 2. */
static void
usage(int help)
{
	fprintf(help ? stdout : stderr, "usage: parley-ws [--config FILE]\n"
	    "  -c, --config FILE   configuration file (default: $PARLEY_CONFIG)\n"
	    "  -V, --version       print the version and exit\n"
	    "  -h, --help          this text\n"
	    "See parley-ws(8) and parley.conf(5).\n");
	exit(help ? 0 : 2);
}

/* lws's own messages go through our log (errors and warnings only; they are rare). */
static void
ws_lws_log(int level, const char *line)
{
	size_t n = strlen(line);

	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		n--;
	if (level & LLL_ERR)
		log_warn("lws: %.*s", (int)n, line);
	else
		log_debug("lws: %.*s", (int)n, line);
}

/*
 * The presence node: this port on this host (bus_host_id), stable across restarts of the daemon
 * (a restart clears its old rows) and never another host's (hostnames and ports may repeat).
 */
static void
ws_node_id(struct ws *ws, const char *host_id)
{
	snprintf(ws->node, sizeof ws->node, "ws:%d:%s", ws->cfg->ws_port, host_id);
}

/* Split a comma-separated configuration list (ws.origins, ws.trusted_proxies). */
static void
ws_list(const char *text, char ***list, size_t *n)
{
	char *copy, *tok, *save = NULL;

	copy = xstrdup(text != NULL ? text : "");
	for (tok = strtok_r(copy, ", \t", &save); tok != NULL; tok = strtok_r(NULL, ", \t", &save)) {
		*list = xreallocarray(*list, *n + 1, sizeof **list);
		(*list)[(*n)++] = xstrdup(tok);
	}
	free(copy);
}

/*
 * Before the loop (blocking): wait for MySQL as mysql.start_wait says, then reset the
 * connections a previous run of this node counted (they are gone).
 */
static void
ws_mysql_start(struct ws *ws)
{
	struct chat ch;
	char *cause = NULL;

	chat_init(&ch, ws->cfg, NULL, NULL);
	if (ws->cfg->mysql_start_wait >= 0 &&
	    store_wait(ch.store, ws->cfg->mysql_start_wait, &cause) != 0)
		fatal("%s", cause);
	if (store_presence_reset(ch.store, ws->node, parley_now_ms()) != 0)
		log_warn("presence reset for %s failed: %s", ws->node, strerror(errno));
	chat_clear(&ch);
}

/*
 * The bus reader: only the backends' recv (the local bus and the Redis bridge), never MySQL;
 * every hint goes to the loop's queue.
 */
static void *
ws_bus_thread(void *arg)
{
	struct ws *ws = arg;
	struct bus_backend be[2];
	struct bus_hint *h;
	struct pollfd pfd[2];
	struct done *d;
	size_t i, n;

	h = xmalloc(sizeof *h);
	n = bus_backends(ws->bus, be);
	for (i = 0; i < n; i++) {
		pfd[i].fd = be[i].ops->fd(be[i].arg);
		pfd[i].events = POLLIN;
	}
	/* The timeout only bounds how long a shutdown waits if its BUS_SHUTDOWN wake-up is lost. */
	while (!__atomic_load_n(&ws->bus_stop, __ATOMIC_ACQUIRE)) {
		if (poll(pfd, n, 500) == -1 && errno != EINTR) {
			log_error("bus poll: %s", strerror(errno));
			break;
		}
		for (i = 0; i < n; i++) {
			while (be[i].ops->recv(be[i].arg, h) == 0) {
				if (h->topic == BUS_SHUTDOWN) {
					if (__atomic_load_n(&ws->bus_stop, __ATOMIC_ACQUIRE))
						goto out;
					continue;
				}
				d = ws_done_new(DONE_HINT, 0);
				d->topic = h->topic;
				d->seq = h->seq;
				memcpy(d->key, h->key, sizeof d->key);
				if (h->len > 0) {
					d->text = xmalloc(h->len + 1);
					memcpy(d->text, h->payload, h->len + 1);
					d->len = h->len;
				}
				ws_done_push(ws, d);
			}
		}
	}
out:
	free(h);
	return NULL;
}

/* The signal thread: SIGTERM/SIGINT start the graceful shutdown in the loop. */
static void *
ws_signal_thread(void *arg)
{
	struct ws *ws = arg;
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	for (;;) {
		if (sigwait(&set, &sig) != 0)
			continue;
		log_info("signal %d: shutting down", sig);
		__atomic_store_n(&ws->stop, 1, __ATOMIC_RELEASE);
		pthread_mutex_lock(&ws->qlock);
		if (ws->ctx != NULL)
			lws_cancel_service(ws->ctx);
		pthread_mutex_unlock(&ws->qlock);
	}
	return NULL;
}

/*
 * lws says only "init server failed" when it cannot bind: bind once ourselves first (and let
 * go), so a port in use or an address not on this host stops start-up with the reason.
 */
static void
ws_listen_check(const struct config *cfg)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *ai;
	char port[16];
	int fd, rc, one = 1;

	snprintf(port, sizeof port, "%d", cfg->ws_port);
	if ((rc = getaddrinfo(cfg->ws_listen, port, &hints, &ai)) != 0)
		fatal("cannot listen on %s port %d: %s", cfg->ws_listen, cfg->ws_port,
		    gai_strerror(rc));
	if ((fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
		fatal("cannot listen on %s port %d: %s", cfg->ws_listen, cfg->ws_port,
		    strerror(errno));
	close(fd);
	freeaddrinfo(ai);
}

/*
 * The connection cap: ws.max_connections, lowered when the open-file limit cannot hold that many
 * sockets beside the reserve. Without it, clients take every descriptor, the workers cannot
 * reach MySQL, and every client is refused (unavailable) instead of the excess.
 */
static size_t
ws_conn_cap(const struct config *cfg)
{
	size_t cap = (size_t)cfg->ws_max_connections;
	size_t reserve = WS_FD_RESERVE + WS_FD_PER_WORKER * (size_t)cfg->actor_workers;
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
		return cap;
	if (rl.rlim_cur < reserve + 16)
		fatal("the open-file limit (%llu) is too low: parley-ws needs %zu descriptors besides "
		    "its clients", (unsigned long long)rl.rlim_cur, reserve);
	if (rl.rlim_cur - reserve < cap) {
		cap = rl.rlim_cur - reserve;
		log_warn("ws.max_connections %d lowered to %zu: the open-file limit is %llu (raise "
		    "LimitNOFILE / ulimit -n)", cfg->ws_max_connections, cap,
		    (unsigned long long)rl.rlim_cur);
	}
	return cap;
}

static struct lws_context *
ws_context(struct ws *ws)
{
	static const enum lws_token_indexes uris[] = {
		WSI_TOKEN_GET_URI, WSI_TOKEN_POST_URI, WSI_TOKEN_OPTIONS_URI, WSI_TOKEN_PATCH_URI,
		WSI_TOKEN_PUT_URI, WSI_TOKEN_DELETE_URI, WSI_TOKEN_HEAD_URI
	};
	struct lws_context_creation_info info;
	const struct config *cfg = ws->cfg;
	size_t i;

	memset(ws->protocols, 0, sizeof ws->protocols);
	ws->protocols[0].name = "parley.v1";
	ws->protocols[0].callback = ws_callback;
	ws->protocols[0].per_session_data_size = sizeof(struct conn);
	ws->protocols[0].rx_buffer_size = WS_RX_BUFFER;
	/* Whole frames go to send() in one piece; lws keeps any unsent rest itself. */
	ws->protocols[0].tx_packet_size = cfg->ws_max_message + 1024;

	/*
	 * No lws validity timers (both 0 turn them off): lws re-inserts a connection's timer into
	 * one sorted list of every connection on each pong, a walk of the whole list; with 10,000
	 * connections their pings stalled the loop for hundreds of ms. The loop's tick pings and
	 * drops idle connections itself (loop_keepalive).
	 */
	memset(&ws->retry, 0, sizeof ws->retry);

	/*
	 * lws closes a request whose headers overflow its header space without a word. The URI
	 * (each of its fragments: path, every query parameter) is cut at ws.max_url + 1 instead, so
	 * the request still parses and loop_filter answers 414; the other headers get 8 KiB more.
	 */
	memset(&ws->token_limits, 0, sizeof ws->token_limits);
	for (i = 0; i < sizeof uris / sizeof uris[0]; i++)
		ws->token_limits.token_limit[uris[i]] = (unsigned short)(cfg->ws_max_url + 1);

	memset(&info, 0, sizeof info);
	info.token_limits = &ws->token_limits;
	info.max_http_header_data = (unsigned short)(cfg->ws_max_url + 1 + WS_HEADER_SPACE);
	info.port = cfg->ws_port;
	info.iface = cfg->ws_listen;
	info.protocols = ws->protocols;
	info.user = ws;
	info.count_threads = 1;
	info.retry_and_idle_policy = &ws->retry;
	info.timeout_secs = 10;
	info.gid = -1;
	info.uid = -1;
	info.options = LWS_SERVER_OPTION_VALIDATE_UTF8 | LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND;
	/*
	 * lws's default loop calls poll() over every socket at each wake-up: with 10,000 idle
	 * clients and thousands of wake-ups a second that alone fills a core. libev (epoll) costs
	 * per active socket. The loop is ours (foreign), so ev_break() ends it at shutdown.
	 */
	info.options |= LWS_SERVER_OPTION_LIBEV;
	info.foreign_loops = ws->foreign_loops;
	if (strchr(cfg->ws_listen, ':') == NULL)
		info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
	return lws_create_context(&info);
}

/* Free the send jobs left on h (at exit). */
static void
ws_sends_free(struct held *h)
{
	struct job *j;

	while ((j = h->head) != NULL) {
		h->head = j->next;
		ws_job_free(JOB_SEND, j);
	}
	h->tail = NULL;
	h->n = 0;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 }
	};
	struct actor_config acfg;
	struct config cfg;
	struct lws_context *ctx;
	struct ws ws;
	pthread_t bus_thread, sig_thread;
	const char *arg = NULL, *path;
	char *cause = NULL;
	char host_id[BUS_HOST_ID_MAX + 1];
	struct done *d, *dn;
	sigset_t set;
	size_t i;
	int ch;

	while ((ch = getopt_long(argc, argv, "c:hV", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			arg = optarg;
			break;
		case 'V':
			printf("parley-ws %s\n", PARLEY_VERSION);
			return 0;
		default:
			usage(ch == 'h');
		}
	}
	if (optind != argc)
		usage(0);

	log_init("parley-ws", LOG_LEVEL_INFO, 0);
	if ((path = config_path(arg)) == NULL)
		fatal("no configuration: use --config FILE or set PARLEY_CONFIG");
	if (config_load(&cfg, path, &cause) != 0 || config_validate(&cfg, &cause) != 0)
		fatal("%s", cause);
	log_init("parley-ws", (enum log_level)cfg.log_level, cfg.log_syslog);
	lws_set_log_level(cfg.log_level == LOG_LEVEL_DEBUG ? LLL_ERR | LLL_WARN : LLL_ERR,
	    ws_lws_log);

	/* Every thread inherits this mask: only the signal thread takes SIGTERM/SIGINT. */
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	memset(&ws, 0, sizeof ws);
	ws.cfg = &cfg;
	pthread_mutex_init(&ws.qlock, NULL);
	ws.page_limit = cfg.page_max < 200 ? cfg.page_max : 200;
	/*
	 * One send shard per eight workers: fewer shards make bigger group commits (fewer MySQL
	 * round trips and wake-ups per message); the other workers stay free for auth and replays.
	 * With 8 workers on 2 cores at 2,000 msgs/s one shard instead of two cut both parley-ws's
	 * and MySQL's CPU per message by about a third (docs/benchmarks.md).
	 */
	ws.send_shards = cfg.actor_workers > 0 ? ((unsigned)cfg.actor_workers + 7) / 8 : 1;
	ws.held = xcalloc(ws.send_shards, sizeof *ws.held);
	ws.gather = xcalloc(ws.send_shards, sizeof *ws.gather);
	if (ws.page_limit < 1)
		ws.page_limit = 1;
	ws_list(cfg.ws_origins, &ws.origins, &ws.norigins);
	ws_list(cfg.ws_trusted_proxies, &ws.proxies, &ws.nproxies);
	ws.max_conns = ws_conn_cap(&cfg);
	ws.conns = conns_new(ws.max_conns);
	if ((ws.bus = bus_new(cfg.bus_dir, &cause)) == NULL)
		fatal("bus: %s", cause);
	if (bus_host_id(cfg.bus_dir, cfg.bus_node_id, host_id, sizeof host_id, &cause) != 0)
		fatal("host id: %s", cause);
	ws_node_id(&ws, host_id);
	if (cfg.redis_url != NULL) {
		if ((ws.redis = redis_new(&cfg, host_id, &cause)) == NULL)
			fatal("redis: %s", cause);
		bus_set_bridge(ws.bus, &redis_bus_ops, ws.redis);
	}
	conns_set_bus(ws.conns, ws.bus);
	ws.journal = cache_journal_new();
	ws_listen_check(&cfg);
	ws_mysql_start(&ws);

	memset(&acfg, 0, sizeof acfg);
	acfg.workers = cfg.actor_workers;
	acfg.mailbox = cfg.actor_mailbox;
	acfg.retries = cfg.actor_retries;
	acfg.backoff_ms = cfg.actor_backoff_ms;
	acfg.idle_ms = cfg.actor_idle_ms;
	acfg.batch = WS_SEND_BATCH;
	ws.pool = actor_pool_new(&acfg, &ws_actor_ops, &ws);

	/* NOSIGMASK: signals stay with the signal thread (sigwait). */
	if ((ws.loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK)) == NULL)
		fatal("cannot create the event loop");
	ws.foreign_loops[0] = ws.loop;
	if ((ws.ctx = ws_context(&ws)) == NULL)
		fatal("cannot listen on %s port %d", cfg.ws_listen, cfg.ws_port);
	ws_tick_start(&ws);
	if (pthread_create(&bus_thread, NULL, ws_bus_thread, &ws) != 0 ||
	    pthread_create(&sig_thread, NULL, ws_signal_thread, &ws) != 0)
		fatal("cannot start threads");
	(void)pthread_setname_np(bus_thread, "ws-bus");
	(void)pthread_setname_np(sig_thread, "ws-signal");
	pthread_detach(sig_thread);
	log_info("listening on %s:%d (path /ws, subprotocol parley.v1), node %s", cfg.ws_listen,
	    cfg.ws_port, ws.node);

	ev_run(ws.loop, 0);	/* until the loop's ev_break() after the shutdown */

	/* Workers may still push results: they must not wake a context being destroyed. */
	ctx = ws.ctx;
	pthread_mutex_lock(&ws.qlock);
	ws.ctx = NULL;
	pthread_mutex_unlock(&ws.qlock);
	lws_context_destroy(ctx);
	ev_loop_destroy(ws.loop);
	/* Last chance for disconnects that found a full mailbox (the pool drains them). */
	while (ws.presence_retry != NULL) {
		struct job *j = ws.presence_retry;

		ws.presence_retry = j->next;
		if (actor_post(ws.pool, j->user, JOB_PRESENCE_DOWN, ACTOR_BACKPRESSURE, j) != 0)
			ws_job_free(JOB_PRESENCE_DOWN, j);
	}
	/* Held and gathered sends were never acknowledged: their clients send them again. */
	for (i = 0; i < ws.send_shards; i++) {
		ws_sends_free(&ws.held[i]);
		ws_sends_free(&ws.gather[i]);
	}
	free(ws.held);
	free(ws.gather);
	free(ws.wbuf);
	actor_pool_free(ws.pool);
	__atomic_store_n(&ws.bus_stop, 1, __ATOMIC_RELEASE);
	(void)bus_publish(ws.bus, BUS_SHUTDOWN, "", 0, NULL, 0);
	pthread_join(bus_thread, NULL);
	for (d = ws.qhead; d != NULL; d = dn) {
		dn = d->next;
		ws_done_free(d);
	}
	bus_set_bridge(ws.bus, NULL, NULL);
	redis_free(ws.redis);
	bus_free(ws.bus);
	cache_journal_free(ws.journal);
	conns_free(ws.conns);
	for (i = 0; i < ws.norigins; i++)
		free(ws.origins[i]);
	free(ws.origins);
	for (i = 0; i < ws.nproxies; i++)
		free(ws.proxies[i]);
	free(ws.proxies);
	log_info("stopped");
	config_clear(&cfg);
	return 0;
}
