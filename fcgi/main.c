/* main.c - parley-fcgi: the FastCGI application serving the HTTP API behind a web server. */
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <fastcgi.h>
#include <fcgiapp.h>

#include "bus.h"
#include "cache.h"
#include "chat.h"
#include "config.h"
#include "fcgi.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "park.h"
#include "redis.h"
#include "routes.h"
#include "store.h"
#include "xmalloc.h"

/* Listen backlog: a burst of thousands of long polls must not find the queue full. */
#define FCGI_BACKLOG		4096
/* A kept connection (FCGI_KEEP_CONN) is served again only if its next request comes this soon. */
#define FCGI_KEEP_IDLE_MS	20
/* How long SIGTERM waits for in-flight requests. */
#define FCGI_STOP_WAIT_S	15
/* systemd socket activation: the first passed fd. */
#define FCGI_SD_FD		3

struct fcgi_thread {
	struct fcgi_app	*app;
	pthread_t	 tid;
	int		 done;	/* atomic */
};

/*
 * libfcgi unlinks whatever is at the socket path before binding: a second parley-fcgi would take
 * the socket of a running one, and a mistyped path could delete a file. Refuse both; a socket
 * nobody answers on is stale and may go.
 */
static void
listen_path_check(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct stat st;
	int fd, rc;

	if (lstat(path, &st) < 0)
		return;
	if (!S_ISSOCK(st.st_mode))
		fatal("cannot listen on %s: it exists and is not a socket", path);
	if (strlen(path) >= sizeof sun.sun_path)
		return;	/* FCGX_OpenSocket says why */
	strcpy(sun.sun_path, path);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		fatal("socket: %s", strerror(errno));
	rc = connect(fd, (struct sockaddr *)&sun, sizeof sun);
	close(fd);
	if (rc == 0)
		fatal("cannot listen on %s: socket in use by another process", path);
}

/* Wait for MySQL as mysql.start_wait says; a MySQL that never answered stops start-up. */
static void
mysql_start(const struct config *cfg)
{
	struct store *s;
	char *cause = NULL;

	if (cfg->mysql_start_wait < 0)
		return;
	s = store_new(cfg);
	if (store_wait(s, cfg->mysql_start_wait, &cause) != 0)
		fatal("%s", cause);
	store_free(s);
}

/* --help: the text on stdout, exit 0; a usage error: on stderr, exit 2. */
static void
usage(int help)
{
	fprintf(help ? stdout : stderr,
	    "usage: parley-fcgi [--config FILE] [--listen ADDR] [--threads N]\n"
	    "  -c, --config FILE   configuration file (default $PARLEY_CONFIG)\n"
	    "  -l, --listen ADDR   /path.sock or host:port; overrides fcgi.listen\n"
	    "  -t, --threads N     request threads; overrides fcgi.threads\n"
	    "  -V, --version       print the version and exit\n"
	    "  -h, --help          this text\n"
	    "With a listening socket on fd 0 (spawn-fcgi) or passed by systemd, that one is used.\n"
	    "See parley-fcgi(8) and parley.conf(5).\n");
	exit(help ? 0 : 2);
}

static int
is_listening_socket(int fd)
{
	int v = 0;
	socklen_t len = sizeof v;

	return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0 && v;
}

/*
 * The listening socket: one passed by systemd (LISTEN_FDS) or spawn-fcgi (fd 0), else our own.
 * A UNIX socket is created with the configured mode from the start (umask), never
 * world-writable in between: whoever can write to it can crash libfcgi (docs/deploy.md).
 * *created gets the path we bound (to unlink at exit) or NULL.
 */
