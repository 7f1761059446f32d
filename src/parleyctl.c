/* parleyctl.c - operator tool: apply schema migrations, mint tokens. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <mysql.h>

#include "auth.h"
#include "config.h"
#include "log.h"
#include "parley.h"
#include "protocol.h"
#include "xmalloc.h"

#ifndef PARLEY_SCHEMA_DIR
#define PARLEY_SCHEMA_DIR "/usr/local/share/parley/schema"
#endif

/* The longest migration file we read (they are small hand-written DDL). */
#define CTL_SQL_MAX (4 * 1024 * 1024)

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: parleyctl [--config FILE] COMMAND [ARGS]\n"
	    "\n"
	    "commands:\n"
	    "  migrate [--schema-dir DIR]       apply the schema/NNN_*.sql files not yet applied\n"
	    "                                   (default DIR: %s, else ./schema)\n"
	    "  token USER [--ttl S] [--device ID]\n"
	    "                                   print a signed access token for USER\n"
	    "  check-config                     read and validate the configuration, print\n"
	    "                                   \"FILE: ok\" or the first error (exit 1)\n"
	    "\n"
	    "options:\n"
	    "  -c, --config FILE   configuration file (default: $PARLEY_CONFIG)\n"
	    "  -V, --version       print the version and exit\n"
	    "  -h, --help          this text\n"
	    "See parleyctl(1) and parley.conf(5).\n", PARLEY_SCHEMA_DIR);
}

/* The exit status for --help (0, text on stdout) or a usage error (2, text on stderr). */
static int
usage_status(int help)
{
	usage(help ? stdout : stderr);
	return help ? 0 : 2;
}

/* Load the configuration named by --config or $PARLEY_CONFIG; exits on failure. */
static void
ctl_config(struct config *cfg, const char *arg)
{
	const char *path = config_path(arg);
	char *cause = NULL;

	if (path == NULL)
		fatal("no configuration: use --config FILE or set PARLEY_CONFIG");
	if (config_load(cfg, path, &cause) != 0)
		fatal("%s", cause);
	if (config_validate(cfg, &cause) != 0)
		fatal("%s", cause);
}

/* --- migrate ------------------------------------------------------------------------------- */

/* Connect for administration: multi-statement SQL is allowed here (admin input, never users'). */
static MYSQL *
ctl_connect(const struct config *c)
{
	unsigned int ct = (unsigned int)c->mysql_connect_timeout;
	unsigned int rw = (unsigned int)c->mysql_rw_timeout * 6;
	MYSQL *my;

	if ((my = mysql_init(NULL)) == NULL)
		fatal("mysql_init: out of memory");
	mysql_options(my, MYSQL_OPT_CONNECT_TIMEOUT, &ct);
	mysql_options(my, MYSQL_OPT_READ_TIMEOUT, &rw);
	mysql_options(my, MYSQL_OPT_WRITE_TIMEOUT, &rw);
	mysql_options(my, MYSQL_SET_CHARSET_NAME, "utf8mb4");
	if (mysql_real_connect(my, c->mysql_socket != NULL ? NULL : c->mysql_host, c->mysql_user,
	    c->mysql_password, c->mysql_database, c->mysql_socket != NULL ? 0 : c->mysql_port,
	    c->mysql_socket, CLIENT_MULTI_STATEMENTS) == NULL)
		fatal("mysql: cannot connect: %s", mysql_error(my));
	return my;
}

/* Run SQL text (maybe several statements) and drain every result; 0 or -1 (error printed). */
static int
ctl_exec(MYSQL *my, const char *sql, size_t len, const char *what)
{
	MYSQL_RES *res;
	int rc;

	if (mysql_real_query(my, sql, len) != 0)
		goto fail;
	do {
		if ((res = mysql_store_result(my)) != NULL)
			mysql_free_result(res);
		else if (mysql_field_count(my) != 0)
			goto fail;
		if ((rc = mysql_next_result(my)) > 0)
			goto fail;
	} while (rc == 0);
	return 0;
fail:
	log_error("%s: error %u: %s", what, mysql_errno(my), mysql_error(my));
	return -1;
}

/* A migration file name: three digits, '_', anything, ".sql". Returns its version or -1. */
static int
ctl_version(const char *name)
{
	size_t n = strlen(name);

	if (n < 9 || name[0] < '0' || name[0] > '9' || name[1] < '0' || name[1] > '9' ||
	    name[2] < '0' || name[2] > '9' || name[3] != '_' || strcmp(name + n - 4, ".sql") != 0)
		return -1;
	return (name[0] - '0') * 100 + (name[1] - '0') * 10 + (name[2] - '0');
}

