/* store.c - MySQL/MariaDB storage: the connection, statements, transactions and shared helpers. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <errmsg.h>
#include <json-c/json.h>
#include <mysql.h>
#include <mysqld_error.h>

#include "config.h"
#include "log.h"
#include "protocol.h"
#include "store.h"
#include "store_int.h"
#include "xmalloc.h"

#define STORE_ATTEMPTS		5	/* runs of one transaction before giving up */
#define STORE_BACKOFF_MIN	100	/* ms between connection attempts after a failure ... */
#define STORE_BACKOFF_MAX	2000	/* ... doubling up to this */
#define STORE_COLBUF		128	/* first size of a result column buffer */
#define STORE_ATTEMPTS_KEEP	86400000	/* ms a gone store's store_attempts row is kept */

/*
 * The 2-row form is the common 1:1 message: its two events go in one round trip.
 */
const size_t store__chunks[STORE__NCHUNKS] = { 512, 256, 128, 64, 32, 16, 8, 4, 2, 1 };

static const char *const core_sql[Q_CORE_END - STORE__Q(STORE__SET_CORE)] = {
	/* Reserve k seqs in one statement; LAST_INSERT_ID(expr) hands back the last of them. */
	STORE__SQL(Q_SEQ_ALLOC) = "INSERT INTO user_seq (user_id, last_seq)"
	    " VALUES (?, LAST_INSERT_ID(?))"
	    " ON DUPLICATE KEY UPDATE last_seq = LAST_INSERT_ID(last_seq + ?)",
	STORE__SQL(Q_EV_INSERT_BODY) = "INSERT INTO events (user_id, seq, kind, body)"
	    " VALUES (?, ?, 2, ?)",
	STORE__SQL(Q_GROUP_GET) = "SELECT name FROM chat_groups WHERE id = ?",
	STORE__SQL(Q_MEMBERS) = "SELECT user_id, role FROM group_members WHERE group_id = ?"
	    " ORDER BY user_id",
	STORE__SQL(Q_ROLE) = "SELECT role FROM group_members WHERE group_id = ? AND user_id = ?",
	STORE__SQL(Q_ATT_GET) = "SELECT token, result FROM store_attempts WHERE owner = ?",
	STORE__SQL(Q_ATT_SET) = "INSERT INTO store_attempts (owner, token, result, ts)"
	    " VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE token = VALUES(token),"
	    " result = VALUES(result), ts = VALUES(ts)",
};
STORE__QSET_CHECK(Q_CORE_END, STORE__SET_CORE);
static const struct store__qset core_qset = { core_sql, Q_CORE_END - STORE__Q(STORE__SET_CORE),
    NULL };

/* Every statement set, by enum store__set. */
static const struct store__qset *const store__qsets[STORE__SET_COUNT] = {
	[STORE__SET_CORE] = &core_qset,
	[STORE__SET_SEND] = &store__send_qset,
	[STORE__SET_LOG] = &store__log_qset,
	[STORE__SET_RECEIPT] = &store__receipt_qset,
	[STORE__SET_GROUP] = &store__group_qset,
	[STORE__SET_PRESENCE] = &store__presence_qset,
	[STORE__SET_ROOM] = &store__room_qset,
	[STORE__SET_HISTORY] = &store__history_qset,
	[STORE__SET_RETENTION] = &store__retention_qset,
};

static pthread_once_t store_lib_once = PTHREAD_ONCE_INIT;

static void
store_lib_init(void)
{
	/* mysql_library_init is not thread-safe: run it once before any connection. */
	if (mysql_library_init(0, NULL, NULL) != 0)
		fatal("mysql_library_init failed");
}

/* --- connection -------------------------------------------------------------------------- */

/* Errors after which the connection is useless: drop it and reconnect. */
static int
store_err_lost(unsigned e)
{
	switch (e) {
	case CR_SERVER_GONE_ERROR:
	case CR_SERVER_LOST:
	case CR_SERVER_LOST_EXTENDED:
	case CR_COMMANDS_OUT_OF_SYNC:
	case CR_CONNECTION_ERROR:
	case CR_CONN_HOST_ERROR:
	case ER_CONNECTION_KILLED:
	case ER_SERVER_SHUTDOWN:
	case 4031:	/* ER_CLIENT_INTERACTION_TIMEOUT */
		return 1;
	}
	return 0;
}