static int
open_listen(const struct config *cfg, char **created)
{
	const char *pid = getenv("LISTEN_PID"), *nfds = getenv("LISTEN_FDS");
	mode_t old;
	int fd;

	*created = NULL;
	if (pid != NULL && nfds != NULL && atol(pid) == (long)getpid() && atoi(nfds) >= 1 &&
	    is_listening_socket(FCGI_SD_FD)) {
		log_info("using the listening socket passed by systemd");
		return FCGI_SD_FD;
	}
	if (is_listening_socket(FCGI_LISTENSOCK_FILENO)) {
		log_info("using the listening socket on fd 0");
		return FCGI_LISTENSOCK_FILENO;
	}
	if (cfg->fcgi_listen[0] == '/') {
		listen_path_check(cfg->fcgi_listen);
		old = umask(~(mode_t)cfg->fcgi_socket_mode & 0777);
		fd = FCGX_OpenSocket(cfg->fcgi_listen, FCGI_BACKLOG);
		umask(old);
		if (fd < 0)
			fatal("cannot listen on %s: %s", cfg->fcgi_listen, strerror(errno));
		if (chmod(cfg->fcgi_listen, (mode_t)cfg->fcgi_socket_mode) < 0)
			fatal("chmod %s: %s", cfg->fcgi_listen, strerror(errno));
		*created = xstrdup(cfg->fcgi_listen);
	} else if ((fd = FCGX_OpenSocket(cfg->fcgi_listen, FCGI_BACKLOG)) < 0)
		fatal("cannot listen on %s: %s", cfg->fcgi_listen, strerror(errno));
	log_info("listening on %s", cfg->fcgi_listen);
	return fd;
}

/* Serve one accepted request. 1 when it was parked (detached: req no longer holds it). */
static int
serve(struct fcgi_app *app, struct chat *chat, FCGX_Request *req)
{
	struct http_req hr;
	struct http_resp resp;
	struct park_spec spec;
	enum route_result rr;
	int fd, id, unread;

	http_read(req, app->cfg.body_max, &hr);
	unread = hr.too_large || hr.bad_length;
	rr = routes_handle(app, chat, &hr, &resp, &spec);
	http_req_clear(&hr);
	if (rr == ROUTE_PARK) {
		/* Keep only the connection and the request id: a parked poll costs no libfcgi buffers. */
		fd = req->ipcFd;
		id = req->requestId;
		FCGX_Free(req, 0);
		req->ipcFd = -1;
		park_submit(app->park, chat, fd, id, &spec);
		return 1;
	}
	metrics_add(&app->metrics, M_HTTP_REQUESTS, 1);
	if (resp.status >= 400)
		metrics_add(&app->metrics, M_HTTP_ERRORS, 1);
	/* A body we did not read must not be taken for the next request. */
	if (unread)
		req->keepConnection = 0;
	(void)http_send(req, &resp);
	FCGX_Finish_r(req);
	http_resp_clear(&resp);
	return 0;
}

/* Wait until the listening socket may have a connection: 0, or -1 when shutting down. */
static int
wait_listen(struct fcgi_app *app)
{
	struct pollfd pfd[2];

	pfd[0].fd = app->listen_fd;
	pfd[0].events = POLLIN;
	pfd[1].fd = app->stop_fd;
	pfd[1].events = POLLIN;
	for (;;) {
		pfd[0].revents = pfd[1].revents = 0;
		if (poll(pfd, 2, -1) < 0 && errno != EINTR)
			fatal("poll: %s", strerror(errno));
		if (pfd[1].revents != 0)
			return -1;
		if (pfd[0].revents != 0)
			return 0;
	}
}

/*
 * A connection the web server wants kept (FCGI_KEEP_CONN): serve its next request if it comes
 * at once, else close it, so that an idle kept connection never ties up this thread.
 */
static void
keep_or_close(FCGX_Request *req)
{
	struct pollfd pfd;

	if (req->ipcFd < 0)
		return;
	pfd.fd = req->ipcFd;
	pfd.events = POLLIN;
	pfd.revents = 0;
	if (poll(&pfd, 1, FCGI_KEEP_IDLE_MS) > 0)
		return;
	/* Nothing unread is left, so a plain close (no lingering read) is safe. */
	req->detached = 1;
	FCGX_Free(req, 1);
}