/* qsort order of migration file names (their NNN prefix sorts them by version). */
static int
ctl_name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Is version v recorded in schema_version? 1 yes, 0 no, -1 error. */
static int
ctl_applied(MYSQL *my, int v)
{
	MYSQL_RES *res;
	char sql[128];
	int found;

	snprintf(sql, sizeof sql, "SELECT 1 FROM schema_version WHERE version = %d", v);
	if (mysql_real_query(my, sql, strlen(sql)) != 0 || (res = mysql_store_result(my)) == NULL) {
		log_error("schema_version: %s", mysql_error(my));
		return -1;
	}
	found = mysql_num_rows(res) > 0;
	mysql_free_result(res);
	return found;
}

/* The whole of a migration file, NUL-terminated; *len its size. Exits when it cannot be read. */
static char *
ctl_read_file(const char *path, size_t *len)
{
	struct stat st;
	FILE *f;
	char *buf;

	if ((f = fopen(path, "r")) == NULL)
		fatal("%s: %s", path, strerror(errno));
	if (fstat(fileno(f), &st) != 0 || st.st_size > CTL_SQL_MAX)
		fatal("%s: unreadable or too large", path);
	buf = xmalloc((size_t)st.st_size + 1);
	*len = fread(buf, 1, (size_t)st.st_size, f);
	if (ferror(f))
		fatal("%s: read error", path);
	buf[*len] = '\0';
	fclose(f);
	return buf;
}

/*
 * Apply, in name order, every NNN_*.sql in dir whose NNN is not yet in schema_version. A named
 * lock keeps two migrators from interleaving; each file is recorded after it ran completely
 * (DDL is not transactional, so the files themselves are written to be re-runnable).
 */
static int
ctl_migrate(const struct config *cfg, const char *dir)
{
	static const char create[] = "CREATE TABLE IF NOT EXISTS schema_version ("
	    " version INT NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL,"
	    " applied_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP)"
	    " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";
	static const char lock[] = "SELECT GET_LOCK('parley_migrate', 60)";
	char **names = NULL, *path, *sql, *rec, *esc;
	size_t n = 0, i, len;
	struct dirent *de;
	MYSQL *my;
	DIR *d;
	int v, rc = -1, applied = 0, r;

	if ((d = opendir(dir)) == NULL)
		fatal("schema directory %s: %s", dir, strerror(errno));
	while ((de = readdir(d)) != NULL) {
		if (ctl_version(de->d_name) < 0)
			continue;
		names = xreallocarray(names, n + 1, sizeof *names);
		names[n++] = xstrdup(de->d_name);
	}
	closedir(d);
	if (n == 0)
		fatal("no NNN_*.sql files in %s", dir);
	qsort(names, n, sizeof *names, ctl_name_cmp);
	for (i = 1; i < n; i++) {
		if (ctl_version(names[i]) == ctl_version(names[i - 1]))
			fatal("%s and %s have the same version", names[i - 1], names[i]);
	}

	my = ctl_connect(cfg);
	if (ctl_exec(my, create, strlen(create), "schema_version") != 0 ||
	    ctl_exec(my, lock, strlen(lock), "lock") != 0)
		goto out;
	for (i = 0; i < n; i++) {
		v = ctl_version(names[i]);
		if ((r = ctl_applied(my, v)) < 0)
			goto out;
		if (r == 1)
			continue;
		xasprintf(&path, "%s/%s", dir, names[i]);
		sql = ctl_read_file(path, &len);
		r = ctl_exec(my, sql, len, path);
		free(sql);
		free(path);
		if (r != 0)
			goto out;
		esc = xmalloc(strlen(names[i]) * 2 + 1);
		mysql_real_escape_string(my, esc, names[i], strlen(names[i]));
		xasprintf(&rec, "INSERT INTO schema_version (version, name) VALUES (%d, '%s')", v, esc);
		r = ctl_exec(my, rec, strlen(rec), "schema_version");
		free(rec);
		free(esc);
		if (r != 0)
			goto out;
		printf("applied %s\n", names[i]);
		applied++;
	}
	if (applied == 0)
		printf("schema up to date\n");
	rc = 0;
out:
	mysql_close(my);
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return rc;
}