static void
store_stmts_close(struct store *s)
{
	size_t i;

	for (i = 0; i < STORE__QMAX; i++) {
		if (s->q[i].st != NULL)
			mysql_stmt_close(s->q[i].st);
		s->q[i].st = NULL;
	}
}

static void
store_disconnect(struct store *s)
{
	s->chained = 0;
	store_stmts_close(s);
	if (s->my != NULL)
		mysql_close(s->my);
	s->my = NULL;
}

/*
 * May a multi-row INSERT of messages be used? Only when its rows get consecutive ids (lock mode
 * 0 or 1: a "simple insert" reserves them in one go), spaced by auto_increment_increment. Any
 * doubt (an error, another mode) leaves autoinc_step 0: one row per statement, as always.
 */
static void
store_autoinc_probe(struct store *s)
{
	const char *sql = "SELECT @@innodb_autoinc_lock_mode, @@auto_increment_increment";
	MYSQL_RES *r;
	MYSQL_ROW row;

	s->autoinc_step = 0;
	if (mysql_real_query(s->my, sql, strlen(sql)) != 0)
		return;
	if ((r = mysql_store_result(s->my)) == NULL)
		return;
	if ((row = mysql_fetch_row(r)) != NULL && row[0] != NULL && row[1] != NULL &&
	    strtoul(row[0], NULL, 10) <= 1)
		s->autoinc_step = strtoull(row[1], NULL, 10);
	mysql_free_result(r);
}

/*
 * Forget the store_attempts rows of stores gone for a day (a store that ends cleanly leaves its
 * row too: one small row per store ever made). Best effort: a failure here changes nothing.
 */
static void
store_attempts_prune(struct store *s)
{
	char sql[128];

	snprintf(sql, sizeof sql, "DELETE FROM store_attempts WHERE ts < %lld",
	    (long long)(parley_now_ms() - STORE_ATTEMPTS_KEEP));
	if (mysql_real_query(s->my, sql, strlen(sql)) != 0)
		log_warn("mysql: pruning store_attempts: %s", mysql_error(s->my));
}

/*
 * Make sure there is a connection. A failed attempt sets a backoff window (100 ms doubling to 2 s)
 * inside which calls fail at once with EAGAIN instead of hammering a server that is down; the
 * first call after the window tries again.
 */
