/* store_int.h - what the store files share: connection, statement plumbing, store__ helpers. */
#ifndef STORE_INT_H
#define STORE_INT_H

/*
 * The store is one module (prefix store_, public API in store.h) spread over one file per
 * concern; only those files include this header:
 *   store.c           connection, statements, store__run (transactions, retries), shared helpers
 *   store_send.c      sends (messages, new_message events)
 *   store_log.c       event log pages, last seq, device cursors
 *   store_receipt.c   receipts, the receipts of a message, the conversation list
 *   store_group.c     groups and membership
 *   store_presence.c  presence
 *   store_room.c      rooms
 *   store_history.c   conversation history pages
 *   store_retention.c retention (prune)
 *
 * Statements come in sets, one per file. A statement id is STORE__Q(set) + its index in the set
 * (at most STORE__QPER per set); every connection prepares a statement on first use. To add a
 * concern in a file store_x.c:
 *   1. add STORE__SET_X to enum store__set below;
 *   2. in store_x.c: an enum of ids starting at STORE__Q(STORE__SET_X) and ending with Q_X_END,
 *      STORE__QSET_CHECK(Q_X_END, STORE__SET_X) (the set stays within its range), the texts
 *        static const char *const x_sql[Q_X_END - STORE__Q(STORE__SET_X)] = {
 *        	STORE__SQL(Q_X_ONE) = "SELECT ...", ... };
 *      and const struct store__qset store__x_qset = { x_sql, Q_X_END - STORE__Q(STORE__SET_X),
 *      NULL } (or a make function for texts built at run time, see store_send.c);
 *   3. declare store__x_qset below and list it in store__qsets[] in store.c;
 *   4. add store_x.c to libparley_a_SOURCES in Makefile.am.
 * A body run by store__run (a transaction when asked) uses EXEC/ROW, store__fetch and the
 * store__col_* readers, store__done when it has read a result, and returns 0 (commit), 1 (done,
 * nothing to write: roll back) or -1 (MySQL error noted by the plumbing, or store__refuse(errno)).
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mysql.h>

#include "parley.h"
#include "store.h"

struct config;
struct json_object;

/* MySQL 8's client library dropped my_bool; libmariadb still has it. */
#if !defined(MARIADB_BASE_VERSION) && !defined(MARIADB_PACKAGE_VERSION) && MYSQL_VERSION_ID >= 80000
#define my_bool bool
#endif

/*
 * Event kinds in the events table. A new_message event only references its message (the content
 * is stored once, in messages, and the event is encoded on read); every other event is stored as
 * its complete JSON text, seq included: the seq is known when the row is written, so reading a
 * page never parses JSON.
 */
enum store_ev { EV_MESSAGE = 1, EV_BODY = 2 };

/* The statement sets, one per file (see above). */
enum store__set {
	STORE__SET_CORE,
	STORE__SET_SEND,
	STORE__SET_LOG,
	STORE__SET_RECEIPT,
	STORE__SET_GROUP,
	STORE__SET_PRESENCE,
	STORE__SET_ROOM,
	STORE__SET_HISTORY,
	STORE__SET_RETENTION,
	STORE__SET_COUNT
};

#define STORE__QBITS	6
#define STORE__QPER	(1u << STORE__QBITS)		/* statements per set at most */
#define STORE__QMAX	(STORE__SET_COUNT * STORE__QPER)	/* statement ids are below this */
/* The first statement id of a set. */
#define STORE__Q(set)	((unsigned)(set) << STORE__QBITS)
/* Designator of statement q's text in its set's table. */
#define STORE__SQL(q)	[(q) & (STORE__QPER - 1)]
#define STORE__QSET_CHECK(end, set) \
	_Static_assert((end) - STORE__Q(set) <= STORE__QPER, "too many statements in a set")

/*
 * A set's statements: sql[i] is the text of id STORE__Q(set) + i; an entry left NULL is built by
 * make(i) once per struct store (multi-row forms; the store frees it).
 */
struct store__qset {
	const char *const	*sql;
	unsigned		 n;
	char			*(*make)(unsigned i);
};
extern const struct store__qset store__send_qset;
extern const struct store__qset store__log_qset;
extern const struct store__qset store__receipt_qset;
extern const struct store__qset store__group_qset;
extern const struct store__qset store__presence_qset;
extern const struct store__qset store__room_qset;
extern const struct store__qset store__history_qset;
extern const struct store__qset store__retention_qset;

/* Statements of the core set (store.c), used by several files. */
enum {
	Q_SEQ_ALLOC = STORE__Q(STORE__SET_CORE),
	Q_EV_INSERT_BODY,
	Q_GROUP_GET,
	Q_MEMBERS,
	Q_ROLE,
	Q_ATT_GET,
	Q_ATT_SET,
	Q_CORE_END
};

/*
 * Rows per statement of the multi-row forms, largest first; the last is the one-row form
 * (STORE__NCHUNKS entries). See store__exec_rows.
 */