/* parleyctl migrate [--schema-dir DIR]: exit status 0 applied or up to date, 1 failed. */
static int
cmd_migrate(const char *config_arg, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "schema-dir", required_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct config cfg;
	const char *dir = NULL;
	struct stat st;
	int ch, rc;

	optind = 0;
	while ((ch = getopt_long(argc, argv, "+d:h", opts, NULL)) != -1) {
		switch (ch) {
		case 'd':
			dir = optarg;
			break;
		case 'h':
		default:
			return usage_status(ch == 'h');
		}
	}
	if (optind != argc)
		return usage_status(0);
	if (dir == NULL)
		dir = stat(PARLEY_SCHEMA_DIR, &st) == 0 ? PARLEY_SCHEMA_DIR : "schema";
	ctl_config(&cfg, config_arg);
	if (mysql_library_init(0, NULL, NULL) != 0)
		fatal("mysql_library_init failed");
	rc = ctl_migrate(&cfg, dir);
	mysql_library_end();
	config_clear(&cfg);
	return rc == 0 ? 0 : 1;
}

/* --- check-config ------------------------------------------------------------------------ */

/* parleyctl check-config: the same load and validation the daemons do at start-up, nothing else. */
static int
cmd_check_config(const char *config_arg, int argc, char **argv)
{
	const char *path = config_path(config_arg);
	struct config cfg;
	char *cause = NULL;

	if (argc > 1 && strcmp(argv[1], "--help") == 0)
		return usage_status(1);
	if (argc != 1)
		return usage_status(0);
	if (path == NULL) {
		log_error("no configuration: use --config FILE or set PARLEY_CONFIG");
		return 1;
	}
	if (config_load(&cfg, path, &cause) != 0)
		goto fail;	/* config_load freed cfg */
	if (config_validate(&cfg, &cause) != 0) {
		config_clear(&cfg);
		goto fail;
	}
	printf("%s: ok\n", path);
	config_clear(&cfg);
	return 0;
fail:
	fprintf(stderr, "parleyctl: %s\n", cause);
	free(cause);
	return 1;
}

/* --- token --------------------------------------------------------------------------------- */

/* parleyctl token USER [--ttl S] [--device ID]: print a token signed with auth.jwt_secret. */
static int
cmd_token(const char *config_arg, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "ttl", required_argument, NULL, 't' },
		{ "device", required_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	const char *user = NULL, *device = NULL;
	struct config cfg;
	uint64_t ttl = 0;
	int ch, have_ttl = 0;
	char *tok;

	optind = 0;
	while ((ch = getopt_long(argc, argv, "t:d:h", opts, NULL)) != -1) {
		switch (ch) {
		case 't':
			if (protocol_parse_u64(optarg, 1, 315360000, &ttl) != 0) {
				log_error("--ttl: expected seconds, 1..315360000");
				return 2;
			}
			have_ttl = 1;
			break;
		case 'd':
			device = optarg;
			break;
		case 'h':
		default:
			return usage_status(ch == 'h');
		}
	}
	if (optind + 1 != argc)
		return usage_status(0);
	user = argv[optind];
	if (!protocol_valid_user(user)) {
		log_error("invalid user id: 1-64 bytes of [A-Za-z0-9_.@+-]");
		return 2;
	}
	if (device != NULL && !protocol_valid_id(device)) {
		log_error("invalid device id: 1-64 printable bytes");
		return 2;
	}
	ctl_config(&cfg, config_arg);
	tok = auth_mint(cfg.jwt_secret, user, device, parley_now_ms() / 1000,
	    have_ttl ? (int)ttl : cfg.token_ttl);
	if (tok == NULL)
		fatal("cannot mint a token: %s", strerror(errno));
	printf("%s\n", tok);
	free(tok);
	config_clear(&cfg);
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 }
	};
	const char *config_arg = NULL, *cmd;
	int ch;

	log_init("parleyctl", LOG_LEVEL_INFO, 0);
	/* "+": stop at the command; its own options are parsed by the command. */
	while ((ch = getopt_long(argc, argv, "+c:hV", opts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			config_arg = optarg;
			break;
		case 'V':
			printf("parleyctl %s\n", PARLEY_VERSION);
			return 0;
		case 'h':
		default:
			return usage_status(ch == 'h');
		}
	}
	if (optind >= argc)
		return usage_status(0);
	cmd = argv[optind];
	argc -= optind;
	argv += optind;
	if (strcmp(cmd, "migrate") == 0)
		return cmd_migrate(config_arg, argc, argv);
	if (strcmp(cmd, "token") == 0)
		return cmd_token(config_arg, argc, argv);
	if (strcmp(cmd, "check-config") == 0)
		return cmd_check_config(config_arg, argc, argv);
	if (strcmp(cmd, "help") == 0)
		return usage_status(1);
	log_error("unknown command %s", cmd);
	return usage_status(0);
}