static int
store_connect(struct store *s)
{
	const struct config *c = s->cfg;
	unsigned int ct, rw;
	char init[160];
	int64_t now;
	MYSQL *my;

	if (s->my != NULL) {
		/* Belt and braces: we never auto-reconnect, but a new thread id means new session. */
		if (mysql_thread_id(s->my) != s->thread_id) {
			store_stmts_close(s);
			s->thread_id = mysql_thread_id(s->my);
			s->reconnects++;
		}
		return 0;
	}
	now = parley_mono_ms();
	if (now < s->next_try) {
		errno = EAGAIN;
		return -1;
	}
	if ((my = mysql_init(NULL)) == NULL)
		fatal("mysql_init: out of memory");
	ct = (unsigned int)c->mysql_connect_timeout;
	rw = (unsigned int)c->mysql_rw_timeout;
	mysql_options(my, MYSQL_OPT_CONNECT_TIMEOUT, &ct);
	mysql_options(my, MYSQL_OPT_READ_TIMEOUT, &rw);
	mysql_options(my, MYSQL_OPT_WRITE_TIMEOUT, &rw);
	mysql_options(my, MYSQL_SET_CHARSET_NAME, "utf8mb4");
	/* READ COMMITTED: no gap locks, so concurrent appends only meet on the rows they touch. */
	mysql_options(my, MYSQL_INIT_COMMAND,
	    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED");
	/* The library keeps a copy of an init command: init may go out of scope. */
	snprintf(init, sizeof init, "SET SESSION sql_mode = "
	    "'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', innodb_lock_wait_timeout = %d",
	    c->mysql_lock_wait_timeout);
	mysql_options(my, MYSQL_INIT_COMMAND, init);
	if (mysql_real_connect(my, c->mysql_socket != NULL ? NULL : c->mysql_host, c->mysql_user,
	    c->mysql_password, c->mysql_database, c->mysql_socket != NULL ? 0 : c->mysql_port,
	    c->mysql_socket, 0) == NULL) {
		snprintf(s->down_why, sizeof s->down_why, "%s", mysql_error(my));
		if (!s->down_logged)
			log_warn("mysql: cannot connect: %s", s->down_why);
		s->down_logged = 1;
		mysql_close(my);
		s->backoff = s->backoff == 0 ? STORE_BACKOFF_MIN : s->backoff * 2;
		if (s->backoff > STORE_BACKOFF_MAX)
			s->backoff = STORE_BACKOFF_MAX;
		s->next_try = now + s->backoff;
		errno = EAGAIN;
		return -1;
	}
	if (s->connected_once) {
		s->reconnects++;
		if (s->down_logged)
			log_info("mysql: connected again");
	}
	s->connected_once = 1;
	s->down_logged = 0;
	s->backoff = 0;
	s->next_try = 0;
	s->my = my;
	s->thread_id = mysql_thread_id(my);
	store_autoinc_probe(s);
	store_attempts_prune(s);
	return 0;
}

/* --- statements ---------------------------------------------------------------------------- */

/* Note a MySQL error for store__run; the expected ones (retried or answered) are not logged. */
void
store__fail(struct store *s, unsigned e, const char *what)
{
	s->myerr = e != 0 ? e : CR_UNKNOWN_ERROR;
	/* A duplicate key is logged by store__run unless the body asks to retry it (a send's). */
	if (s->myerr == ER_DUP_ENTRY) {
		s->dup_what = what;
		snprintf(s->dup_msg, sizeof s->dup_msg, "%s", mysql_error(s->my));
	}
	if (!store_err_lost(s->myerr) && s->myerr != ER_LOCK_DEADLOCK &&
	    s->myerr != ER_LOCK_WAIT_TIMEOUT && s->myerr != ER_DUP_ENTRY)
		log_warn("mysql: %s: error %u: %s", what, s->myerr, mysql_error(s->my));
}

static void
store_col_bind(struct store_stmt *x, unsigned i)
{
	MYSQL_BIND *b = &x->rb[i];

	memset(b, 0, sizeof *b);
	b->buffer_type = MYSQL_TYPE_STRING;
	b->buffer = x->col[i].buf;
	b->buffer_length = x->col[i].cap - 1;	/* room for our NUL */
	b->length = &x->col[i].len;
	b->is_null = &x->col[i].null;
	b->error = &x->col[i].err;
}

/* The SQL of statement q: built for this store, or its set's constant text. */
static const char *
store_text(const struct store *s, unsigned q)
{
	const struct store__qset *set;
	const char *sql;

	if (s->msql[q] != NULL)
		return s->msql[q];
	set = q < STORE__QMAX ? store__qsets[q >> STORE__QBITS] : NULL;
	sql = set != NULL && (q & (STORE__QPER - 1)) < set->n ? set->sql[q & (STORE__QPER - 1)] : NULL;
	if (sql == NULL)
		fatal("store: statement %u has no SQL", q);
	return sql;
}

/*
 * The result columns of x, once its statement says how many. An INSERT ... RETURNING says so only
 * after its first execution (MariaDB answers its prepare with no columns): called then too.
 */
static void
store_cols(struct store_stmt *x)
{
	unsigned i;

	if (x->col != NULL || (x->ncol = mysql_stmt_field_count(x->st)) == 0)
		return;
	x->col = xcalloc(x->ncol, sizeof *x->col);
	x->rb = xcalloc(x->ncol, sizeof *x->rb);
	for (i = 0; i < x->ncol; i++) {
		x->col[i].cap = STORE_COLBUF;
		x->col[i].buf = xmalloc(STORE_COLBUF);
		store_col_bind(x, i);
	}
}

/* The prepared statement q of this connection, prepared now if it is not yet. */
static MYSQL_STMT *
store_stmt(struct store *s, unsigned q)
{
	struct store_stmt *x = &s->q[q];

	if (x->st != NULL)
		return x->st;
	if ((x->st = mysql_stmt_init(s->my)) == NULL)
		fatal("mysql_stmt_init: out of memory");
	if (mysql_stmt_prepare(x->st, store_text(s, q), strlen(store_text(s, q))) != 0) {
		store__fail(s, mysql_stmt_errno(x->st), "prepare");
		mysql_stmt_close(x->st);
		x->st = NULL;
		return NULL;
	}
	store_cols(x);
	return x->st;
}

/* Execute q with parameters p; a result set is buffered client-side, read it with store__fetch. */
int
store__exec(struct store *s, unsigned q, const struct store_param *p, size_t n)
{
	struct store_stmt *x = &s->q[q];
	unsigned long *len;
	MYSQL_STMT *st;
	MYSQL_BIND *b;
	size_t i;

	if ((st = store_stmt(s, q)) == NULL)
		return -1;
	if (mysql_stmt_param_count(st) != n)
		fatal("store: statement %d takes %lu parameters, not %zu", (int)q,
		    mysql_stmt_param_count(st), n);
	if (n > s->pcap) {
		s->pcap = n;
		s->pb = xreallocarray(s->pb, n, sizeof *s->pb);
		s->plen = xreallocarray(s->plen, n, sizeof *s->plen);
	}
	b = s->pb;
	len = s->plen;
	memset(b, 0, n * sizeof *b);
	for (i = 0; i < n; i++) {
		switch (p[i].t) {
		case SP_NULL:
			b[i].buffer_type = MYSQL_TYPE_NULL;
			break;
		case SP_STR:
			len[i] = strlen(p[i].s);
			b[i].buffer_type = MYSQL_TYPE_STRING;
			b[i].buffer = (void *)p[i].s;
			b[i].buffer_length = len[i];
			b[i].length = &len[i];
			break;
		case SP_U64:
			b[i].buffer_type = MYSQL_TYPE_LONGLONG;
			b[i].buffer = (void *)&p[i].u;
			b[i].is_unsigned = 1;
			break;
		case SP_I64:
			b[i].buffer_type = MYSQL_TYPE_LONGLONG;
			b[i].buffer = (void *)&p[i].i;
			break;
		}
	}
	if (mysql_stmt_bind_param(st, b) != 0 || mysql_stmt_execute(st) != 0) {
		store__fail(s, mysql_stmt_errno(st), store_text(s, q));
		return -1;
	}
	store_cols(x);
	if (x->ncol > 0 && (mysql_stmt_store_result(st) != 0 ||
	    mysql_stmt_bind_result(st, x->rb) != 0)) {
		store__fail(s, mysql_stmt_errno(st), store_text(s, q));
		return -1;
	}
	return 0;
}

/* Next row of q's result: 1 got one (read with col_*), 0 no more, -1 error. */
int
store__fetch(struct store *s, unsigned q)
{
	struct store_stmt *x = &s->q[q];
	struct store_col *c;
	unsigned i;
	int rc, grown = 0;

	rc = mysql_stmt_fetch(x->st);
	if (rc == MYSQL_NO_DATA)
		return 0;
	if (rc == 1) {
		store__fail(s, mysql_stmt_errno(x->st), "fetch");
		return -1;
	}
	for (i = 0; i < x->ncol; i++) {
		c = &x->col[i];
		if (c->null || c->len < c->cap)
			continue;
		/* Truncated: grow this column and fetch it again. */
		c->cap = c->len + 1;
		c->buf = xrealloc(c->buf, c->cap);
		store_col_bind(x, i);
		if (mysql_stmt_fetch_column(x->st, &x->rb[i], i, 0) != 0) {
			store__fail(s, mysql_stmt_errno(x->st), "fetch column");
			return -1;
		}
		grown = 1;
	}
	if (grown && mysql_stmt_bind_result(x->st, x->rb) != 0) {
		store__fail(s, mysql_stmt_errno(x->st), "bind");
		return -1;
	}
	for (i = 0; i < x->ncol; i++) {
		c = &x->col[i];
		c->buf[c->null ? 0 : c->len] = '\0';
	}
	return 1;
}

void
store__done(struct store *s, unsigned q)
{
	if (s->q[q].st != NULL)
		mysql_stmt_free_result(s->q[q].st);
}

/* Execute and fetch the first row: 1 row, 0 none, -1 error. The result stays readable. */
int
store__row(struct store *s, unsigned q, const struct store_param *p, size_t n)
{
	if (store__exec(s, q, p, n) != 0)
		return -1;
	return store__fetch(s, q);
}
#define ROW(s, q, ...) store__row((s), (q), (struct store_param[]){ __VA_ARGS__ }, \
	sizeof((struct store_param[]){ __VA_ARGS__ }) / sizeof(struct store_param))

