/* store.c - MySQL/MariaDB storage: messages, per-user event logs, cursors, receipts, groups, rooms. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
#include "xmalloc.h"

/* MySQL 8's client library dropped my_bool; libmariadb still has it. */
#if !defined(MARIADB_BASE_VERSION) && !defined(MARIADB_PACKAGE_VERSION) && MYSQL_VERSION_ID >= 80000
#define my_bool bool
#endif

#define STORE_ATTEMPTS		5	/* runs of one transaction before giving up */
#define STORE_BACKOFF_MIN	100	/* ms between connection attempts after a failure ... */
#define STORE_BACKOFF_MAX	2000	/* ... doubling up to this */
#define STORE_COLBUF		128	/* first size of a result column buffer */

/*
 * Event kinds in the events table. A new_message event only references its message (the content
 * is stored once, in messages, and the event is encoded on read); every other event is stored as
 * its complete JSON text, seq included: the seq is known when the row is written, so reading a
 * page never parses JSON.
 */
enum store_ev { EV_MESSAGE = 1, EV_BODY = 2 };

/* Every statement the store uses; each is prepared once per connection, on first use. */
enum store_q {
	Q_MSG_FIND,
	Q_MSG_INSERT,
	Q_MSG_GET,
	Q_SEQ_ALLOC,
	Q_SEQ_GET,
	Q_EV_INSERT_MSG,
	Q_EV_INSERT_BODY,
	Q_EV_PAGE,
	Q_CONV_UPSERT,
	Q_CONV_MARKERS,
	Q_CONV_MARKERS_LOCK,
	Q_CONV_SET_MARKERS,
	Q_CONV_SET_READ,
	Q_UNREAD_PAIR,
	Q_UNREAD_GROUP,
	Q_CONV_LIST,
	Q_RCPT_PAIR,
	Q_RCPT_GROUP,
	Q_GROUP_OTHERS,
	Q_CUR_GET,
	Q_CUR_SET,
	Q_GROUP_INSERT,
	Q_GROUP_GET,
	Q_MEMBER_INSERT,
	Q_MEMBER_DELETE,
	Q_MEMBERS,
	Q_ROLE,
	Q_PRES_LOCK,
	Q_PRES_SUM,
	Q_PRES_INC,
	Q_PRES_DEC,
	Q_PRES_SEEN,
	Q_PRES_RESET_SEEN,
	Q_PRES_RESET_DEL,
	Q_PRES_GET,
	Q_RATE_LOCK,
	Q_RATE_COUNT,
	Q_RATE_LOG,
	Q_RATE_PRUNE,
	Q_ROOM_INSERT,
	Q_ROOM_NTH,
	Q_ROOM_TRIM,
	Q_ROOM_PAGE,
	/* Multi-row forms of Q_EV_INSERT_MSG and Q_CONV_UPSERT (their SQL is built in store_new). */
	Q_EV_M2,
	Q_EV_M4,
	Q_EV_M16,
	Q_EV_M64,
	Q_CONV_M2,
	Q_CONV_M4,
	Q_CONV_M16,
	Q_CONV_M64,
	/* Multi-row seq reservation and its read-back (SQL built in store_new, every size). */
	Q_SEQ_M1,
	Q_SEQ_M2,
	Q_SEQ_M4,
	Q_SEQ_M16,
	Q_SEQ_M64,
	Q_SEQ_IN1,
	Q_SEQ_IN2,
	Q_SEQ_IN4,
	Q_SEQ_IN16,
	Q_SEQ_IN64,
	/* Multi-row forms of Q_MSG_INSERT (used only when the ids they get are consecutive). */
	Q_MSG_M2,
	Q_MSG_M4,
	Q_MSG_M16,
	Q_MSG_M64,
	Q_COUNT
};

/*
 * Rows per statement of the multi-row forms, largest first; the last is the one-row form. The
 * 2-row form is the common 1:1 message: its two events and two conversation rows go in one
 * round trip each.
 */
static const size_t store_chunks[] = { 64, 16, 4, 2, 1 };
static const enum store_q store_ev_rows[] = { Q_EV_M64, Q_EV_M16, Q_EV_M4, Q_EV_M2,
    Q_EV_INSERT_MSG };
static const enum store_q store_conv_rows[] = { Q_CONV_M64, Q_CONV_M16, Q_CONV_M4, Q_CONV_M2,
    Q_CONV_UPSERT };
static const enum store_q store_msg_rows[] = { Q_MSG_M64, Q_MSG_M16, Q_MSG_M4, Q_MSG_M2,
    Q_MSG_INSERT };
static const enum store_q store_seq_rows[] = { Q_SEQ_M64, Q_SEQ_M16, Q_SEQ_M4, Q_SEQ_M2,
    Q_SEQ_M1 };
static const enum store_q store_seq_in[] = { Q_SEQ_IN64, Q_SEQ_IN16, Q_SEQ_IN4, Q_SEQ_IN2,
    Q_SEQ_IN1 };

#define EV_HEAD		"INSERT INTO events (user_id, seq, kind, message_id) VALUES "
#define EV_ROW		"(?, ?, 1, ?)"
#define EV_WIDTH	3
#define CONV_HEAD	"INSERT INTO conversations (user_id, group_id, peer, last_message_id," \
			" last_ts, unread) VALUES "
#define CONV_ROW	"(?, ?, ?, ?, ?, ?)"
#define CONV_WIDTH	6
/* ts is assigned before id: MySQL evaluates the assignments left to right. */
#define CONV_TAIL	" ON DUPLICATE KEY UPDATE" \
	" last_ts = IF(VALUES(last_message_id) > last_message_id, VALUES(last_ts), last_ts)," \
	" last_message_id = GREATEST(last_message_id, VALUES(last_message_id))," \
	" unread = unread + VALUES(unread)"

/*
 * Reserve seqs of many users with one statement per chunk; the new last_seq values are read back
 * by the IN query (the rows are locked by then, so they hold exactly what this transaction made).
 */
#define MSG_HEAD	"INSERT INTO messages (sender, recipient, group_id, content, client_msg_id," \
			" ts, sender_seq) VALUES "
#define MSG_ROW		"(?, ?, ?, ?, ?, ?, ?)"
#define MSG_WIDTH	7

#define SEQ_HEAD	"INSERT INTO user_seq (user_id, last_seq) VALUES "
#define SEQ_ROW		"(?, ?)"
#define SEQ_WIDTH	2
#define SEQ_TAIL	" ON DUPLICATE KEY UPDATE last_seq = last_seq + VALUES(last_seq)"
#define SEQ_IN_HEAD	"SELECT user_id, last_seq FROM user_seq WHERE user_id IN ("

static const char *const store_sql[Q_COUNT] = {
	[Q_MSG_FIND] = "SELECT id, sender_seq, ts FROM messages WHERE sender = ? AND client_msg_id = ?",
	[Q_MSG_INSERT] = MSG_HEAD MSG_ROW,
	[Q_MSG_GET] = "SELECT sender, recipient, group_id FROM messages WHERE id = ?",
	/* Reserve k seqs in one statement; LAST_INSERT_ID(expr) hands back the last of them. */
	[Q_SEQ_ALLOC] = "INSERT INTO user_seq (user_id, last_seq) VALUES (?, LAST_INSERT_ID(?))"
	    " ON DUPLICATE KEY UPDATE last_seq = LAST_INSERT_ID(last_seq + ?)",
	[Q_SEQ_GET] = "SELECT last_seq FROM user_seq WHERE user_id = ?",
	[Q_EV_INSERT_MSG] = EV_HEAD EV_ROW,
	[Q_EV_INSERT_BODY] = "INSERT INTO events (user_id, seq, kind, body) VALUES (?, ?, 2, ?)",
	[Q_EV_PAGE] = "SELECT e.seq, e.kind, e.body, m.id, m.sender, m.recipient, m.group_id,"
	    " m.content, m.client_msg_id, m.ts FROM events e LEFT JOIN messages m"
	    " ON m.id = e.message_id WHERE e.user_id = ? AND e.seq > ? ORDER BY e.seq LIMIT ?",
	[Q_CONV_UPSERT] = CONV_HEAD CONV_ROW CONV_TAIL,
	[Q_CONV_MARKERS] = "SELECT delivered_upto, read_upto FROM conversations"
	    " WHERE user_id = ? AND group_id = ? AND peer = ?",
	[Q_CONV_MARKERS_LOCK] = "SELECT delivered_upto, read_upto FROM conversations"
	    " WHERE user_id = ? AND group_id = ? AND peer = ? FOR UPDATE",
	[Q_CONV_SET_MARKERS] = "UPDATE conversations SET delivered_upto = ?, read_upto = ?"
	    " WHERE user_id = ? AND group_id = ? AND peer = ?",
	[Q_CONV_SET_READ] = "UPDATE conversations SET delivered_upto = ?, read_upto = ?, unread = ?"
	    " WHERE user_id = ? AND group_id = ? AND peer = ?",
	[Q_UNREAD_PAIR] = "SELECT COUNT(*) FROM messages WHERE recipient = ? AND sender = ? AND id > ?",
	[Q_UNREAD_GROUP] = "SELECT COUNT(*) FROM messages WHERE group_id = ? AND id > ? AND sender <> ?",
	[Q_CONV_LIST] = "SELECT c.group_id, c.peer, c.unread, c.last_ts, m.id, m.sender, m.recipient,"
	    " m.group_id, m.content, m.client_msg_id, m.ts FROM conversations c JOIN messages m"
	    " ON m.id = c.last_message_id WHERE c.user_id = ?"
	    " ORDER BY c.last_ts DESC, c.last_message_id DESC LIMIT ?",
	[Q_RCPT_PAIR] = "SELECT delivered_upto, read_upto FROM conversations"
	    " WHERE user_id = ? AND group_id = 0 AND peer = ?",
	[Q_RCPT_GROUP] = "SELECT c.user_id, c.read_upto >= ? FROM group_members gm"
	    " JOIN conversations c ON c.user_id = gm.user_id AND c.group_id = gm.group_id"
	    " AND c.peer = '' WHERE gm.group_id = ? AND gm.user_id <> ? AND c.delivered_upto >= ?"
	    " ORDER BY c.user_id",
	[Q_GROUP_OTHERS] = "SELECT COUNT(*) FROM group_members WHERE group_id = ? AND user_id <> ?",
	[Q_CUR_GET] = "SELECT cur_seq FROM device_cursors WHERE user_id = ? AND device_id = ?",
	[Q_CUR_SET] = "INSERT INTO device_cursors (user_id, device_id, cur_seq) VALUES (?, ?, ?)"
	    " ON DUPLICATE KEY UPDATE cur_seq = VALUES(cur_seq)",
	[Q_GROUP_INSERT] = "INSERT INTO chat_groups (name, creator, created_ts) VALUES (?, ?, ?)",
	[Q_GROUP_GET] = "SELECT name FROM chat_groups WHERE id = ?",
	[Q_MEMBER_INSERT] = "INSERT IGNORE INTO group_members (group_id, user_id, role) VALUES (?, ?, ?)",
	[Q_MEMBER_DELETE] = "DELETE FROM group_members WHERE group_id = ? AND user_id = ?",
	[Q_MEMBERS] = "SELECT user_id, role FROM group_members WHERE group_id = ? ORDER BY user_id",
	[Q_ROLE] = "SELECT role FROM group_members WHERE group_id = ? AND user_id = ?",
	/* The presence_users row is the per-user lock that serialises connection counting. */
	[Q_PRES_LOCK] = "INSERT INTO presence_users (user_id, last_seen) VALUES (?, 0)"
	    " ON DUPLICATE KEY UPDATE last_seen = last_seen",
	[Q_PRES_SUM] = "SELECT COALESCE(SUM(conns), 0) FROM presence_nodes WHERE user_id = ?",
	[Q_PRES_INC] = "INSERT INTO presence_nodes (user_id, node, conns) VALUES (?, ?, 1)"
	    " ON DUPLICATE KEY UPDATE conns = conns + 1",
	[Q_PRES_DEC] = "UPDATE presence_nodes SET conns = conns - 1"
	    " WHERE user_id = ? AND node = ? AND conns > 0",
	[Q_PRES_SEEN] = "UPDATE presence_users SET last_seen = ? WHERE user_id = ?",
	[Q_PRES_RESET_SEEN] = "UPDATE presence_users SET last_seen = ? WHERE user_id IN"
	    " (SELECT user_id FROM presence_nodes WHERE node = ? AND conns > 0)",
	[Q_PRES_RESET_DEL] = "DELETE FROM presence_nodes WHERE node = ?",
	[Q_PRES_GET] = "SELECT (SELECT COALESCE(SUM(conns), 0) FROM presence_nodes WHERE user_id = ?),"
	    " (SELECT COALESCE(MAX(last_seen), 0) FROM presence_users WHERE user_id = ?)",
	/* The user's room_rate row is the lock that serialises their posts across processes. */
	[Q_RATE_LOCK] = "INSERT INTO room_rate (user_id, win, n) VALUES (?, 0, 0) ON DUPLICATE KEY"
	    " UPDATE n = n",
	[Q_RATE_COUNT] = "SELECT COUNT(*) FROM room_rate_log WHERE user_id = ? AND ts > ?",
	[Q_RATE_LOG] = "INSERT INTO room_rate_log (user_id, ts) VALUES (?, ?)",
	[Q_RATE_PRUNE] = "DELETE FROM room_rate_log WHERE user_id = ? AND ts <= ?",
	[Q_ROOM_INSERT] = "INSERT INTO room_messages (room, user_id, text, ts) VALUES (?, ?, ?, ?)",
	[Q_ROOM_NTH] = "SELECT id FROM room_messages WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
	[Q_ROOM_TRIM] = "DELETE FROM room_messages WHERE room = ? AND id <= ?",
	[Q_ROOM_PAGE] = "SELECT id, user_id, text, ts FROM room_messages WHERE room = ? AND id > ?"
	    " ORDER BY id LIMIT ?",
};