/* A request thread: accept, serve, repeat; its own chat (MySQL and memcached connections). */
static void *
request_thread(void *arg)
{
	struct fcgi_thread *t = arg;
	struct fcgi_app *app = t->app;
	struct chat chat;
	FCGX_Request *req = NULL;
	int rc;

	chat_init(&chat, &app->cfg, app->bus, app->journal);
	for (;;) {
		if (__atomic_load_n(&app->stopping, __ATOMIC_ACQUIRE))
			break;
		if (req == NULL) {
			req = xcalloc(1, sizeof *req);
			FCGX_InitRequest(req, app->listen_fd, FCGI_FAIL_ACCEPT_ON_INTR);
		}
		if (req->ipcFd < 0 && wait_listen(app) < 0)
			break;
		/* The listening socket is non-blocking: another thread may have taken it (EAGAIN). */
		if ((rc = FCGX_Accept_r(req)) < 0) {
			if (rc == -EAGAIN || rc == -EWOULDBLOCK || rc == -EINTR)
				continue;
			if (__atomic_load_n(&app->stopping, __ATOMIC_ACQUIRE))
				break;
			log_warn("accept failed: %s", rc < 0 && rc > -4096 ? strerror(-rc) : "error");
			usleep(50000);
			continue;
		}
		if (serve(app, &chat, req)) {
			free(req);
			req = NULL;
			continue;
		}
		keep_or_close(req);
	}
	if (req != NULL) {
		req->detached = 1;
		FCGX_Free(req, 1);
		free(req);
	}
	chat_clear(&chat);
	__atomic_store_n(&t->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/* Every parked poll holds a connection fd: take the soft fd limit up to the hard one. */
static void
raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* Remove our socket at exit, unless another process has bound the path since (other inode). */
static void
unlink_ours(const char *path, const struct stat *bound)
{
	struct stat now;

	if (path == NULL)
		return;
	if (stat(path, &now) == 0 && now.st_ino == bound->st_ino && now.st_dev == bound->st_dev)
		unlink(path);
}

/* Join the request threads, waiting at most FCGI_STOP_WAIT_S for in-flight requests. */
static void
join_threads(struct fcgi_thread *threads, int n)
{
	int64_t until = parley_mono_ms() + FCGI_STOP_WAIT_S * 1000;
	int i, all;

	do {
		all = 1;
		for (i = 0; i < n; i++)
			all &= __atomic_load_n(&threads[i].done, __ATOMIC_ACQUIRE);
		if (all)
			break;
		usleep(10000);
	} while (parley_mono_ms() < until);
	if (!all) {
		log_warn("requests still running after %d s; exiting anyway", FCGI_STOP_WAIT_S);
		_exit(0);
	}
	for (i = 0; i < n; i++)
		pthread_join(threads[i].tid, NULL);
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "listen", required_argument, NULL, 'l' },
		{ "threads", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 }
	};
	struct fcgi_app app;
	struct fcgi_thread *threads;
	const char *cfgarg = NULL, *path;
	char *cause = NULL, *created = NULL;
	char host_id[BUS_HOST_ID_MAX + 1];
	struct stat bound;
	sigset_t set;
	uint64_t one = 1;
	int ch, i, rc, sig, flags;

	memset(&app, 0, sizeof app);
	while ((ch = getopt_long(argc, argv, "c:l:t:hV", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			cfgarg = optarg;
			break;
		case 'l':
		case 't':
			break;	/* applied after the file */
		case 'V':
			printf("parley-fcgi %s\n", PARLEY_VERSION);
			return 0;
		default:
			usage(ch == 'h');
		}
	}
	if (optind != argc)
		usage(0);
	/* config_load starts from the defaults; without a file it explains what is missing. */
	path = config_path(cfgarg);
	if (config_load(&app.cfg, path, &cause) < 0) {
		fprintf(stderr, "parley-fcgi: %s\n", cause);
		free(cause);
		return 1;
	}
	optind = 1;
	while ((ch = getopt_long(argc, argv, "c:l:t:hV", longopts, NULL)) != -1) {
		if ((ch == 'l' && config_set(&app.cfg, "fcgi.listen", optarg, &cause) < 0) ||
		    (ch == 't' && config_set(&app.cfg, "fcgi.threads", optarg, &cause) < 0)) {
			fprintf(stderr, "parley-fcgi: %s\n", cause);
			free(cause);
			config_clear(&app.cfg);
			return 1;
		}
	}
	if (config_validate(&app.cfg, &cause) < 0) {
		fprintf(stderr, "parley-fcgi: %s\n", cause);
		free(cause);
		config_clear(&app.cfg);
		return 1;
	}
	log_init("parley-fcgi", (enum log_level)app.cfg.log_level, app.cfg.log_syslog);
	app.started_ms = parley_now_ms();
	raise_fd_limit();

	/*
	 * libfcgi installs its own SIGTERM/SIGUSR1 handlers (a shutdown flag) in FCGX_Init: block
	 * the signals in every thread and take them with sigwait here instead. SIGPIPE never kills
	 * us: a web server that went away is an EPIPE on the write.
	 */
	if (FCGX_Init() != 0)
		fatal("FCGX_Init failed");
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	mysql_start(&app.cfg);
	app.listen_fd = open_listen(&app.cfg, &created);
	if (created != NULL && stat(created, &bound) < 0)
		fatal("stat %s: %s", created, strerror(errno));
	if ((flags = fcntl(app.listen_fd, F_GETFL)) < 0 ||
	    fcntl(app.listen_fd, F_SETFL, flags | O_NONBLOCK) < 0)
		fatal("fcntl: %s", strerror(errno));
	if ((app.stop_fd = eventfd(0, EFD_CLOEXEC)) < 0)
		fatal("eventfd: %s", strerror(errno));
	if ((app.bus = bus_new(app.cfg.bus_dir, &cause)) == NULL)
		fatal("bus: %s", cause);
	if (app.cfg.redis_url != NULL) {
		if (bus_host_id(app.cfg.bus_dir, app.cfg.bus_node_id, host_id, sizeof host_id,
		    &cause) != 0)
			fatal("host id: %s", cause);
		if ((app.redis = redis_new(&app.cfg, host_id, &cause)) == NULL)
			fatal("redis: %s", cause);
		bus_set_bridge(app.bus, &redis_bus_ops, app.redis);
	}
	app.journal = cache_journal_new();
	app.park = park_new(&app.cfg, &app.metrics, app.bus, app.journal);

	threads = xcalloc((size_t)app.cfg.fcgi_threads, sizeof *threads);
	for (i = 0; i < app.cfg.fcgi_threads; i++) {
		threads[i].app = &app;
		if ((rc = pthread_create(&threads[i].tid, NULL, request_thread, &threads[i])) != 0)
			fatal("pthread_create: %s", strerror(rc));
	}
	log_info("ready: %d request threads, %d workers, bus %s%s%s", app.cfg.fcgi_threads,
	    app.cfg.actor_workers, app.cfg.bus_dir, app.redis != NULL ? ", redis " : "",
	    app.redis != NULL ? app.cfg.redis_url : "");

	for (;;) {
		if (sigwait(&set, &sig) != 0)
			continue;
		if (sig == SIGTERM || sig == SIGINT)
			break;
		log_info("signal %d ignored", sig);
	}

	/* Stop accepting, answer the parked polls, let in-flight requests finish, then exit 0. */
	log_info("shutting down");
	__atomic_store_n(&app.stopping, 1, __ATOMIC_RELEASE);
	if (write(app.stop_fd, &one, sizeof one) < 0)
		log_warn("eventfd: %s", strerror(errno));
	park_shutdown(app.park);
	join_threads(threads, app.cfg.fcgi_threads);
	park_free(app.park);
	unlink_ours(created, &bound);
	close(app.listen_fd);
	bus_set_bridge(app.bus, NULL, NULL);
	redis_free(app.redis);
	bus_free(app.bus);
	cache_journal_free(app.journal);
	free(created);
	free(threads);
	log_info("stopped");
	config_clear(&app.cfg);
	return 0;
}