/*
 * Run a multi-row statement over nrows rows of width parameters each: as few statements as the
 * prepared sizes allow (qs: the forms of store__chunks[] rows).
 */
int
store__exec_rows(struct store *s, const unsigned *qs, const struct store_param *p,
    size_t nrows, size_t width)
{
	size_t done = 0, i;

	while (done < nrows) {
		for (i = 0; store__chunks[i] > nrows - done; i++)
			;
		if (store__exec(s, qs[i], p + done * width, store__chunks[i] * width) != 0)
			return -1;
		done += store__chunks[i];
	}
	return 0;
}

const char *
store__col_s(struct store *s, unsigned q, unsigned i)
{
	return s->q[q].col[i].null ? NULL : s->q[q].col[i].buf;
}

int
store__col_null(struct store *s, unsigned q, unsigned i)
{
	return s->q[q].col[i].null;
}

uint64_t
store__col_u(struct store *s, unsigned q, unsigned i)
{
	return s->q[q].col[i].null ? 0 : strtoull(s->q[q].col[i].buf, NULL, 10);
}

int64_t
store__col_i(struct store *s, unsigned q, unsigned i)
{
	return s->q[q].col[i].null ? 0 : strtoll(s->q[q].col[i].buf, NULL, 10);
}

uint64_t
store__affected(struct store *s, unsigned q)
{
	return mysql_stmt_affected_rows(s->q[q].st);
}

