/* testenv.h - what Check tests share: the throwaway stack's config, unique names, fault injection. */
#ifndef TESTENV_H
#define TESTENV_H

#include <stddef.h>
#include <stdint.h>

struct config;
struct json_object;
struct Suite;

/*
 * Load the config written by tests/harness/services ($PARLEY_TEST_CONFIG) into cfg; aborts the
 * test binary when there is none (run it through tests/harness/with-services).
 */
void	testenv_config(struct config *cfg);
/* A name unique across test processes and runs: prefix + pid + counter, at most 64 bytes. Caller frees. */
char	*testenv_name(const char *prefix);
/* The throwaway stack's directory (for bus directories and sockets of a test). */
const char *testenv_dir(void);
/* Faults a real part can produce on demand: memcached stopped (SIGSTOP), continued, killed, restarted; MySQL restarted. */
void	testenv_memcached_signal(int sig);
void	testenv_memcached_restart(void);
void	testenv_mysql_restart(void);
/* The stack's redis-server killed (SIGKILL) or started again (same socket and password). */
void	testenv_redis_stop(void);
void	testenv_redis_start(void);
/*
 * The lost-COMMIT-reply fault: tests/harness/mysql-commit-drop between a store and the stack's
 * MariaDB. start points cfg->mysql_socket at a new proxy; arm makes it drop the reply to the next
 * COMMIT (and close that connection); fired is 1 once an armed drop happened.
 */
struct testenv_proxy {
	int	 pid;
	char	*sock;
	char	*arm;
};
void	testenv_proxy_start(struct testenv_proxy *, struct config *cfg);
void	testenv_proxy_arm(struct testenv_proxy *);
int	testenv_proxy_fired(const struct testenv_proxy *);
void	testenv_proxy_stop(struct testenv_proxy *);
/* Run a shell command, fail the test when it exits non-zero. */
void	testenv_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* JSON answers: parse text (fails the test unless it is JSON; caller puts the object). */
struct json_object *testenv_json(const char *text);
/* The member at a dotted path ("message.content") of o; fails the test when it is missing. */
struct json_object *testenv_json_get(struct json_object *o, const char *path);
const char *testenv_json_str(struct json_object *o, const char *path);
int64_t	testenv_json_int(struct json_object *o, const char *path);

/* Run every test of suite s (Check's default fork mode), free it; the exit status for main(). */
int	testenv_run(struct Suite *s);

#endif