#define STORE__NCHUNKS	10
extern const size_t store__chunks[STORE__NCHUNKS];

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
	struct store_stmt	 q[STORE__QMAX];
	char			*msql[STORE__QMAX];	/* SQL built by a set's make() */
	MYSQL_BIND		*pb;		/* parameter scratch, pcap long */
	unsigned long		*plen;
	size_t			 pcap;
	unsigned		 myerr;		/* MySQL error of the current attempt, 0 = none */
	int			 retry_ok;	/* the current error may be retried (a 1062 in a send) */
	uint64_t		 reconnects;
	int			 connected_once;
	int			 down_logged;
	char			 down_why[256];	/* mysql_error() of the last failed connect */
	int64_t			 next_try;	/* monotonic ms before which we do not reconnect */
	int			 backoff;
	unsigned		 seed;
	uint64_t		 autoinc_step;	/* ids of a multi-row INSERT: first + k * step; 0: not so */
	uint64_t		 rng;		/* splitmix64 state (attempt tokens, owner id) */
	uint64_t		 owner;		/* this store's row in store_attempts */
	uint64_t		 token;		/* attempt token of the current store__run call */
	int			 unsure;	/* a COMMIT of this call lost its reply: it may be in */
	int			 chain;		/* store_chain_transactions() */
	int			 chained;	/* an empty transaction is open (COMMIT AND CHAIN) */
	const char		*dup_what;	/* statement of the last duplicate key error */
	char			 dup_msg[256];	/* and MySQL's message */
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
#define EXEC(s, q, ...) store__exec((s), (q), (struct store_param[]){ __VA_ARGS__ }, \
	sizeof((struct store_param[]){ __VA_ARGS__ }) / sizeof(struct store_param))
#define ROW(s, q, ...) store__row((s), (q), (struct store_param[]){ __VA_ARGS__ }, \
	sizeof((struct store_param[]){ __VA_ARGS__ }) / sizeof(struct store_param))

/* A transaction body: 0 commit, 1 done without writing (roll back), -1 failed (see store__run). */
typedef int (*store__fn)(struct store *, void *);

/* --- statements (store.c) --- */
void		 store__fail(struct store *, unsigned e, const char *what);
int		 store__exec(struct store *, unsigned q, const struct store_param *, size_t n);
int		 store__fetch(struct store *, unsigned q);
void		 store__done(struct store *, unsigned q);
int		 store__row(struct store *, unsigned q, const struct store_param *, size_t n);
int		 store__exec_rows(struct store *, const unsigned *qs, const struct store_param *,
		    size_t nrows, size_t width);
const char	*store__col_s(struct store *, unsigned q, unsigned i);
int		 store__col_null(struct store *, unsigned q, unsigned i);
uint64_t	 store__col_u(struct store *, unsigned q, unsigned i);
int64_t		 store__col_i(struct store *, unsigned q, unsigned i);
/* The message of 7 columns from first on, as Q_EV_PAGE has them (store_log.c). */
void		 store__col_message(struct store *, unsigned q, unsigned first,
		    struct proto_message *);
uint64_t	 store__affected(struct store *, unsigned q);
uint64_t	 store__insert_id(struct store *, unsigned q);
int		 store__refuse(int err);
char		*store__multi_sql(const char *head, const char *row, size_t n, const char *tail);

/* --- transactions (store.c) --- */
int		 store__run(struct store *, int txn, store__fn, void *arg);
int		 store__run_json(struct store *, store__fn, void *ctx, char **slot, char **json);

/*
 * Lost COMMIT replies (docs/reliability.md). Every store__run call gets a new attempt token
 * (s->token). A write body that may be re-run after its COMMIT was applied but its reply lost
 * starts with store__mine: 1 when an earlier run of this very call committed (then a and b and
 * the targets are what that run recorded with store__mark, and the body returns 1: nothing more
 * to write), 0 when not (checked only after a lost COMMIT reply: no cost otherwise), -1 error.
 * store__mark, the body's last statement, records the call's result under the token in the
 * same transaction. Sends use messages.attempt instead (store_send.c).
 */
int		 store__mine(struct store *, uint64_t *a, uint64_t *b, struct store_targets *);
int		 store__mark(struct store *, uint64_t a, uint64_t b, const struct store_targets *);

/* --- shared helpers (store.c) --- */
void		 store__targets_push(struct store_targets *, const char *user, uint64_t seq);
void		 store__page_push(struct store_page *, char *ev);
void		 store__strv_free(char **v, size_t n);
int		 store__strp_cmp(const void *, const void *);
char		*store__json_take(struct json_object *);
int		 store__seq_alloc(struct store *, const char *user, uint64_t k, uint64_t *first);
int		 store__event_append_body(struct store *, const char *user, uint64_t seq,
		    const char *body, struct store_targets *);
int		 store__group_load(struct store *, uint64_t g, char ***members, size_t *n,
		    int **admins);
int		 store__group_exists(struct store *, uint64_t g, char **name);
int		 store__group_role(struct store *, uint64_t g, const char *user);

#endif