uint64_t
store__insert_id(struct store *s, unsigned q)
{
	return mysql_stmt_insert_id(s->q[q].st);
}

/* Plain SQL without parameters (transaction control). */
static int
store_sql_plain(struct store *s, const char *sql)
{
	if (mysql_real_query(s->my, sql, strlen(sql)) != 0) {
		store__fail(s, mysql_errno(s->my), sql);
		return -1;
	}
	return 0;
}

/* Fail the current attempt with a logical error (not MySQL's): no retry, errno reaches the caller. */
int
store__refuse(int err)
{
	errno = err;
	return -1;
}

/* --- transactions -------------------------------------------------------------------------- */

/* The next of the store's random numbers (splitmix64): never 0. */
static uint64_t
store_rand(struct store *s)
{
	uint64_t z;

	do {
		z = (s->rng += 0x9e3779b97f4a7c15ULL);
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
		z ^= z >> 31;
	} while (z == 0);
	return z;
}

/*
 * Is the empty transaction our last COMMIT AND CHAIN opened still open? Both our note and the
 * server's word (the status flags of its last answer) must say so: anything else that ended it
 * (a rollback, a deadlock, a new connection) clears one or the other.
 */
static int
store_in_chain(const struct store *s)
{
	return s->chained && (s->my->server_status & SERVER_STATUS_IN_TRANS) != 0;
}

/* End a transaction: COMMIT (AND CHAIN when chaining), or ROLLBACK; 0, or -1 (s->myerr). */
static int
store_end(struct store *s, int commit)
{
	int rc;

	s->chained = 0;
	if (!commit)
		rc = mysql_rollback(s->my);
	else if (s->chain)
		rc = mysql_real_query(s->my, "COMMIT AND CHAIN", 16);
	else
		rc = mysql_commit(s->my);
	if (rc != 0) {
		store__fail(s, mysql_errno(s->my), commit ? "COMMIT" : "ROLLBACK");
		return -1;
	}
	s->chained = commit && s->chain;
	return 0;
}

/* One attempt: 0 done, -1 logical failure (errno), -2 MySQL failure (s->myerr). */
static int
store_attempt(struct store *s, int txn, store__fn fn, void *arg)
{
	int rc, err;

	if (store_in_chain(s)) {
		/*
		 * A write joins the open empty transaction: no START TRANSACTION. Anything else
		 * (reads, autocommit writes) must not run in it: it ends first, so that an
		 * autocommit write is durable when it returns and a read leaves nothing open.
		 */
		if (!txn) {
			s->chained = 0;
			if (store_sql_plain(s, "COMMIT") != 0)
				return -2;
		}
	} else if (txn && store_sql_plain(s, "START TRANSACTION") != 0) {
		return -2;
	}
	rc = fn(s, arg);
	if (rc < 0) {
		if (s->myerr != 0)
			return -2;
		err = errno;
		if (txn) {
			s->chained = 0;
			mysql_rollback(s->my);	/* an error here shows on the next statement */
		}
		errno = err;
		return -1;
	}
	if (!txn)
		return 0;
	if (store_end(s, rc == 0) != 0) {
		/* The server may have applied it and lost only the answer: the re-run checks. */
		if (rc == 0 && store_err_lost(s->myerr))
			s->unsure = 1;
		return -2;
	}
	return 0;
}