/* One result column, fetched as text into a buffer that grows on truncation. */
struct store_col {
	char		*buf;
	unsigned long	 cap;
	unsigned long	 len;
	my_bool		 null;
	my_bool		 err;
};

/* A statement of the current connection and its own result buffers (kept across reconnects). */
struct store_stmt {
	MYSQL_STMT		*st;
	unsigned		 ncol;
	struct store_col	*col;
	MYSQL_BIND		*rb;
};

struct store {
	const struct config	*cfg;
	MYSQL			*my;
	unsigned long		 thread_id;	/* of the connection the statements belong to */
	struct store_stmt	 q[Q_COUNT];
	char			*msql[Q_COUNT];	/* SQL of the multi-row forms */
	MYSQL_BIND		*pb;		/* parameter scratch, pcap long */
	unsigned long		*plen;
	size_t			 pcap;
	unsigned		 myerr;		/* MySQL error of the current attempt, 0 = none */
	int			 retry_ok;	/* the current error may be retried (a 1062 in a send) */
	uint64_t		 reconnects;
	int			 connected_once;
	int			 down_logged;
	int64_t			 next_try;	/* monotonic ms before which we do not reconnect */
	int			 backoff;
	unsigned		 seed;
	uint64_t		 autoinc_step;	/* ids of a multi-row INSERT: first + k * step; 0: not so */
};

/* A statement parameter. */
enum store_pt { SP_NULL, SP_STR, SP_U64, SP_I64 };
struct store_param {
	enum store_pt	 t;
	const char	*s;
	uint64_t	 u;
	int64_t		 i;
};
#define PS(x)	((struct store_param){ .t = (x) != NULL ? SP_STR : SP_NULL, .s = (x) })
#define PU(x)	((struct store_param){ .t = SP_U64, .u = (x) })
#define PI(x)	((struct store_param){ .t = SP_I64, .i = (x) })
#define PN	((struct store_param){ .t = SP_NULL })
#define EXEC(s, q, ...) store_exec((s), (q), (struct store_param[]){ __VA_ARGS__ }, \
	sizeof((struct store_param[]){ __VA_ARGS__ }) / sizeof(struct store_param))

/* A transaction body: 0 commit, 1 done without writing (roll back), -1 failed (see store_run). */
typedef int (*store_fn)(struct store *, void *);

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

	for (i = 0; i < Q_COUNT; i++) {
		if (s->q[i].st != NULL)
			mysql_stmt_close(s->q[i].st);
		s->q[i].st = NULL;
	}
}

static void
store_disconnect(struct store *s)
{
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
 * Make sure there is a connection. A failed attempt sets a backoff window (100 ms doubling to 2 s)
 * inside which calls fail at once with EAGAIN instead of hammering a server that is down; the
 * first call after the window tries again.
 */
static int
store_connect(struct store *s)
{
	const struct config *c = s->cfg;
	unsigned int ct, rw;
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
	mysql_options(my, MYSQL_INIT_COMMAND, "SET SESSION sql_mode = "
	    "'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', innodb_lock_wait_timeout = 5");
	if (mysql_real_connect(my, c->mysql_socket != NULL ? NULL : c->mysql_host, c->mysql_user,
	    c->mysql_password, c->mysql_database, c->mysql_socket != NULL ? 0 : c->mysql_port,
	    c->mysql_socket, 0) == NULL) {
		if (!s->down_logged)
			log_warn("mysql: cannot connect: %s", mysql_error(my));
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
	return 0;
}

/* --- statements ---------------------------------------------------------------------------- */

/* Note a MySQL error for store_run; the expected ones (retried or answered) are not logged. */
static void
store_fail(struct store *s, unsigned e, const char *what)
{
	s->myerr = e != 0 ? e : CR_UNKNOWN_ERROR;
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

static const char *
store_text(const struct store *s, enum store_q q)
{
	return s->msql[q] != NULL ? s->msql[q] : store_sql[q];
}

/* The prepared statement q of this connection, prepared now if it is not yet. */
static MYSQL_STMT *
store_stmt(struct store *s, enum store_q q)
{
	struct store_stmt *x = &s->q[q];
	unsigned i;

	if (x->st != NULL)
		return x->st;
	if ((x->st = mysql_stmt_init(s->my)) == NULL)
		fatal("mysql_stmt_init: out of memory");
	if (mysql_stmt_prepare(x->st, store_text(s, q), strlen(store_text(s, q))) != 0) {
		store_fail(s, mysql_stmt_errno(x->st), "prepare");
		mysql_stmt_close(x->st);
		x->st = NULL;
		return NULL;
	}
	if (x->col == NULL && (x->ncol = mysql_stmt_field_count(x->st)) > 0) {
		x->col = xcalloc(x->ncol, sizeof *x->col);
		x->rb = xcalloc(x->ncol, sizeof *x->rb);
		for (i = 0; i < x->ncol; i++) {
			x->col[i].cap = STORE_COLBUF;
			x->col[i].buf = xmalloc(STORE_COLBUF);
			store_col_bind(x, i);
		}
	}
	return x->st;
}

/* Execute q with parameters p; a result set is buffered client-side, read it with store_fetch. */
static int
store_exec(struct store *s, enum store_q q, const struct store_param *p, size_t n)
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
		store_fail(s, mysql_stmt_errno(st), store_text(s, q));
		return -1;
	}
	if (x->ncol > 0 && (mysql_stmt_store_result(st) != 0 ||
	    mysql_stmt_bind_result(st, x->rb) != 0)) {
		store_fail(s, mysql_stmt_errno(st), store_text(s, q));
		return -1;
	}
	return 0;
}

/* Next row of q's result: 1 got one (read with col_*), 0 no more, -1 error. */
static int
store_fetch(struct store *s, enum store_q q)
{
	struct store_stmt *x = &s->q[q];
	struct store_col *c;
	unsigned i;
	int rc, grown = 0;

	rc = mysql_stmt_fetch(x->st);
	if (rc == MYSQL_NO_DATA)
		return 0;
	if (rc == 1) {
		store_fail(s, mysql_stmt_errno(x->st), "fetch");
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
			store_fail(s, mysql_stmt_errno(x->st), "fetch column");
			return -1;
		}
		grown = 1;
	}
	if (grown && mysql_stmt_bind_result(x->st, x->rb) != 0) {
		store_fail(s, mysql_stmt_errno(x->st), "bind");
		return -1;
	}
	for (i = 0; i < x->ncol; i++) {
		c = &x->col[i];
		c->buf[c->null ? 0 : c->len] = '\0';
	}
	return 1;
}

static void
store_done(struct store *s, enum store_q q)
{
	if (s->q[q].st != NULL)
		mysql_stmt_free_result(s->q[q].st);
}

/* Execute and fetch the first row: 1 row, 0 none, -1 error. The result stays readable. */
static int
store_row(struct store *s, enum store_q q, const struct store_param *p, size_t n)
{
	if (store_exec(s, q, p, n) != 0)
		return -1;
	return store_fetch(s, q);
}
#define ROW(s, q, ...) store_row((s), (q), (struct store_param[]){ __VA_ARGS__ }, \
	sizeof((struct store_param[]){ __VA_ARGS__ }) / sizeof(struct store_param))

/*
 * Run a multi-row statement over nrows rows of width parameters each: as few statements as the
 * prepared sizes allow (qs: the forms of store_chunks[] rows).
 */
