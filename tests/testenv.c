/* testenv.c - what Check tests share: the throwaway stack's config, unique names, fault injection. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <check.h>
#include <json-c/json.h>

#include "config.h"
#include "log.h"
#include "testenv.h"
#include "xmalloc.h"

void
testenv_config(struct config *cfg)
{
	const char *path = getenv("PARLEY_TEST_CONFIG");
	char *cause = NULL;

	if (path == NULL)
		fatal("PARLEY_TEST_CONFIG is not set: run through tests/harness/with-services");
	if (config_load(cfg, path, &cause) != 0)
		fatal("test config: %s", cause);
}

char *
testenv_name(const char *prefix)
{
	static unsigned counter;
	char *s;

	xasprintf(&s, "%s%ld-%u-%u", prefix, (long)getpid(),
	    __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED), (unsigned)(random() % 100000));
	if (strlen(s) > 64)
		s[64] = '\0';
	return s;
}

const char *
testenv_dir(void)
{
	const char *d = getenv("PARLEY_TEST_DIR");

	if (d == NULL)
		fatal("PARLEY_TEST_DIR is not set: run through tests/harness/with-services");
	return d;
}

void
testenv_sh(const char *fmt, ...)
{
	va_list ap;
	char *cmd;
	int rc;

	va_start(ap, fmt);
	xvasprintf(&cmd, fmt, ap);
	va_end(ap);
	rc = system(cmd);
	if (rc != 0)
		fatal("command failed (%d): %s", rc, cmd);
	free(cmd);
}

static pid_t
testenv_pidfile(const char *name)
{
	char path[4096];
	long pid = 0;
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", testenv_dir(), name);
	if ((f = fopen(path, "r")) == NULL)
		fatal("cannot open %s", path);
	if (fscanf(f, "%ld", &pid) != 1)
		fatal("no pid in %s", path);
	fclose(f);
	return (pid_t)pid;
}

void
testenv_memcached_signal(int sig)
{
	if (kill(testenv_pidfile("memcached.pid"), sig) != 0)
		fatal("kill memcached: %d", sig);
}

void
testenv_memcached_restart(void)
{
	const char *d = testenv_dir();

	/* A killed memcached leaves its socket file behind: remove it so the wait below means something. */
	testenv_sh("rm -f '%s/memcached.sock' && memcached $( [ $(id -u) = 0 ] && echo -u root ) -s '%s/memcached.sock' -a 0700 "
	    "-m 64 -c 1024 -P '%s/memcached.pid' -d && for i in $(seq 50); do "
	    "[ -S '%s/memcached.sock' ] && exit 0; sleep 0.1; done; exit 1", d, d, d, d);
}

void
testenv_mysql_restart(void)
{
	const char *src = getenv("PARLEY_SRCDIR");

	/* setsid: Check kills a forked test's process group at its end, the new mariadbd included. */
	testenv_sh("setsid '%s/tests/harness/services' restart-mysql '%s' >/dev/null",
	    src != NULL ? src : ".", testenv_dir());
}

void
testenv_redis_stop(void)
{
	const char *src = getenv("PARLEY_SRCDIR");

	testenv_sh("'%s/tests/harness/services' stop-redis '%s' >/dev/null", src != NULL ? src : ".",
	    testenv_dir());
}

void
testenv_redis_start(void)
{
	const char *src = getenv("PARLEY_SRCDIR");

	/* setsid: Check kills a forked test's process group at its end, the new server included. */
	testenv_sh("setsid '%s/tests/harness/services' start-redis '%s' >/dev/null",
	    src != NULL ? src : ".", testenv_dir());
}

void
testenv_proxy_start(struct testenv_proxy *p, struct config *cfg)
{
	const char *src = getenv("PARLEY_SRCDIR");
	static unsigned n;
	char *script;
	struct stat st;
	pid_t pid;
	int i;

	memset(p, 0, sizeof *p);
	xasprintf(&p->sock, "%s/commit-drop-%ld-%u.sock", testenv_dir(), (long)getpid(), n);
	xasprintf(&p->arm, "%s/commit-drop-%ld-%u.arm", testenv_dir(), (long)getpid(), n++);
	xasprintf(&script, "%s/tests/harness/mysql-commit-drop", src != NULL ? src : ".");
	unlink(p->arm);
	if ((pid = fork()) < 0)
		fatal("fork: %s", strerror(errno));
	if (pid == 0) {
		execlp("python3", "python3", script, p->sock, cfg->mysql_socket, p->arm, (char *)NULL);
		_exit(127);
	}
	p->pid = (int)pid;
	free(script);
	for (i = 0; i < 100 && stat(p->sock, &st) != 0; i++)
		usleep(50 * 1000);
	ck_assert_msg(stat(p->sock, &st) == 0, "mysql-commit-drop did not start");
	free(cfg->mysql_socket);
	cfg->mysql_socket = xstrdup(p->sock);
}

void
testenv_proxy_arm(struct testenv_proxy *p)
{
	int fd;

	if ((fd = open(p->arm, O_WRONLY | O_CREAT | O_TRUNC, 0600)) < 0)
		fatal("%s: %s", p->arm, strerror(errno));
	close(fd);
}

int
testenv_proxy_fired(const struct testenv_proxy *p)
{
	return access(p->arm, F_OK) != 0;
}

void
testenv_proxy_stop(struct testenv_proxy *p)
{
	if (p->pid > 0) {
		kill((pid_t)p->pid, SIGTERM);
		waitpid((pid_t)p->pid, NULL, 0);
	}
	unlink(p->sock);
	unlink(p->arm);
	free(p->sock);
	free(p->arm);
	memset(p, 0, sizeof *p);
}

struct json_object *
testenv_json(const char *text)
{
	struct json_object *o = json_tokener_parse(text);

	ck_assert_msg(o != NULL, "not JSON: %s", text);
	return o;
}

struct json_object *
testenv_json_get(struct json_object *o, const char *path)
{
	char *copy = xstrdup(path), *k, *save = NULL;
	struct json_object *v = o;

	for (k = strtok_r(copy, ".", &save); k != NULL; k = strtok_r(NULL, ".", &save))
		ck_assert_msg(json_object_object_get_ex(v, k, &v), "no \"%s\" in %s", path,
		    json_object_to_json_string(o));
	free(copy);
	return v;
}

const char *
testenv_json_str(struct json_object *o, const char *path)
{
	return json_object_get_string(testenv_json_get(o, path));
}

int64_t
testenv_json_int(struct json_object *o, const char *path)
{
	return json_object_get_int64(testenv_json_get(o, path));
}

int
testenv_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