/*
 * Run fn (in one transaction when txn) until it succeeds, fails for a reason of its own, or fails
 * STORE_ATTEMPTS times for a reason a re-run can cure: deadlock, lock-wait timeout, a lost
 * connection (the transaction is re-run on a new connection, all statements prepared again), or
 * a duplicate key the body asked to retry. fn must start from scratch on every run.
 *
 * A COMMIT whose answer is lost may have been applied: the re-run then meets its own effects.
 * Every write body tells them from others' (store__mine, the attempt token of this call), so a
 * re-run answers what the first run did: the same targets, the same group, the same change.
 */
int
store__run(struct store *s, int txn, store__fn fn, void *arg)
{
	int attempt, rc, lost;

	s->token = store_rand(s);
	s->unsure = 0;
	for (attempt = 1;; attempt++) {
		if (store_connect(s) != 0)
			return -1;
		s->myerr = 0;
		s->retry_ok = 0;
		if ((rc = store_attempt(s, txn, fn, arg)) != -2)
			return rc;
		lost = store_err_lost(s->myerr);
		s->chained = 0;
		if (lost)
			store_disconnect(s);
		else if (txn)
			mysql_rollback(s->my);
		if (!lost && s->myerr != ER_LOCK_DEADLOCK && s->myerr != ER_LOCK_WAIT_TIMEOUT &&
		    !s->retry_ok) {
			/* A duplicate key nobody expected is a broken invariant: say where. */
			if (s->myerr == ER_DUP_ENTRY)
				log_error("mysql: duplicate key in statement \"%s\": %s",
				    s->dup_what != NULL ? s->dup_what : "?", s->dup_msg);
			errno = EIO;
			return -1;
		}
		if (attempt >= STORE_ATTEMPTS) {
			log_warn("mysql: giving up after %d attempts (error %u)", attempt, s->myerr);
			/*
			 * Lost connections, deadlocks and lock waits all pass: unavailable, retry
			 * later (503). Only a duplicate key retried in vain is an internal error.
			 */
			errno = s->retry_ok ? EIO : EAGAIN;
			return -1;
		}
		if (!lost && !s->retry_ok)	/* let the other transaction finish */
			usleep((useconds_t)(1000 * attempt + rand_r(&s->seed) % 4000));
	}
}

/* Run a read-only body that leaves a JSON text in *slot: hand it over in *json, or free it. */
int
store__run_json(struct store *s, store__fn fn, void *ctx, char **slot, char **json)
{
	if (store__run(s, 0, fn, ctx) != 0) {
		free(*slot);
		*slot = NULL;
		return -1;
	}
	*json = *slot;
	return 0;
}

/* --- attempt tokens --------------------------------------------------------------------- */

/* "a b user seq user seq ...": what store__mark records (user ids have no spaces). */
static char *
store_result_text(uint64_t a, uint64_t b, const struct store_targets *t)
{
	size_t i, n = t != NULL ? t->n : 0, len = 48 + n * (PARLEY_ID_MAX + 24), off;
	char *r = xmalloc(len);

	off = (size_t)snprintf(r, len, "%llu %llu", (unsigned long long)a, (unsigned long long)b);
	for (i = 0; i < n; i++)
		off += (size_t)snprintf(r + off, len - off, " %s %llu", t->v[i].user,
		    (unsigned long long)t->v[i].seq);
	return r;
}

/* Read back a store_result_text; 0, or -1 when it is not one. */
static int
store_result_parse(const char *r, uint64_t *a, uint64_t *b, struct store_targets *t)
{
	char user[PARLEY_ID_MAX + 1];
	unsigned long long x, y;
	int used;

	if (sscanf(r, "%llu %llu%n", &x, &y, &used) != 2)
		return -1;
	*a = x;
	*b = y;
	r += used;
	while (*r == ' ') {
		if (sscanf(r, " %64s %llu%n", user, &x, &used) != 2)
			return -1;
		if (t != NULL)
			store__targets_push(t, user, x);
		r += used;
	}
	return *r == '\0' ? 0 : -1;
}