static int
store_exec_rows(struct store *s, const enum store_q *qs, const struct store_param *p,
    size_t nrows, size_t width)
{
	size_t done = 0, i;

	while (done < nrows) {
		for (i = 0; store_chunks[i] > nrows - done; i++)
			;
		if (store_exec(s, qs[i], p + done * width, store_chunks[i] * width) != 0)
			return -1;
		done += store_chunks[i];
	}
	return 0;
}

static const char *
col_s(struct store *s, enum store_q q, unsigned i)
{
	return s->q[q].col[i].null ? NULL : s->q[q].col[i].buf;
}

static int
col_null(struct store *s, enum store_q q, unsigned i)
{
	return s->q[q].col[i].null;
}

static uint64_t
col_u(struct store *s, enum store_q q, unsigned i)
{
	return s->q[q].col[i].null ? 0 : strtoull(s->q[q].col[i].buf, NULL, 10);
}

static int64_t
col_i(struct store *s, enum store_q q, unsigned i)
{
	return s->q[q].col[i].null ? 0 : strtoll(s->q[q].col[i].buf, NULL, 10);
}

static uint64_t
store_affected(struct store *s, enum store_q q)
{
	return mysql_stmt_affected_rows(s->q[q].st);
}

static uint64_t
store_insert_id(struct store *s, enum store_q q)
{
	return mysql_stmt_insert_id(s->q[q].st);
}

/* Plain SQL without parameters (transaction control). */
static int
store_sql_plain(struct store *s, const char *sql)
{
	if (mysql_real_query(s->my, sql, strlen(sql)) != 0) {
		store_fail(s, mysql_errno(s->my), sql);
		return -1;
	}
	return 0;
}

/* Fail the current attempt with a logical error (not MySQL's): no retry, errno reaches the caller. */
static int
store_refuse(int err)
{
	errno = err;
	return -1;
}

/* --- transactions -------------------------------------------------------------------------- */