int
store__mine(struct store *s, uint64_t *a, uint64_t *b, struct store_targets *t)
{
	int rc;

	if (!s->unsure)
		return 0;
	rc = ROW(s, Q_ATT_GET, PU(s->owner));
	if (rc == 1 && store__col_u(s, Q_ATT_GET, 0) == s->token) {
		store_targets_clear(t);
		if (store_result_parse(store__col_s(s, Q_ATT_GET, 1), a, b, t) != 0) {
			log_warn("store: unreadable store_attempts result");
			rc = -1;
			errno = EIO;
		}
	} else if (rc == 1)
		rc = 0;
	store__done(s, Q_ATT_GET);
	return rc;
}

int
store__mark(struct store *s, uint64_t a, uint64_t b, const struct store_targets *t)
{
	char *r = store_result_text(a, b, t);
	int rc;

	rc = EXEC(s, Q_ATT_SET, PU(s->owner), PU(s->token), PS(r), PI(parley_now_ms()));
	free(r);
	return rc;
}

/* --- small helpers ------------------------------------------------------------------------- */

void
store__targets_push(struct store_targets *t, const char *user, uint64_t seq)
{
	t->v = xreallocarray(t->v, t->n + 1, sizeof *t->v);
	snprintf(t->v[t->n].user, sizeof t->v[t->n].user, "%s", user);
	t->v[t->n].seq = seq;
	t->n++;
}

void
store_targets_clear(struct store_targets *t)
{
	if (t == NULL)
		return;
	free(t->v);
	t->v = NULL;
	t->n = 0;
}

void
store_send_res_clear(struct store_send_res *r)
{
	if (r == NULL)
		return;
	store_targets_clear(&r->targets);
}

void
store_page_clear(struct store_page *p)
{
	size_t i;

	if (p == NULL)
		return;
	for (i = 0; i < p->n; i++)
		free(p->events[i]);
	free(p->events);
	free(p->ids);
	p->events = NULL;
	p->ids = NULL;
	p->n = 0;
}

void
store__page_push(struct store_page *p, char *ev)
{
	p->events = xreallocarray(p->events, p->n + 1, sizeof *p->events);
	p->events[p->n++] = ev;
}

void
store__strv_free(char **v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

int
store__strp_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

char *
store__json_take(struct json_object *o)
{
	char *s;

	s = xstrdup(json_object_to_json_string_ext(o,
	    JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
	return s;
}

/* Reserve k consecutive seqs in user's log; *first gets the first. Locks the user's seq row. */
int
store__seq_alloc(struct store *s, const char *user, uint64_t k, uint64_t *first)
{
	if (EXEC(s, Q_SEQ_ALLOC, PS(user), PU(k), PU(k)) != 0)
		return -1;
	*first = store__insert_id(s, Q_SEQ_ALLOC) - k + 1;
	return 0;
}

/* Append a complete (seq included) event text to user's log and name user in targets. */
int
store__event_append_body(struct store *s, const char *user, uint64_t seq, const char *body,
    struct store_targets *t)
{
	if (EXEC(s, Q_EV_INSERT_BODY, PS(user), PU(seq), PS(body)) != 0)
		return -1;
	if (t != NULL)
		store__targets_push(t, user, seq);
	return 0;
}

/* The members of group g, sorted (caller frees); *admins (may be NULL) flags for each. */
int
store__group_load(struct store *s, uint64_t g, char ***members, size_t *n, int **admins)
{
	int rc;

	*members = NULL;
	*n = 0;
	if (admins != NULL)
		*admins = NULL;
	if (EXEC(s, Q_MEMBERS, PU(g)) != 0)
		return -1;
	while ((rc = store__fetch(s, Q_MEMBERS)) == 1) {
		*members = xreallocarray(*members, *n + 1, sizeof **members);
		(*members)[*n] = xstrdup(store__col_s(s, Q_MEMBERS, 0));
		if (admins != NULL) {
			*admins = xreallocarray(*admins, *n + 1, sizeof **admins);
			(*admins)[*n] = store__col_u(s, Q_MEMBERS, 1) == 1;
		}
		(*n)++;
	}
	store__done(s, Q_MEMBERS);
	return rc;
}

/* 1 when group g exists, 0 when not, -1 error; *name (may be NULL) gets a copy of its name. */
int
store__group_exists(struct store *s, uint64_t g, char **name)
{
	int rc;

	rc = ROW(s, Q_GROUP_GET, PU(g));
	if (rc == 1 && name != NULL)
		*name = xstrdup(store__col_s(s, Q_GROUP_GET, 0));
	store__done(s, Q_GROUP_GET);
	return rc;
}

/* user's role in g: 1 admin, 0 member, -2 not a member, -1 error. */
int
store__group_role(struct store *s, uint64_t g, const char *user)
{
	int rc;

	if ((rc = ROW(s, Q_ROLE, PU(g), PS(user))) == 1)
		rc = store__col_u(s, Q_ROLE, 0) == 1;
	else if (rc == 0)
		rc = -2;
	store__done(s, Q_ROLE);
	return rc;
}

/* --- life cycle ------------------------------------------------------------------------- */

/* head row,row,...(n times) tail */
char *
store__multi_sql(const char *head, const char *row, size_t n, const char *tail)
{
	size_t len = strlen(head) + n * (strlen(row) + 1) + strlen(tail) + 1;
	char *sql = xmalloc(len);
	size_t i;

	strcpy(sql, head);
	for (i = 0; i < n; i++) {
		if (i > 0)
			strcat(sql, ",");
		strcat(sql, row);
	}
	strcat(sql, tail);
	return sql;
}

struct store *
store_new(const struct config *cfg)
{
	const struct store__qset *set;
	struct store *s;
	unsigned i, k;

	pthread_once(&store_lib_once, store_lib_init);
	s = xcalloc(1, sizeof *s);
	s->cfg = cfg;
	s->seed = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)s;
	/* owner must differ between stores (each has its own store_attempts row): random. */
	if (getrandom(&s->rng, sizeof s->rng, GRND_NONBLOCK) != (ssize_t)sizeof s->rng)
		s->rng = (uint64_t)time(NULL) << 32 ^ (uint64_t)(uintptr_t)s ^ (uint64_t)getpid();
	s->owner = store_rand(s);
	/* The texts a set builds (the multi-row forms): once per store, freed with it. */
	for (k = 0; k < STORE__SET_COUNT; k++) {
		set = store__qsets[k];
		for (i = 0; i < set->n; i++) {
			if (set->sql[i] == NULL)
				s->msql[STORE__Q(k) + i] = set->make(i);
		}
	}
	return s;
}

void
store_free(struct store *s)
{
	size_t i;
	unsigned j;

	if (s == NULL)
		return;
	store_disconnect(s);
	for (i = 0; i < STORE__QMAX; i++) {
		for (j = 0; s->q[i].col != NULL && j < s->q[i].ncol; j++)
			free(s->q[i].col[j].buf);
		free(s->q[i].col);
		free(s->q[i].rb);
		free(s->msql[i]);
	}
	free(s->pb);
	free(s->plen);
	free(s);
}

uint64_t
store_reconnects(const struct store *s)
{
	return s->reconnects;
}

void
store_chain_transactions(struct store *s, int on)
{
	s->chain = on != 0;
}

static int
ping_fn(struct store *s, void *arg)
{
	if (mysql_ping(s->my) != 0) {
		store__fail(s, mysql_errno(s->my), "ping");
		return -1;
	}
	return 0;
}

int
store_ping(struct store *s)
{
	return store__run(s, 0, ping_fn, NULL);
}

int
store_wait(struct store *s, int seconds, char **cause)
{
	int64_t deadline = parley_mono_ms() + (int64_t)seconds * 1000;

	for (;;) {
		if (store_ping(s) == 0)
			return 0;
		if (parley_mono_ms() >= deadline)
			break;
		usleep(250 * 1000);
		s->next_try = 0;	/* this loop is the backoff */
	}
	xasprintf(cause, "MySQL did not answer within %d s (mysql.start_wait): %s", seconds,
	    s->down_why[0] != '\0' ? s->down_why : strerror(errno));
	return -1;
}