/* One attempt: 0 done, -1 logical failure (errno), -2 MySQL failure (s->myerr). */
static int
store_attempt(struct store *s, int txn, store_fn fn, void *arg)
{
	int rc, err;

	if (txn && store_sql_plain(s, "START TRANSACTION") != 0)
		return -2;
	rc = fn(s, arg);
	if (rc < 0) {
		if (s->myerr != 0)
			return -2;
		err = errno;
		if (txn)
			mysql_rollback(s->my);	/* an error here shows on the next statement */
		errno = err;
		return -1;
	}
	if (!txn)
		return 0;
	if ((rc == 0 ? mysql_commit(s->my) : mysql_rollback(s->my)) != 0) {
		store_fail(s, mysql_errno(s->my), rc == 0 ? "COMMIT" : "ROLLBACK");
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
 * Sends are safe (the retry finds the message by client_msg_id and answers duplicate = 1),
 * receipts and membership changes are idempotent; a room comment may be stored twice.
 */
static int
store_run(struct store *s, int txn, store_fn fn, void *arg)
{
	int attempt, rc, lost;

	for (attempt = 1;; attempt++) {
		if (store_connect(s) != 0)
			return -1;
		s->myerr = 0;
		s->retry_ok = 0;
		if ((rc = store_attempt(s, txn, fn, arg)) != -2)
			return rc;
		lost = store_err_lost(s->myerr);
		if (lost)
			store_disconnect(s);
		else if (txn)
			mysql_rollback(s->my);
		if (!lost && s->myerr != ER_LOCK_DEADLOCK && s->myerr != ER_LOCK_WAIT_TIMEOUT &&
		    !s->retry_ok) {
			errno = EIO;
			return -1;
		}
		if (attempt >= STORE_ATTEMPTS) {
			log_warn("mysql: giving up after %d attempts (error %u)", attempt, s->myerr);
			errno = lost ? EAGAIN : EIO;
			return -1;
		}
		if (!lost && !s->retry_ok)	/* let the other transaction finish */
			usleep((useconds_t)(1000 * attempt + rand_r(&s->seed) % 4000));
	}
}

/* Run a read-only body that leaves a JSON text in *slot: hand it over in *json, or free it. */
static int
store_run_json(struct store *s, store_fn fn, void *ctx, char **slot, char **json)
{
	if (store_run(s, 0, fn, ctx) != 0) {
		free(*slot);
		*slot = NULL;
		return -1;
	}
	*json = *slot;
	return 0;
}

/* --- small helpers ------------------------------------------------------------------------- */

static void
targets_push(struct store_targets *t, const char *user, uint64_t seq)
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
	p->events = NULL;
	p->n = 0;
}

static void
page_push(struct store_page *p, char *ev)
{
	p->events = xreallocarray(p->events, p->n + 1, sizeof *p->events);
	p->events[p->n++] = ev;
}

static void
strv_free(char **v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static int
strp_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *
json_take(struct json_object *o)
{
	char *s;

	s = xstrdup(json_object_to_json_string_ext(o,
	    JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
	return s;
}

/* Reserve k consecutive seqs in user's log; *first gets the first. Locks the user's seq row. */
static int
seq_alloc(struct store *s, const char *user, uint64_t k, uint64_t *first)
{
	if (EXEC(s, Q_SEQ_ALLOC, PS(user), PU(k), PU(k)) != 0)
		return -1;
	*first = store_insert_id(s, Q_SEQ_ALLOC) - k + 1;
	return 0;
}

/* Append a complete (seq included) event text to user's log and name user in targets. */
static int
event_append_body(struct store *s, const char *user, uint64_t seq, const char *body,
    struct store_targets *t)
{
	if (EXEC(s, Q_EV_INSERT_BODY, PS(user), PU(seq), PS(body)) != 0)
		return -1;
	if (t != NULL)
		targets_push(t, user, seq);
	return 0;
}

/* The members of group g, sorted (caller frees); *admins (may be NULL) flags for each. */
static int
group_load(struct store *s, uint64_t g, char ***members, size_t *n, int **admins)
{
	int rc;

	*members = NULL;
	*n = 0;
	if (admins != NULL)
		*admins = NULL;
	if (EXEC(s, Q_MEMBERS, PU(g)) != 0)
		return -1;
	while ((rc = store_fetch(s, Q_MEMBERS)) == 1) {
		*members = xreallocarray(*members, *n + 1, sizeof **members);
		(*members)[*n] = xstrdup(col_s(s, Q_MEMBERS, 0));
		if (admins != NULL) {
			*admins = xreallocarray(*admins, *n + 1, sizeof **admins);
			(*admins)[*n] = col_u(s, Q_MEMBERS, 1) == 1;
		}
		(*n)++;
	}
	store_done(s, Q_MEMBERS);
	return rc;
}

/* 1 when group g exists, 0 when not, -1 error; *name (may be NULL) gets a copy of its name. */
static int
group_exists(struct store *s, uint64_t g, char **name)
{
	int rc;

	rc = ROW(s, Q_GROUP_GET, PU(g));
	if (rc == 1 && name != NULL)
		*name = xstrdup(col_s(s, Q_GROUP_GET, 0));
	store_done(s, Q_GROUP_GET);
	return rc;
}

/* user's role in g: 1 admin, 0 member, -2 not a member, -1 error. */
static int
group_role(struct store *s, uint64_t g, const char *user)
{
	int rc;

	if ((rc = ROW(s, Q_ROLE, PU(g), PS(user))) == 1)
		rc = col_u(s, Q_ROLE, 0) == 1;
	else if (rc == 0)
		rc = -2;
	store_done(s, Q_ROLE);
	return rc;
}

/* --- life cycle ------------------------------------------------------------------------- */

/* head row,row,...(n times) tail */
static char *
store_multi_sql(const char *head, const char *row, size_t n, const char *tail)
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
	struct store *s;
	size_t i;

	pthread_once(&store_lib_once, store_lib_init);
	s = xcalloc(1, sizeof *s);
	s->cfg = cfg;
	s->seed = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)s;
	for (i = 0; i + 1 < PARLEY_NITEMS(store_chunks); i++) {
		s->msql[store_ev_rows[i]] = store_multi_sql(EV_HEAD, EV_ROW, store_chunks[i], "");
		s->msql[store_conv_rows[i]] = store_multi_sql(CONV_HEAD, CONV_ROW, store_chunks[i],
		    CONV_TAIL);
		s->msql[store_msg_rows[i]] = store_multi_sql(MSG_HEAD, MSG_ROW, store_chunks[i], "");
	}
	for (i = 0; i < PARLEY_NITEMS(store_chunks); i++) {
		s->msql[store_seq_rows[i]] = store_multi_sql(SEQ_HEAD, SEQ_ROW, store_chunks[i],
		    SEQ_TAIL);
		s->msql[store_seq_in[i]] = store_multi_sql(SEQ_IN_HEAD, "?", store_chunks[i], ")");
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
	for (i = 0; i < Q_COUNT; i++) {
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

static int
ping_fn(struct store *s, void *arg)
{
	if (mysql_ping(s->my) != 0) {
		store_fail(s, mysql_errno(s->my), "ping");
		return -1;
	}
	return 0;
}

int
store_ping(struct store *s)
{
	return store_run(s, 0, ping_fn, NULL);
}

/* --- sending ------------------------------------------------------------------------------ */

/* A user that gets events in a send batch, with how many and the next seq to hand out. */
struct send_user {
	const char	*user;
	uint64_t	 count;
	uint64_t	 next;
};

/* A conversation row a send batch touches: gathered, merged and written in one go. */
struct send_conv {
	const char	*user;
	uint64_t	 g;
	const char	*peer;
	uint64_t	 id;
	int64_t		 ts;
	uint64_t	 unread;
};

struct send_ctx {
	const struct store_send_req	*reqs;
	struct store_send_res		*res;
	int				*err;
	const int			*valid;	/* validation result of each item (0 or EINVAL) */
	size_t				 n;
	int				 check_dups;	/* look client_msg_ids up first (after a 1062) */
	int				*dup_of;	/* earlier item of the batch this one repeats, or -1 */
	char				***rcpt;	/* recipients other than the sender, per item */
	size_t				*nrcpt;
	struct send_user		*users;
	size_t				 nusers;
	struct store_param		*evs;	/* EV_WIDTH parameters per event row */
	size_t				 nevs;
	size_t				 evcap;
	struct send_conv		*convs;
	size_t				 nconvs;
	size_t				 convcap;
};

static int
send_user_cmp(const void *a, const void *b)
{
	return strcmp(((const struct send_user *)a)->user, ((const struct send_user *)b)->user);
}

/* The next seq of user (the batch reserved them all before). */
static uint64_t
send_take(struct send_ctx *c, const char *user)
{
	struct send_user key = { .user = user }, *u;

	u = bsearch(&key, c->users, c->nusers, sizeof *u, send_user_cmp);
	if (u == NULL)
		fatal("store: no seq reserved for a target");
	return u->next++;
}

/* Back to the state before the first attempt: a re-run must start from scratch. */
static void
send_reset(struct send_ctx *c)
{
	size_t i;

	for (i = 0; i < c->n; i++) {
		store_send_res_clear(&c->res[i]);
		memset(&c->res[i], 0, sizeof c->res[i]);
		c->err[i] = c->valid[i];
		c->dup_of[i] = -1;
		strv_free(c->rcpt[i], c->nrcpt[i]);
		c->rcpt[i] = NULL;
		c->nrcpt[i] = 0;
	}
	free(c->users);
	c->users = NULL;
	c->nusers = 0;
	c->nevs = 0;
	c->nconvs = 0;
}

static void
send_event(struct send_ctx *c, const char *user, uint64_t seq, uint64_t id)
{
	if (c->nevs == c->evcap) {
		c->evcap = c->evcap == 0 ? 64 : c->evcap * 2;
		c->evs = xreallocarray(c->evs, c->evcap, EV_WIDTH * sizeof *c->evs);
	}
	c->evs[c->nevs * EV_WIDTH] = PS(user);
	c->evs[c->nevs * EV_WIDTH + 1] = PU(seq);
	c->evs[c->nevs * EV_WIDTH + 2] = PU(id);
	c->nevs++;
}

static void
send_conv(struct send_ctx *c, const char *user, uint64_t g, const char *peer, uint64_t id,
    int64_t ts, uint64_t unread)
{
	if (c->nconvs == c->convcap) {
		c->convcap = c->convcap == 0 ? 64 : c->convcap * 2;
		c->convs = xreallocarray(c->convs, c->convcap, sizeof *c->convs);
	}
	c->convs[c->nconvs++] = (struct send_conv){ user, g, peer, id, ts, unread };
}

static int
send_conv_cmp(const void *a, const void *b)
{
	const struct send_conv *x = a, *y = b;
	int d;

	if ((d = strcmp(x->user, y->user)) != 0)
		return d;
	if (x->g != y->g)
		return x->g < y->g ? -1 : 1;
	return strcmp(x->peer, y->peer);
}

/*
 * Write the batch's events and conversation rows with multi-row statements. Conversation rows
 * are merged per (user, conversation) and written in sorted order, so that two batches lock the
 * rows they share in the same order.
 */
static int
send_flush(struct store *s, struct send_ctx *c)
{
	struct store_param *p;
	struct send_conv *v = c->convs;
	size_t i, j, n;
	int rc;

	if (c->nevs > 0 && store_exec_rows(s, store_ev_rows, c->evs, c->nevs, EV_WIDTH) != 0)
		return -1;
	if (c->nconvs == 0)
		return 0;
	qsort(v, c->nconvs, sizeof *v, send_conv_cmp);
	for (i = 1, n = 1; i < c->nconvs; i++) {
		if (send_conv_cmp(&v[n - 1], &v[i]) != 0) {
			v[n++] = v[i];
			continue;
		}
		if (v[i].id > v[n - 1].id) {
			v[n - 1].id = v[i].id;
			v[n - 1].ts = v[i].ts;
		}
		v[n - 1].unread += v[i].unread;
	}
	p = xreallocarray(NULL, n, CONV_WIDTH * sizeof *p);
	for (i = 0; i < n; i++) {
		j = i * CONV_WIDTH;
		p[j] = PS(v[i].user);
		p[j + 1] = PU(v[i].g);
		p[j + 2] = PS(v[i].peer);
		p[j + 3] = PU(v[i].id);
		p[j + 4] = PI(v[i].ts);
		p[j + 5] = PU(v[i].unread);
	}
	rc = store_exec_rows(s, store_conv_rows, p, n, CONV_WIDTH);
	free(p);
	return rc;
}

/* Who besides the sender gets item i: the peer, or the other members of the group. */
static int
send_recipients(struct store *s, struct send_ctx *c, size_t i)
{
	const struct store_send_req *r = &c->reqs[i];
	char **m;
	size_t n, j, k;
	int rc, member = 0;

	if (r->to != NULL) {
		/* A message to oneself is a note: one event, in one's own log. */
		if (strcmp(r->to, r->from) != 0) {
			c->rcpt[i] = xcalloc(1, sizeof *c->rcpt[i]);
			c->rcpt[i][0] = xstrdup(r->to);
			c->nrcpt[i] = 1;
		}
		return 0;
	}
	if (group_load(s, r->group_id, &m, &n, NULL) != 0)
		return -1;
	for (j = k = 0; j < n; j++) {
		if (strcmp(m[j], r->from) == 0) {
			member = 1;
			free(m[j]);
		} else
			m[k++] = m[j];
	}
	c->rcpt[i] = m;
	c->nrcpt[i] = k;
	if (member)
		return 0;
	if ((rc = group_exists(s, r->group_id, NULL)) < 0)
		return -1;
	c->err[i] = rc == 1 ? EACCES : ENOENT;
	return 0;
}

/*
 * Reserve the seqs of every user of the batch (c->users, sorted, distinct) with multi-row
 * statements: two round trips per chunk instead of one per user. The rows are locked in sorted
 * order, as seq_alloc one by one would.
 */
static int
send_reserve_many(struct store *s, struct send_ctx *c)
{
	struct store_param *p;
	struct send_user key, *u;
	size_t done, i, k = 0, got;
	uint64_t last;
	int rc = -1, f;

	p = xreallocarray(NULL, c->nusers, SEQ_WIDTH * sizeof *p);
	for (i = 0; i < c->nusers; i++) {
		p[i * SEQ_WIDTH] = PS(c->users[i].user);
		p[i * SEQ_WIDTH + 1] = PU(c->users[i].count);
	}
	if (store_exec_rows(s, store_seq_rows, p, c->nusers, SEQ_WIDTH) != 0)
		goto out;
	for (i = 0; i < c->nusers; i++)
		p[i] = PS(c->users[i].user);
	for (done = got = 0; done < c->nusers; done += store_chunks[k]) {
		for (k = 0; store_chunks[k] > c->nusers - done; k++)
			;
		if (store_exec(s, store_seq_in[k], p + done, store_chunks[k]) != 0)
			goto out;
		while ((f = store_fetch(s, store_seq_in[k])) == 1) {
			key.user = col_s(s, store_seq_in[k], 0);
			last = col_u(s, store_seq_in[k], 1);
			if (key.user == NULL || (u = bsearch(&key, c->users, c->nusers, sizeof *u,
			    send_user_cmp)) == NULL)
				continue;
			u->next = last - u->count + 1;
			got++;
		}
		store_done(s, store_seq_in[k]);
		if (f < 0)
			goto out;
	}
	if (got != c->nusers) {
		log_warn("store: %zu of %zu reserved seq rows read back", got, c->nusers);
		errno = EIO;
		goto out;
	}
	rc = 0;
out:
	free(p);
	return rc;
}

/* Count every event the new items will append, per user, and reserve the seqs in sorted order. */
static int
send_reserve(struct store *s, struct send_ctx *c)
{
	size_t i, j, n = 0, cap = 0;
	struct send_user *u = NULL;

	for (i = 0; i < c->n; i++) {
		if (c->err[i] != 0 || c->dup_of[i] >= 0 || c->res[i].duplicate)
			continue;
		if (n + c->nrcpt[i] + 1 > cap) {
			cap = (n + c->nrcpt[i] + 1) * 2;
			u = xreallocarray(u, cap, sizeof *u);
		}
		u[n++] = (struct send_user){ .user = c->reqs[i].from, .count = 1 };
		for (j = 0; j < c->nrcpt[i]; j++)
			u[n++] = (struct send_user){ .user = c->rcpt[i][j], .count = 1 };
	}
	/* Sorted order: two transactions lock the seq rows of shared users in the same order. */
	if (n > 0)
		qsort(u, n, sizeof *u, send_user_cmp);
	for (i = j = 0; i < n; i++) {
		if (j > 0 && strcmp(u[j - 1].user, u[i].user) == 0)
			u[j - 1].count++;
		else
			u[j++] = u[i];
	}
	c->users = u;
	c->nusers = j;
	/* Up to two users (one message) the one-row form is as few round trips. */
	if (c->nusers > 2)
		return send_reserve_many(s, c);
	for (i = 0; i < c->nusers; i++) {
		if (seq_alloc(s, u[i].user, u[i].count, &u[i].next) != 0)
			return -1;
	}
	return 0;
}

/* A message INSERT failed: on a duplicate client_msg_id, re-run looking the ids up first. */
static void
send_insert_failed(struct store *s, struct send_ctx *c)
{
	/*
	 * Someone committed the same client_msg_id after we looked (or we did not look): roll
	 * back, then re-run looking first, which finds the first result.
	 */
	if (s->myerr == ER_DUP_ENTRY) {
		s->retry_ok = 1;
		c->check_dups = 1;
	}
}

/*
 * Item i's message got id and its sender seq: queue an event and conversation row per target.
 * rseq: the recipients' seqs taken before, or NULL to take them now.
 */
static void
send_record(struct send_ctx *c, size_t i, uint64_t seq, const uint64_t *rseq, uint64_t id,
    int64_t now)
{
	const struct store_send_req *r = &c->reqs[i];
	struct store_send_res *res = &c->res[i];
	size_t j;

	res->server_msg_id = id;
	res->seq = seq;
	res->ts = now;
	res->duplicate = 0;
	targets_push(&res->targets, r->from, seq);
	send_event(c, r->from, seq, id);
	send_conv(c, r->from, r->to != NULL ? 0 : r->group_id, r->to != NULL ? r->to : "", id, now, 0);
	for (j = 0; j < c->nrcpt[i]; j++) {
		seq = rseq != NULL ? rseq[j] : send_take(c, c->rcpt[i][j]);
		targets_push(&res->targets, c->rcpt[i][j], seq);
		send_event(c, c->rcpt[i][j], seq, id);
		send_conv(c, c->rcpt[i][j], r->to != NULL ? 0 : r->group_id,
		    r->to != NULL ? r->from : "", id, now, 1);
	}
}

/* Insert item i's message; queue an event for each target's log and its conversation row. */
static int
send_insert(struct store *s, struct send_ctx *c, size_t i, int64_t now)
{
	const struct store_send_req *r = &c->reqs[i];
	uint64_t seq;

	seq = send_take(c, r->from);
	if (EXEC(s, Q_MSG_INSERT, PS(r->from), PS(r->to),
	    r->to != NULL ? PN : PU(r->group_id), PS(r->content), PS(r->client_msg_id),
	    PI(now), PU(seq)) != 0) {
		send_insert_failed(s, c);
		return -1;
	}
	send_record(c, i, seq, NULL, store_insert_id(s, Q_MSG_INSERT), now);
	return 0;
}

/*
 * Insert the messages of the m items idx[] with multi-row statements (autoinc_step set), in item
 * order: the ids and every user's seqs come out as one statement per item would give them.
 */
static int
send_insert_many(struct store *s, struct send_ctx *c, const size_t *idx, size_t m, int64_t now)
{
	const struct store_send_req *r;
	struct store_param *p;
	uint64_t *seq, *id, **rseq, first;
	size_t k, q, j, done;
	int rc = -1;

	p = xreallocarray(NULL, m, MSG_WIDTH * sizeof *p);
	seq = xcalloc(m, sizeof *seq);
	id = xcalloc(m, sizeof *id);
	rseq = xcalloc(m, sizeof *rseq);
	/* Every seq in the order one statement per item takes them: sender, then recipients. */
	for (k = 0; k < m; k++) {
		r = &c->reqs[idx[k]];
		seq[k] = send_take(c, r->from);
		rseq[k] = xcalloc(c->nrcpt[idx[k]] + 1, sizeof **rseq);
		for (j = 0; j < c->nrcpt[idx[k]]; j++)
			rseq[k][j] = send_take(c, c->rcpt[idx[k]][j]);
		p[k * MSG_WIDTH] = PS(r->from);
		p[k * MSG_WIDTH + 1] = PS(r->to);
		p[k * MSG_WIDTH + 2] = r->to != NULL ? PN : PU(r->group_id);
		p[k * MSG_WIDTH + 3] = PS(r->content);
		p[k * MSG_WIDTH + 4] = PS(r->client_msg_id);
		p[k * MSG_WIDTH + 5] = PI(now);
		p[k * MSG_WIDTH + 6] = PU(seq[k]);
	}
	for (done = 0; done < m; done += store_chunks[q]) {
		for (q = 0; store_chunks[q] > m - done; q++)
			;
		if (store_exec(s, store_msg_rows[q], p + done * MSG_WIDTH,
		    store_chunks[q] * MSG_WIDTH) != 0) {
			send_insert_failed(s, c);
			goto out;
		}
		first = store_insert_id(s, store_msg_rows[q]);
		for (k = 0; k < store_chunks[q]; k++)
			id[done + k] = first + k * s->autoinc_step;
	}
	for (k = 0; k < m; k++)
		send_record(c, idx[k], seq[k], rseq[k], id[k], now);
	rc = 0;
out:
	for (k = 0; k < m; k++)
		free(rseq[k]);
	free(rseq);
	free(p);
	free(seq);
	free(id);
	return rc;
}

/* Insert every new item's message: several rows per statement when the ids allow it. */
static int
send_inserts(struct store *s, struct send_ctx *c, int64_t now)
{
	size_t *idx, i, m = 0;
	int rc = 0;

	idx = xcalloc(c->n, sizeof *idx);
	for (i = 0; i < c->n; i++) {
		if (c->err[i] == 0 && c->dup_of[i] < 0 && !c->res[i].duplicate)
			idx[m++] = i;
	}
	if (m > 1 && s->autoinc_step > 0)
		rc = send_insert_many(s, c, idx, m, now);
	else {
		for (i = 0; i < m && rc == 0; i++)
			rc = send_insert(s, c, idx[i], now);
	}
	free(idx);
	return rc;
}

/* One attempt of a send batch: find repeats, load recipients, reserve seqs, insert, flush. */
static int
send_txn(struct store *s, void *arg)
{
	struct send_ctx *c = arg;
	const struct store_send_req *r;
	int64_t now = parley_now_ms();
	size_t i, j;
	int rc;

	send_reset(c);
	for (i = 0; i < c->n; i++) {
		r = &c->reqs[i];
		if (c->err[i] != 0)
			continue;
		for (j = 0; j < i; j++) {
			if (c->err[j] == 0 && c->dup_of[j] < 0 &&
			    strcmp(c->reqs[j].from, r->from) == 0 &&
			    strcmp(c->reqs[j].client_msg_id, r->client_msg_id) == 0)
				break;
		}
		if (j < i) {
			c->dup_of[i] = (int)j;
			continue;
		}
		if (c->check_dups) {
			rc = ROW(s, Q_MSG_FIND, PS(r->from), PS(r->client_msg_id));
			if (rc == 1) {
				c->res[i].server_msg_id = col_u(s, Q_MSG_FIND, 0);
				c->res[i].seq = col_u(s, Q_MSG_FIND, 1);
				c->res[i].ts = col_i(s, Q_MSG_FIND, 2);
				c->res[i].duplicate = 1;
			}
			store_done(s, Q_MSG_FIND);
			if (rc < 0)
				return -1;
			if (rc == 1)
				continue;
		}
		if (send_recipients(s, c, i) != 0)
			return -1;
	}
	if (send_reserve(s, c) != 0)
		return -1;
	if (send_inserts(s, c, now) != 0)
		return -1;
	if (send_flush(s, c) != 0)
		return -1;
	for (i = 0; i < c->n; i++) {
		if (c->dup_of[i] < 0)
			continue;
		j = (size_t)c->dup_of[i];
		c->err[i] = c->err[j];
		c->res[i].server_msg_id = c->res[j].server_msg_id;
		c->res[i].seq = c->res[j].seq;
		c->res[i].ts = c->res[j].ts;
		c->res[i].duplicate = 1;
	}
	return 0;
}

/* Can item r be stored at all (ids, UTF-8 content, exactly one of to and group_id)? */
static int
send_valid(const struct store_send_req *r)
{
	if (r->from == NULL || !protocol_valid_user(r->from) || r->client_msg_id == NULL ||
	    !protocol_valid_id(r->client_msg_id) || r->content == NULL || *r->content == '\0' ||
	    !protocol_valid_utf8(r->content, strlen(r->content)))
		return 0;
	if (r->to != NULL)
		return r->group_id == 0 && protocol_valid_user(r->to);
	return r->group_id != 0;
}

int
store_send_batch(struct store *s, const struct store_send_req *reqs, size_t n,
    struct store_send_res *res, int *err)
{
	struct send_ctx c;
	int *valid, rc, saved;
	size_t i;

	memset(&c, 0, sizeof c);
	if (n == 0)
		return 0;
	valid = xcalloc(n, sizeof *valid);
	for (i = 0; i < n; i++) {
		valid[i] = send_valid(&reqs[i]) ? 0 : EINVAL;
		memset(&res[i], 0, sizeof res[i]);
	}
	c.reqs = reqs;
	c.res = res;
	c.err = err;
	c.valid = valid;
	c.n = n;
	c.dup_of = xcalloc(n, sizeof *c.dup_of);
	c.rcpt = xcalloc(n, sizeof *c.rcpt);
	c.nrcpt = xcalloc(n, sizeof *c.nrcpt);
	for (i = 0; i < n; i++)
		err[i] = valid[i];
	rc = store_run(s, 1, send_txn, &c);
	saved = errno;
	if (rc != 0) {
		for (i = 0; i < n; i++) {
			store_send_res_clear(&res[i]);
			memset(&res[i], 0, sizeof res[i]);
			err[i] = valid[i] != 0 ? valid[i] : saved;
		}
	}
	for (i = 0; i < n; i++)
		strv_free(c.rcpt[i], c.nrcpt[i]);
	free(c.rcpt);
	free(c.nrcpt);
	free(c.dup_of);
	free(c.users);
	free(c.evs);
	free(c.convs);
	free(valid);
	errno = saved;
	return rc;
}

int
store_send(struct store *s, const struct store_send_req *req, struct store_send_res *res)
{
	int err;

	if (store_send_batch(s, req, 1, res, &err) != 0)
		return -1;
	if (err != 0) {
		errno = err;
		return -1;
	}
	return 0;
}

/* --- event log ---------------------------------------------------------------------------- */

struct events_ctx {
	const char		*user;
	uint64_t		 after;
	int			 limit;
	struct store_page	*page;
};

/* A page of user's log after c->after; one row more than the limit tells has_more. */
static int
events_fn(struct store *s, void *arg)
{
	struct events_ctx *c = arg;
	struct store_page *p = c->page;
	struct proto_message m;
	uint64_t seq;
	const char *body;
	int rc;

	store_page_clear(p);
	p->next = c->after;
	p->has_more = 0;
	if (EXEC(s, Q_EV_PAGE, PS(c->user), PU(c->after), PU((uint64_t)c->limit + 1)) != 0)
		return -1;
	while ((rc = store_fetch(s, Q_EV_PAGE)) == 1) {
		if (p->n == (size_t)c->limit) {
			p->has_more = 1;
			break;
		}
		seq = col_u(s, Q_EV_PAGE, 0);
		body = col_s(s, Q_EV_PAGE, 2);
		if (col_u(s, Q_EV_PAGE, 1) == EV_MESSAGE && !col_null(s, Q_EV_PAGE, 3)) {
			m.id = col_u(s, Q_EV_PAGE, 3);
			m.from = col_s(s, Q_EV_PAGE, 4);
			m.to = col_s(s, Q_EV_PAGE, 5);
			m.group_id = col_u(s, Q_EV_PAGE, 6);
			m.content = col_s(s, Q_EV_PAGE, 7);
			m.client_msg_id = col_s(s, Q_EV_PAGE, 8);
			m.ts = col_i(s, Q_EV_PAGE, 9);
			page_push(p, protocol_event_new_message(seq, &m));
		} else if (body != NULL)
			page_push(p, xstrdup(body));
		else
			log_warn("store: event %llu of a user has no body", (unsigned long long)seq);
		p->next = seq;
	}
	store_done(s, Q_EV_PAGE);
	return rc < 0 ? -1 : 0;
}

int
store_events(struct store *s, const char *user, uint64_t after, int limit, struct store_page *p)
{
	struct events_ctx c = { user, after, limit, p };

	memset(p, 0, sizeof *p);
	if (user == NULL || !protocol_valid_user(user) || limit < 1)
		return store_refuse(EINVAL);
	if (store_run(s, 0, events_fn, &c) != 0) {
		store_page_clear(p);
		return -1;
	}
	return 0;
}

struct u64_ctx {
	const char	*a;
	const char	*b;
	uint64_t	 v;
};

static int
last_seq_fn(struct store *s, void *arg)
{
	struct u64_ctx *c = arg;
	int rc;

	rc = ROW(s, Q_SEQ_GET, PS(c->a));
	c->v = rc == 1 ? col_u(s, Q_SEQ_GET, 0) : 0;
	store_done(s, Q_SEQ_GET);
	return rc < 0 ? -1 : 0;
}

int
store_last_seq(struct store *s, const char *user, uint64_t *seq)
{
	struct u64_ctx c = { user, NULL, 0 };

	if (user == NULL || !protocol_valid_user(user))
		return store_refuse(EINVAL);
	if (store_run(s, 0, last_seq_fn, &c) != 0)
		return -1;
	*seq = c.v;
	return 0;
}

/* --- cursors ------------------------------------------------------------------------------- */

static int
cursor_get_fn(struct store *s, void *arg)
{
	struct u64_ctx *c = arg;
	int rc;

	rc = ROW(s, Q_CUR_GET, PS(c->a), PS(c->b));
	c->v = rc == 1 ? col_u(s, Q_CUR_GET, 0) : 0;
	store_done(s, Q_CUR_GET);
	return rc < 0 ? -1 : 0;
}

int
store_cursor_get(struct store *s, const char *user, const char *device, uint64_t *cursor)
{
	struct u64_ctx c = { user, device, 0 };

	if (user == NULL || device == NULL || !protocol_valid_user(user) || !protocol_valid_id(device))
		return store_refuse(EINVAL);
	if (store_run(s, 0, cursor_get_fn, &c) != 0)
		return -1;
	*cursor = c.v;
	return 0;
}

static int
cursor_set_fn(struct store *s, void *arg)
{
	struct u64_ctx *c = arg;

	return EXEC(s, Q_CUR_SET, PS(c->a), PS(c->b), PU(c->v));
}

int
store_cursor_set(struct store *s, const char *user, const char *device, uint64_t cursor)
{
	struct u64_ctx c = { user, device, cursor };

	if (user == NULL || device == NULL || !protocol_valid_user(user) || !protocol_valid_id(device))
		return store_refuse(EINVAL);
	return store_run(s, 0, cursor_set_fn, &c);
}

/* --- receipts ------------------------------------------------------------------------------ */

/* The message a receipt is about and the conversation row of the user marking it. */
struct msg_info {
	char		sender[PARLEY_ID_MAX + 1];
	char		recipient[PARLEY_ID_MAX + 1];	/* "" for a group message */
	uint64_t	group_id;
};

/* 1 found, 0 not, -1 error. */
static int
msg_info(struct store *s, uint64_t id, struct msg_info *mi)
{
	int rc;

	memset(mi, 0, sizeof *mi);
	if ((rc = ROW(s, Q_MSG_GET, PU(id))) == 1) {
		snprintf(mi->sender, sizeof mi->sender, "%s", col_s(s, Q_MSG_GET, 0));
		if (!col_null(s, Q_MSG_GET, 1))
			snprintf(mi->recipient, sizeof mi->recipient, "%s", col_s(s, Q_MSG_GET, 1));
		mi->group_id = col_u(s, Q_MSG_GET, 2);
	}
	store_done(s, Q_MSG_GET);
	return rc;
}

struct receipt_ctx {
	const char		*user;
	uint64_t		 mid;
	enum proto_receipt	 status;
	int			 changed;
	struct store_targets	*t;
};

/* Read the user's markers in conversation (g, peer); 1 found, 0 none, -1 error. */
static int
markers(struct store *s, enum store_q q, const char *user, uint64_t g, const char *peer,
    uint64_t *d, uint64_t *r)
{
	int rc;

	if ((rc = ROW(s, q, PS(user), PU(g), PS(peer))) == 1) {
		*d = col_u(s, q, 0);
		*r = col_u(s, q, 1);
	}
	store_done(s, q);
	return rc;
}

/*
 * Marking a message delivered or read moves the user's marker in that conversation up to the
 * message (never back); read moves delivered along. When a marker moved, the message's sender
 * gets one message_status event about this message (the status the message reached: read if the
 * read marker moved, else delivered); senders of earlier messages covered by the same move are
 * not told separately. A note to oneself moves the markers but tells nobody.
 *
 * Lock order is the send's: the sender's seq row first, then conversation rows.
 */
static int
receipt_txn(struct store *s, void *arg)
{
	struct receipt_ctx *c = arg;
	struct msg_info mi;
	uint64_t g, d, r, nd, nr, seq = 0, unread = 0;
	const char *peer;
	char *body;
	int rc, self;

	c->changed = 0;
	store_targets_clear(c->t);
	if ((rc = msg_info(s, c->mid, &mi)) != 1)
		return rc < 0 ? -1 : store_refuse(ENOENT);
	g = mi.group_id;
	if (g != 0) {
		if (strcmp(mi.sender, c->user) == 0)
			return store_refuse(ENOENT);
		if ((rc = group_role(s, g, c->user)) == -1)
			return -1;
		if (rc == -2)
			return store_refuse(ENOENT);
		peer = "";
	} else {
		if (strcmp(mi.recipient, c->user) != 0)
			return store_refuse(ENOENT);
		peer = mi.sender;
	}
	self = strcmp(mi.sender, c->user) == 0;
	/* A cheap look without locks: most repeated receipts stop here. */
	if ((rc = markers(s, Q_CONV_MARKERS, c->user, g, peer, &d, &r)) != 1)
		return rc < 0 ? -1 : store_refuse(ENOENT);
	if (d >= c->mid && (c->status != PROTO_READ || r >= c->mid))
		return 1;
	if (!self && seq_alloc(s, mi.sender, 1, &seq) != 0)
		return -1;
	if ((rc = markers(s, Q_CONV_MARKERS_LOCK, c->user, g, peer, &d, &r)) != 1)
		return rc < 0 ? -1 : store_refuse(ENOENT);
	nd = d > c->mid ? d : c->mid;
	nr = c->status == PROTO_READ && r < c->mid ? c->mid : r;
	if (nd == d && nr == r)
		return 1;	/* someone else moved it meanwhile; the rollback returns the seq */
	if (nr != r) {
		if (g != 0)
			rc = ROW(s, Q_UNREAD_GROUP, PU(g), PU(nr), PS(c->user));
		else
			rc = ROW(s, Q_UNREAD_PAIR, PS(c->user), PS(mi.sender), PU(nr));
		unread = rc == 1 ? col_u(s, g != 0 ? Q_UNREAD_GROUP : Q_UNREAD_PAIR, 0) : 0;
		store_done(s, g != 0 ? Q_UNREAD_GROUP : Q_UNREAD_PAIR);
		if (rc < 0)
			return -1;
		if (self)
			unread = 0;
		if (EXEC(s, Q_CONV_SET_READ, PU(nd), PU(nr), PU(unread), PS(c->user), PU(g),
		    PS(peer)) != 0)
			return -1;
	} else if (EXEC(s, Q_CONV_SET_MARKERS, PU(nd), PU(nr), PS(c->user), PU(g), PS(peer)) != 0)
		return -1;
	c->changed = 1;
	if (self)
		return 0;
	body = protocol_event_message_status(seq, c->mid, nr != r ? PROTO_READ : PROTO_DELIVERED,
	    c->user, parley_now_ms());
	rc = event_append_body(s, mi.sender, seq, body, c->t);
	free(body);
	return rc;
}

int
store_receipt(struct store *s, const char *user, uint64_t message_id, enum proto_receipt status,
    int *changed, struct store_targets *t)
{
	struct receipt_ctx c = { user, message_id, status, 0, t };

	*changed = 0;
	memset(t, 0, sizeof *t);
	if (user == NULL || !protocol_valid_user(user) || message_id == 0 ||
	    (status != PROTO_DELIVERED && status != PROTO_READ))
		return store_refuse(EINVAL);
	if (store_run(s, 1, receipt_txn, &c) != 0) {
		store_targets_clear(t);
		return -1;
	}
	*changed = c.changed;
	return 0;
}

struct json_ctx {
	const char	*user;
	uint64_t	 id;
	int		 limit;
	char		*json;
};

/* Who has the message delivered and read; only its sender, peer or group members may ask. */
static int
receipts_json_fn(struct store *s, void *arg)
{
	struct json_ctx *c = arg;
	struct json_object *o, *dl, *rd;
	struct msg_info mi;
	uint64_t members = 1, d, r;
	int rc;

	free(c->json);
	c->json = NULL;
	if ((rc = msg_info(s, c->id, &mi)) != 1)
		return rc < 0 ? -1 : store_refuse(ENOENT);
	if (mi.group_id != 0 && strcmp(mi.sender, c->user) != 0) {
		if ((rc = group_role(s, mi.group_id, c->user)) == -1)
			return -1;
		if (rc == -2)
			return store_refuse(EACCES);
	} else if (mi.group_id == 0 && strcmp(mi.sender, c->user) != 0 &&
	    strcmp(mi.recipient, c->user) != 0)
		return store_refuse(EACCES);
	dl = json_object_new_array();
	rd = json_object_new_array();
	if (mi.group_id == 0) {
		if ((rc = ROW(s, Q_RCPT_PAIR, PS(mi.recipient), PS(mi.sender))) == 1) {
			d = col_u(s, Q_RCPT_PAIR, 0);
			r = col_u(s, Q_RCPT_PAIR, 1);
			if (d >= c->id)
				json_object_array_add(dl, json_object_new_string(mi.recipient));
			if (r >= c->id)
				json_object_array_add(rd, json_object_new_string(mi.recipient));
		}
		store_done(s, Q_RCPT_PAIR);
	} else {
		rc = ROW(s, Q_GROUP_OTHERS, PU(mi.group_id), PS(mi.sender));
		members = rc == 1 ? col_u(s, Q_GROUP_OTHERS, 0) : 0;
		store_done(s, Q_GROUP_OTHERS);
		if (rc >= 0 && (rc = EXEC(s, Q_RCPT_GROUP, PU(c->id), PU(mi.group_id),
		    PS(mi.sender), PU(c->id))) == 0) {
			while ((rc = store_fetch(s, Q_RCPT_GROUP)) == 1) {
				json_object_array_add(dl,
				    json_object_new_string(col_s(s, Q_RCPT_GROUP, 0)));
				if (col_u(s, Q_RCPT_GROUP, 1) == 1)
					json_object_array_add(rd,
					    json_object_new_string(col_s(s, Q_RCPT_GROUP, 0)));
			}
			store_done(s, Q_RCPT_GROUP);
		}
	}
	o = json_object_new_object();
	json_object_object_add(o, "members", json_object_new_int64((int64_t)members));
	json_object_object_add(o, "delivered", dl);
	json_object_object_add(o, "read", rd);
	if (rc < 0) {
		json_object_put(o);
		return -1;
	}
	c->json = json_take(o);
	return 0;
}

int
store_receipts_json(struct store *s, const char *user, uint64_t message_id, char **json)
{
	struct json_ctx c = { user, message_id, 0, NULL };

	*json = NULL;
	if (user == NULL || !protocol_valid_user(user) || message_id == 0)
		return store_refuse(EINVAL);
	return store_run_json(s, receipts_json_fn, &c, &c.json, json);
}

/* --- conversations ------------------------------------------------------------------------- */

static struct json_object *
jstr_or_null(const char *v)
{
	return v != NULL ? json_object_new_string(v) : NULL;
}

/* user's conversations, newest first, each with its last message (the contract's shape). */
static int
conversations_fn(struct store *s, void *arg)
{
	struct json_ctx *c = arg;
	struct json_object *o, *list, *e, *m;
	enum store_q q = Q_CONV_LIST;
	uint64_t g;
	int rc;

	free(c->json);
	c->json = NULL;
	if (EXEC(s, q, PS(c->user), PU((uint64_t)c->limit)) != 0)
		return -1;
	list = json_object_new_array();
	while ((rc = store_fetch(s, q)) == 1) {
		g = col_u(s, q, 0);
		m = json_object_new_object();
		json_object_object_add(m, "id", json_object_new_int64(col_i(s, q, 4)));
		json_object_object_add(m, "from", jstr_or_null(col_s(s, q, 5)));
		json_object_object_add(m, "to", jstr_or_null(col_s(s, q, 6)));
		json_object_object_add(m, "group_id",
		    col_null(s, q, 7) ? NULL : json_object_new_int64(col_i(s, q, 7)));
		json_object_object_add(m, "content", jstr_or_null(col_s(s, q, 8)));
		json_object_object_add(m, "client_msg_id", jstr_or_null(col_s(s, q, 9)));
		json_object_object_add(m, "ts", json_object_new_int64(col_i(s, q, 10)));
		e = json_object_new_object();
		json_object_object_add(e, "with", g == 0 ? jstr_or_null(col_s(s, q, 1)) : NULL);
		json_object_object_add(e, "group_id", g != 0 ? json_object_new_int64((int64_t)g) : NULL);
		json_object_object_add(e, "last_message", m);
		json_object_object_add(e, "unread", json_object_new_int64(col_i(s, q, 2)));
		json_object_object_add(e, "last_ts", json_object_new_int64(col_i(s, q, 3)));
		json_object_array_add(list, e);
	}
	store_done(s, q);
	if (rc < 0) {
		json_object_put(list);
		return -1;
	}
	o = json_object_new_object();
	json_object_object_add(o, "conversations", list);
	c->json = json_take(o);
	return 0;
}

int
store_conversations_json(struct store *s, const char *user, int limit, char **json)
{
	struct json_ctx c = { user, 0, limit, NULL };

	*json = NULL;
	if (user == NULL || !protocol_valid_user(user) || limit < 1)
		return store_refuse(EINVAL);
	return store_run_json(s, conversations_fn, &c, &c.json, json);
}

/* --- groups -------------------------------------------------------------------------------- */

/*
 * Group events (group_update, one per member per change, in that member's log):
 *   create  every member, creator included: {"action":"created","user":<that member>,"by":creator}
 *   add     every member after the change, the new one included: "member_added", user = new one
 *   remove  every member before the change, the removed one included: "member_removed"
 * Adding an existing member or any refused change appends nothing.
 */

struct group_ctx {
	const char		*by;
	const char		*user;
	const char		*name;
	char			**members;	/* create: sorted, unique, creator included */
	size_t			 n;
	uint64_t		 g;
	struct store_targets	*t;
	char			*json;
	int			 member;
};

/* Append a group_update event to the log of every user in users (sorted: lock order). */
static int
group_notify(struct store *s, char *const *users, size_t n, uint64_t g, const char *action,
    const char *user, const char *by, struct store_targets *t)
{
	uint64_t seq;
	size_t i;
	char *body;
	int rc;

	for (i = 0; i < n; i++) {
		if (seq_alloc(s, users[i], 1, &seq) != 0)
			return -1;
		/* "created" tells each member that it is in the group: user is that member. */
		body = protocol_event_group_update(seq, g, action, user != NULL ? user : users[i], by);
		rc = event_append_body(s, users[i], seq, body, t);
		free(body);
		if (rc != 0)
			return -1;
	}
	return 0;
}

/* Create: the group, its members (creator admin), a "created" event in every member's log. */
static int
group_create_txn(struct store *s, void *arg)
{
	struct group_ctx *c = arg;
	size_t i;

	store_targets_clear(c->t);
	if (EXEC(s, Q_GROUP_INSERT, PS(c->name), PS(c->by), PI(parley_now_ms())) != 0)
		return -1;
	c->g = store_insert_id(s, Q_GROUP_INSERT);
	for (i = 0; i < c->n; i++) {
		if (EXEC(s, Q_MEMBER_INSERT, PU(c->g), PS(c->members[i]),
		    PU(strcmp(c->members[i], c->by) == 0)) != 0)
			return -1;
	}
	return group_notify(s, c->members, c->n, c->g, "created", NULL, c->by, c->t);
}

int
store_group_create(struct store *s, const char *creator, const char *name,
    char *const *members, size_t n, uint64_t *group_id, struct store_targets *t)
{
	struct group_ctx c;
	size_t i, j;
	int rc;

	memset(t, 0, sizeof *t);
	memset(&c, 0, sizeof c);
	if (creator == NULL || !protocol_valid_user(creator) || name == NULL || *name == '\0' ||
	    !protocol_valid_utf8(name, strlen(name)) || protocol_utf8_chars(name) > 100)
		return store_refuse(EINVAL);
	for (i = 0; i < n; i++) {
		if (members[i] == NULL || !protocol_valid_user(members[i]))
			return store_refuse(EINVAL);
	}
	c.members = xcalloc(n + 1, sizeof *c.members);
	c.members[0] = (char *)creator;
	for (i = 0; i < n; i++)
		c.members[i + 1] = members[i];
	qsort(c.members, n + 1, sizeof *c.members, strp_cmp);
	for (i = j = 0; i < n + 1; i++) {
		if (j == 0 || strcmp(c.members[j - 1], c.members[i]) != 0)
			c.members[j++] = c.members[i];
	}
	c.n = j;
	c.by = creator;
	c.name = name;
	c.t = t;
	if ((rc = store_run(s, 1, group_create_txn, &c)) == 0)
		*group_id = c.g;
	else
		store_targets_clear(t);
	free(c.members);
	return rc;
}

/* The group's name, members and admins; only a member may see them. */
static int
group_json_fn(struct store *s, void *arg)
{
	struct group_ctx *c = arg;
	struct json_object *o, *ms, *as;
	char *name = NULL, **m;
	int *admin, rc, member = 0;
	size_t n, i;

	free(c->json);
	c->json = NULL;
	if ((rc = group_exists(s, c->g, &name)) != 1)
		return rc < 0 ? -1 : store_refuse(ENOENT);
	if (group_load(s, c->g, &m, &n, &admin) != 0) {
		free(name);
		return -1;
	}
	ms = json_object_new_array();
	as = json_object_new_array();
	for (i = 0; i < n; i++) {
		if (strcmp(m[i], c->user) == 0)
			member = 1;
		json_object_array_add(ms, json_object_new_string(m[i]));
		if (admin[i])
			json_object_array_add(as, json_object_new_string(m[i]));
	}
	o = json_object_new_object();
	json_object_object_add(o, "group_id", json_object_new_int64((int64_t)c->g));
	json_object_object_add(o, "name", json_object_new_string(name));
	json_object_object_add(o, "members", ms);
	json_object_object_add(o, "admins", as);
	free(name);
	strv_free(m, n);
	free(admin);
	if (!member) {
		json_object_put(o);
		return store_refuse(EACCES);
	}
	c->json = json_take(o);
	return 0;
}

int
store_group_json(struct store *s, const char *user, uint64_t group_id, char **json)
{
	struct group_ctx c;

	*json = NULL;
	memset(&c, 0, sizeof c);
	if (user == NULL || !protocol_valid_user(user) || group_id == 0)
		return store_refuse(EINVAL);
	c.user = user;
	c.g = group_id;
	return store_run_json(s, group_json_fn, &c, &c.json, json);
}

/* Add: by must be an admin; every member (the new one included) gets member_added. */
static int
group_add_txn(struct store *s, void *arg)
{
	struct group_ctx *c = arg;
	char **m;
	size_t n;
	int rc;

	store_targets_clear(c->t);
	if ((rc = group_exists(s, c->g, NULL)) != 1)
		return rc < 0 ? -1 : store_refuse(ENOENT);
	if ((rc = group_role(s, c->g, c->by)) == -1)
		return -1;
	if (rc != 1)
		return store_refuse(EACCES);
	if (EXEC(s, Q_MEMBER_INSERT, PU(c->g), PS(c->user), PU(0)) != 0)
		return -1;
	if (store_affected(s, Q_MEMBER_INSERT) == 0)
		return 1;	/* already a member: nothing changes, no event */
	if (group_load(s, c->g, &m, &n, NULL) != 0)
		return -1;
	rc = group_notify(s, m, n, c->g, "member_added", c->user, c->by, c->t);
	strv_free(m, n);
	return rc;
}

/* Run a membership change (add or remove user, made by by) as one transaction; fills t. */
static int
group_change(struct store *s, store_fn txn, const char *by, uint64_t group_id, const char *user,
    struct store_targets *t)
{
	struct group_ctx c;

	memset(t, 0, sizeof *t);
	memset(&c, 0, sizeof c);
	if (by == NULL || user == NULL || !protocol_valid_user(by) || !protocol_valid_user(user) ||
	    group_id == 0)
		return store_refuse(EINVAL);
	c.by = by;
	c.user = user;
	c.g = group_id;
	c.t = t;
	if (store_run(s, 1, txn, &c) != 0) {
		store_targets_clear(t);
		return -1;
	}
	return 0;
}

int
store_group_add(struct store *s, const char *by, uint64_t group_id, const char *user,
    struct store_targets *t)
{
	return group_change(s, group_add_txn, by, group_id, user, t);
}

/* Remove: by is an admin or the user itself; the members before removal (user too) are told. */
static int
group_remove_txn(struct store *s, void *arg)
{
	struct group_ctx *c = arg;
	char **m;
	size_t n;
	int rc;

	store_targets_clear(c->t);
	if ((rc = group_exists(s, c->g, NULL)) != 1)
		return rc < 0 ? -1 : store_refuse(ENOENT);
	if (strcmp(c->by, c->user) != 0) {
		if ((rc = group_role(s, c->g, c->by)) == -1)
			return -1;
		if (rc != 1)
			return store_refuse(EACCES);
	}
	if ((rc = group_role(s, c->g, c->user)) == -1)
		return -1;
	if (rc == -2)
		return store_refuse(ENOENT);
	if (group_load(s, c->g, &m, &n, NULL) != 0)
		return -1;
	if ((rc = EXEC(s, Q_MEMBER_DELETE, PU(c->g), PS(c->user))) == 0)
		rc = group_notify(s, m, n, c->g, "member_removed", c->user, c->by, c->t);
	strv_free(m, n);
	return rc;
}

int
store_group_remove(struct store *s, const char *by, uint64_t group_id, const char *user,
    struct store_targets *t)
{
	return group_change(s, group_remove_txn, by, group_id, user, t);
}

/* The members of an existing group (ENOENT when there is none). */
static int
group_members_fn(struct store *s, void *arg)
{
	struct group_ctx *c = arg;
	int rc;

	strv_free(c->members, c->n);
	c->members = NULL;
	c->n = 0;
	if ((rc = group_exists(s, c->g, NULL)) != 1)
		return rc < 0 ? -1 : store_refuse(ENOENT);
	return group_load(s, c->g, &c->members, &c->n, NULL);
}

int
store_group_members(struct store *s, uint64_t group_id, char ***members, size_t *n)
{
	struct group_ctx c;

	*members = NULL;
	*n = 0;
	memset(&c, 0, sizeof c);
	if (group_id == 0)
		return store_refuse(EINVAL);
	c.g = group_id;
	if (store_run(s, 0, group_members_fn, &c) != 0) {
		strv_free(c.members, c.n);
		return -1;
	}
	*members = c.members;
	*n = c.n;
	return 0;
}

/* Is c->user in group c->g (a missing group has no members)? */
static int
is_member_fn(struct store *s, void *arg)
{
	struct group_ctx *c = arg;
	int rc;

	if ((rc = group_role(s, c->g, c->user)) == -1)
		return -1;
	c->member = rc >= 0;
	return 0;
}

int
store_is_member(struct store *s, uint64_t group_id, const char *user, int *member)
{
	struct group_ctx c;

	memset(&c, 0, sizeof c);
	*member = 0;
	if (user == NULL || !protocol_valid_user(user))
		return store_refuse(EINVAL);
	c.g = group_id;
	c.user = user;
	if (store_run(s, 0, is_member_fn, &c) != 0)
		return -1;
	*member = c.member;
	return 0;
}

/* --- presence ------------------------------------------------------------------------------ */

struct presence_ctx {
	const char	*user;
	const char	*node;
	int		 delta;
	int64_t		 now;
	int		 changed;
	char *const	*users;
	size_t		 n;
	char		*json;
};

/* Count a connection of user on node up or down; changed when online flipped. */
static int
presence_update_txn(struct store *s, void *arg)
{
	struct presence_ctx *c = arg;
	uint64_t before, after;
	int rc;

	c->changed = 0;
	if (EXEC(s, Q_PRES_LOCK, PS(c->user)) != 0)
		return -1;
	rc = ROW(s, Q_PRES_SUM, PS(c->user));
	before = rc == 1 ? col_u(s, Q_PRES_SUM, 0) : 0;
	store_done(s, Q_PRES_SUM);
	if (rc < 0)
		return -1;
	after = before;
	if (c->delta > 0) {
		if (EXEC(s, Q_PRES_INC, PS(c->user), PS(c->node)) != 0)
			return -1;
		after++;
	} else {
		if (EXEC(s, Q_PRES_DEC, PS(c->user), PS(c->node)) != 0)
			return -1;
		if (store_affected(s, Q_PRES_DEC) > 0)
			after--;
	}
	c->changed = (before == 0) != (after == 0);
	if (c->changed && after == 0 && EXEC(s, Q_PRES_SEEN, PI(c->now), PS(c->user)) != 0)
		return -1;
	return 0;
}

int
store_presence_update(struct store *s, const char *user, const char *node, int delta,
    int64_t now_ms, int *online_changed)
{
	struct presence_ctx c = { .user = user, .node = node, .delta = delta, .now = now_ms };

	*online_changed = 0;
	if (user == NULL || node == NULL || !protocol_valid_user(user) || *node == '\0' ||
	    strlen(node) > 128 || (delta != 1 && delta != -1))
		return store_refuse(EINVAL);
	if (store_run(s, 1, presence_update_txn, &c) != 0)
		return -1;
	*online_changed = c.changed;
	return 0;
}

/* A node restarted: its connections are gone; users it had online were last seen now. */
static int
presence_reset_txn(struct store *s, void *arg)
{
	struct presence_ctx *c = arg;

	if (EXEC(s, Q_PRES_RESET_SEEN, PI(c->now), PS(c->node)) != 0)
		return -1;
	return EXEC(s, Q_PRES_RESET_DEL, PS(c->node));
}

int
store_presence_reset(struct store *s, const char *node, int64_t now_ms)
{
	struct presence_ctx c = { .node = node, .now = now_ms };

	if (node == NULL || *node == '\0' || strlen(node) > 128)
		return store_refuse(EINVAL);
	return store_run(s, 1, presence_reset_txn, &c);
}

/* Online flag and last_seen of every asked user (unknown users: offline, null). */
static int
presence_json_fn(struct store *s, void *arg)
{
	struct presence_ctx *c = arg;
	struct json_object *o, *list, *e;
	int64_t seen;
	size_t i;
	int rc;

	free(c->json);
	c->json = NULL;
	list = json_object_new_array();
	for (i = 0; i < c->n; i++) {
		if ((rc = ROW(s, Q_PRES_GET, PS(c->users[i]), PS(c->users[i]))) < 0) {
			json_object_put(list);
			return -1;
		}
		e = json_object_new_object();
		json_object_object_add(e, "user", json_object_new_string(c->users[i]));
		json_object_object_add(e, "online",
		    json_object_new_boolean(rc == 1 && col_u(s, Q_PRES_GET, 0) > 0));
		seen = rc == 1 ? col_i(s, Q_PRES_GET, 1) : 0;
		json_object_object_add(e, "last_seen", seen != 0 ? json_object_new_int64(seen) : NULL);
		store_done(s, Q_PRES_GET);
		json_object_array_add(list, e);
	}
	o = json_object_new_object();
	json_object_object_add(o, "presence", list);
	c->json = json_take(o);
	return 0;
}

int
store_presence_json(struct store *s, char *const *users, size_t n, char **json)
{
	struct presence_ctx c = { .users = users, .n = n };
	size_t i;

	*json = NULL;
	for (i = 0; i < n; i++) {
		if (users[i] == NULL || !protocol_valid_user(users[i]))
			return store_refuse(EINVAL);
	}
	return store_run_json(s, presence_json_fn, &c, &c.json, json);
}

/* --- rooms --------------------------------------------------------------------------------- */

struct room_ctx {
	const char		*room;
	const char		*user;
	const char		*text;
	int			 per_sec;
	uint64_t		 id;
	int64_t			 ts;
	int			 limit;
	struct store_page	*page;
};

/*
 * Rate limit: a sliding one-second window per user. Under the user's room_rate row lock (so it
 * holds across processes) count the posts of the last 1000 ms in room_rate_log; a fixed
 * per-second window would let 2 * per_sec through across a second boundary. A refused post rolls
 * back and does not count. Then the comment is stored and the room trimmed to its newest
 * room_history comments.
 */
static int
room_post_txn(struct store *s, void *arg)
{
	struct room_ctx *c = arg;
	uint64_t n, cut;
	int rc;

	c->ts = parley_now_ms();
	if (EXEC(s, Q_RATE_LOCK, PS(c->user)) != 0)
		return -1;
	rc = ROW(s, Q_RATE_COUNT, PS(c->user), PI(c->ts - 1000));
	n = rc == 1 ? col_u(s, Q_RATE_COUNT, 0) : 0;
	store_done(s, Q_RATE_COUNT);
	if (rc < 0)
		return -1;
	if (n >= (uint64_t)c->per_sec)
		return store_refuse(EBUSY);
	if (EXEC(s, Q_RATE_PRUNE, PS(c->user), PI(c->ts - 1000)) != 0 ||
	    EXEC(s, Q_RATE_LOG, PS(c->user), PI(c->ts)) != 0)
		return -1;
	if (EXEC(s, Q_ROOM_INSERT, PS(c->room), PS(c->user), PS(c->text), PI(c->ts)) != 0)
		return -1;
	c->id = store_insert_id(s, Q_ROOM_INSERT);
	rc = ROW(s, Q_ROOM_NTH, PS(c->room), PU((uint64_t)s->cfg->room_history));
	cut = rc == 1 ? col_u(s, Q_ROOM_NTH, 0) : 0;
	store_done(s, Q_ROOM_NTH);
	if (rc < 0)
		return -1;
	if (cut != 0 && EXEC(s, Q_ROOM_TRIM, PS(c->room), PU(cut)) != 0)
		return -1;
	return 0;
}

int
store_room_post(struct store *s, const char *room, const char *user, const char *text,
    int per_sec, uint64_t *id, int64_t *ts)
{
	struct room_ctx c = { .room = room, .user = user, .text = text, .per_sec = per_sec };

	if (room == NULL || user == NULL || text == NULL || !protocol_valid_room(room) ||
	    !protocol_valid_user(user) || *text == '\0' || !protocol_valid_utf8(text, strlen(text)) ||
	    per_sec < 1)
		return store_refuse(EINVAL);
	if (store_run(s, 1, room_post_txn, &c) != 0)
		return -1;
	*id = c.id;
	*ts = c.ts;
	return 0;
}

/* A page of the room's comments after c->id; one row more than the limit tells has_more. */
static int
room_history_fn(struct store *s, void *arg)
{
	struct room_ctx *c = arg;
	struct store_page *p = c->page;
	uint64_t id;
	int rc;

	store_page_clear(p);
	p->next = c->id;
	p->has_more = 0;
	if (EXEC(s, Q_ROOM_PAGE, PS(c->room), PU(c->id), PU((uint64_t)c->limit + 1)) != 0)
		return -1;
	while ((rc = store_fetch(s, Q_ROOM_PAGE)) == 1) {
		if (p->n == (size_t)c->limit) {
			p->has_more = 1;
			break;
		}
		id = col_u(s, Q_ROOM_PAGE, 0);
		page_push(p, protocol_event_room_message(c->room, id, col_s(s, Q_ROOM_PAGE, 1),
		    col_s(s, Q_ROOM_PAGE, 2), col_i(s, Q_ROOM_PAGE, 3)));
		p->next = id;
	}
	store_done(s, Q_ROOM_PAGE);
	return rc < 0 ? -1 : 0;
}

int
store_room_history(struct store *s, const char *room, uint64_t after, int limit,
    struct store_page *p)
{
	struct room_ctx c = { .room = room, .id = after, .limit = limit, .page = p };

	memset(p, 0, sizeof *p);
	if (room == NULL || !protocol_valid_room(room) || limit < 1)
		return store_refuse(EINVAL);
	if (store_run(s, 0, room_history_fn, &c) != 0) {
		store_page_clear(p);
		return -1;
	}
	return 0;
}
