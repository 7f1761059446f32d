/* conn.c - connection ids, the user and room indexes, and the bounded outbound queue. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>

#include "bus.h"
#include "conn.h"
#include "xmalloc.h"

/* A slot resolves an id; the generation makes an id of a closed connection stale. */
struct slot {
	struct conn	*c;
	uint32_t	 gen;
	uint32_t	 next_free;
};

/* A chained hash table of named entries, doubled when it holds more entries than buckets. */
struct conn_table {
	struct conn_key		**b;
	size_t			  n, mask;
};

struct conns {
	struct slot		*slots;
	size_t			 nslots;
	uint32_t		 free_head;	/* index + 1; 0 when none */
	size_t			 count;
	struct conn_table	 users;		/* of struct conn_user */
	struct conn_table	 rooms;		/* of struct conn_room */
	struct conn_table	 addrs;		/* of struct conn_addr */
	struct bus		*bus;		/* told of users and rooms that come and go; may be NULL */
	uint32_t		 room_gen;	/* the last conn_room.gen given */
};

/* FNV-1a: short keys, good enough spread, no allocation. */
static size_t
conn_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *s != '\0'; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return (size_t)h;
}

static void
conn_table_init(struct conn_table *t, size_t buckets)
{
	t->n = 0;
	t->mask = buckets - 1;
	t->b = xcalloc(buckets, sizeof *t->b);
}

/* Free every entry (each was allocated with its key first) and the buckets. */
static void
conn_table_free(struct conn_table *t)
{
	struct conn_key *k, *kn;
	size_t i;

	for (i = 0; i <= t->mask; i++) {
		for (k = t->b[i]; k != NULL; k = kn) {
			kn = k->next;
			free(k);
		}
	}
	free(t->b);
}

static struct conn_key *
conn_table_find(const struct conn_table *t, const char *name)
{
	struct conn_key *k;

	for (k = t->b[conn_hash(name) & t->mask]; k != NULL; k = k->next) {
		if (strcmp(k->name, name) == 0)
			return k;
	}
	return NULL;
}

/* Double the buckets when the table holds more entries than buckets (keeps chains short). */
static void
conn_table_grow(struct conn_table *t)
{
	struct conn_key **nb, *k, *kn;
	size_t i, nmask = (t->mask + 1) * 2 - 1;

	if (t->n <= t->mask + 1)
		return;
	nb = xcalloc(nmask + 1, sizeof *nb);
	for (i = 0; i <= t->mask; i++) {
		for (k = t->b[i]; k != NULL; k = kn) {
			kn = k->next;
			k->next = nb[conn_hash(k->name) & nmask];
			nb[conn_hash(k->name) & nmask] = k;
		}
	}
	free(t->b);
	t->b = nb;
	t->mask = nmask;
}

/* Add k, whose name is set and not in t yet. */
static void
conn_table_add(struct conn_table *t, struct conn_key *k)
{
	size_t b = conn_hash(k->name) & t->mask;

	k->next = t->b[b];
	t->b[b] = k;
	t->n++;
	conn_table_grow(t);
}

/* Unlink k and free its entry. */
static void
conn_table_drop(struct conn_table *t, struct conn_key *k)
{
	struct conn_key **pp;

	for (pp = &t->b[conn_hash(k->name) & t->mask]; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == k) {
			*pp = k->next;
			t->n--;
			free(k);
			return;
		}
	}
}

struct conns *
conns_new(size_t max)
{
	struct conns *cs;
	size_t i;

	cs = xcalloc(1, sizeof *cs);
	cs->nslots = max;
	cs->slots = xcalloc(max, sizeof *cs->slots);
	for (i = 0; i < max; i++)
		cs->slots[i].next_free = i + 2 <= max ? (uint32_t)(i + 2) : 0;
	cs->free_head = max > 0 ? 1 : 0;
	conn_table_init(&cs->users, 1024);
	conn_table_init(&cs->rooms, 256);
	conn_table_init(&cs->addrs, 1024);
	return cs;
}

void
conns_set_bus(struct conns *cs, struct bus *bus)
{
	cs->bus = bus;
}

void
conns_free(struct conns *cs)
{
	struct conn_room *r, *rn = NULL;
	size_t i = 0;

	if (cs == NULL)
		return;
	while (conns_room_at(cs, &i, &r, &rn) == 0)
		free(r->seen);
	conn_table_free(&cs->users);
	conn_table_free(&cs->rooms);
	conn_table_free(&cs->addrs);
	free(cs->slots);
	free(cs);
}

size_t
conns_count(const struct conns *cs)
{
	return cs->count;
}

int
conn_register(struct conns *cs, struct conn *c)
{
	struct slot *s;
	uint32_t idx;

	if (cs->free_head == 0)
		return -1;
	idx = cs->free_head - 1;
	s = &cs->slots[idx];
	cs->free_head = s->next_free;
	s->c = c;
	s->gen++;
	c->id = ((uint64_t)s->gen << 32) | idx;
	c->registered = 1;
	cs->count++;
	return 0;
}

struct conn *
conn_find(struct conns *cs, uint64_t id)
{
	uint32_t idx = (uint32_t)id, gen = (uint32_t)(id >> 32);

	if (idx >= cs->nslots || cs->slots[idx].gen != gen)
		return NULL;
	return cs->slots[idx].c;
}

int
conn_at(struct conns *cs, size_t *i, struct conn **c)
{
	while (*i < cs->nslots) {
		*c = cs->slots[(*i)++].c;
		if (*c != NULL)
			return 0;
	}
	return -1;
}

/* An entry's key is its first member: a found key is the entry itself. */
struct conn_user *
conns_user(struct conns *cs, const char *user)
{
	return (struct conn_user *)conn_table_find(&cs->users, user);
}

void
conn_set_user(struct conns *cs, struct conn *c, const char *user)
{
	struct conn_user *u;

	if ((u = conns_user(cs, user)) == NULL) {
		u = xcalloc(1, sizeof *u);
		strncpy(u->key.name, user, PARLEY_ID_MAX);
		conn_table_add(&cs->users, &u->key);
		bus_listen(cs->bus, BUS_USER_EVENT, u->key.name, 1);
	}
	c->user = u;
	c->uprev = NULL;
	c->unext = u->head;
	if (u->head != NULL)
		u->head->uprev = c;
	u->head = c;
	u->n++;
}

void
conn_set_addr(struct conns *cs, struct conn *c, const char *addr)
{
	struct conn_addr *a;

	if ((a = (struct conn_addr *)conn_table_find(&cs->addrs, addr)) == NULL) {
		a = xcalloc(1, sizeof *a);
		strncpy(a->key.name, addr, PARLEY_ID_MAX);
		conn_table_add(&cs->addrs, &a->key);
	}
	c->addr = a;
	a->n++;
}

size_t
conns_addr_count(struct conns *cs, const char *addr)
{
	struct conn_addr *a = (struct conn_addr *)conn_table_find(&cs->addrs, addr);

	return a != NULL ? a->n : 0;
}

/* A walk of both tables: only /metrics asks, rarely. */
void
conns_stats(struct conns *cs, struct conns_stats *st)
{
	struct conn_key *k;
	size_t i;

	memset(st, 0, sizeof *st);
	st->addrs = cs->addrs.n;
	for (i = 0; i <= cs->addrs.mask; i++) {
		for (k = cs->addrs.b[i]; k != NULL; k = k->next) {
			if (((struct conn_addr *)k)->n > st->addr_max)
				st->addr_max = ((struct conn_addr *)k)->n;
		}
	}
	for (i = 0; i <= cs->users.mask; i++) {
		for (k = cs->users.b[i]; k != NULL; k = k->next) {
			if (((struct conn_user *)k)->n > st->user_max)
				st->user_max = ((struct conn_user *)k)->n;
		}
	}
}

struct conn_room *
conns_room(struct conns *cs, const char *room)
{
	return (struct conn_room *)conn_table_find(&cs->rooms, room);
}

int
conns_room_at(struct conns *cs, size_t *i, struct conn_room **r, struct conn_room **next)
{
	struct conn_key *k = *next != NULL ? &(*next)->key : NULL;

	while (k == NULL) {
		if (*i > cs->rooms.mask)
			return -1;
		k = cs->rooms.b[(*i)++];
	}
	*r = (struct conn_room *)k;
	*next = (struct conn_room *)k->next;
	return 0;
}

int
conn_join(struct conns *cs, struct conn *c, const char *room)
{
	struct conn_room *r;
	struct room_join *j;

	int first = 0;

	for (j = c->rooms; j != NULL; j = j->cnext) {
		if (strcmp(j->room->key.name, room) == 0)
			return 0;
	}
	if (c->nrooms >= CONN_ROOMS_MAX) {
		errno = E2BIG;
		return -1;
	}
	if ((r = conns_room(cs, room)) == NULL) {
		r = xcalloc(1, sizeof *r);
		strncpy(r->key.name, room, PARLEY_ID_MAX);
		r->gen = ++cs->room_gen;
		conn_table_add(&cs->rooms, &r->key);
		bus_listen(cs->bus, BUS_ROOM, r->key.name, 1);
		first = 1;
	}
	j = xcalloc(1, sizeof *j);
	j->room = r;
	j->conn = c;
	j->rnext = r->head;
	if (r->head != NULL)
		r->head->rprev = j;
	r->head = j;
	r->n++;
	j->cnext = c->rooms;
	c->rooms = j;
	c->nrooms++;
	return first;
}

int
conn_room_seen(const struct conn_room *r, uint64_t id)
{
	uint32_t i;

	if (id <= r->seen_below)
		return 1;
	for (i = 0; i < r->seen_n; i++) {
		if (r->seen[i] == id)
			return 1;
	}
	return 0;
}

int
conn_room_pushed(struct conn_room *r, uint64_t id)
{
	if (conn_room_seen(r, id))
		return 1;
	if (r->seen == NULL)
		r->seen = xcalloc(CONN_ROOM_SEEN, sizeof *r->seen);
	if (r->seen_n < CONN_ROOM_SEEN) {
		r->seen[r->seen_n++] = id;
		return 0;
	}
	/* Full: the oldest push is forgotten; ids up to it count as pushed from now on. */
	if (r->seen[r->seen_pos] > r->seen_below)
		r->seen_below = r->seen[r->seen_pos];
	r->seen[r->seen_pos] = id;
	r->seen_pos = (r->seen_pos + 1) % CONN_ROOM_SEEN;
	return 0;
}

/* Unlink one membership from its room (dropping an empty room) and free it. */
static void
conn_join_free(struct conns *cs, struct room_join *j)
{
	struct conn_room *r = j->room;

	if (j->rprev != NULL)
		j->rprev->rnext = j->rnext;
	else
		r->head = j->rnext;
	if (j->rnext != NULL)
		j->rnext->rprev = j->rprev;
	if (--r->n == 0) {
		bus_listen(cs->bus, BUS_ROOM, r->key.name, -1);
		free(r->seen);
		conn_table_drop(&cs->rooms, &r->key);
	}
	free(j);
}

void
conn_leave(struct conns *cs, struct conn *c, const char *room)
{
	struct room_join **pp, *j;

	for (pp = &c->rooms; (j = *pp) != NULL; pp = &j->cnext) {
		if (strcmp(j->room->key.name, room) == 0) {
			*pp = j->cnext;
			c->nrooms--;
			conn_join_free(cs, j);
			return;
		}
	}
}

void
conn_unregister(struct conns *cs, struct conn *c)
{
	struct room_join *j, *jn;
	struct conn_user *u = c->user;
	uint32_t idx;

	for (j = c->rooms; j != NULL; j = jn) {
		jn = j->cnext;
		conn_join_free(cs, j);
	}
	c->rooms = NULL;
	c->nrooms = 0;
	if (u != NULL) {
		if (c->uprev != NULL)
			c->uprev->unext = c->unext;
		else
			u->head = c->unext;
		if (c->unext != NULL)
			c->unext->uprev = c->uprev;
		if (--u->n == 0) {
			bus_listen(cs->bus, BUS_USER_EVENT, u->key.name, -1);
			conn_table_drop(&cs->users, &u->key);
		}
		c->user = NULL;
	}
	if (c->addr != NULL) {
		if (--c->addr->n == 0)
			conn_table_drop(&cs->addrs, &c->addr->key);
		c->addr = NULL;
	}
	if (c->registered) {
		idx = (uint32_t)c->id;
		cs->slots[idx].c = NULL;
		cs->slots[idx].gen++;
		cs->slots[idx].next_free = cs->free_head;
		cs->free_head = idx + 1;
		cs->count--;
		c->registered = 0;
	}
	conn_queue_drop(c);
	conn_backlog_free(c);
	free(c->rxbuf);
	c->rxbuf = NULL;
	c->rxlen = 0;
}

static void conn_queue_append(struct conn *, struct frame *);

void
conn_queue_force(struct conn *c, const char *text, size_t len)
{
	struct frame *f;

	f = xmalloc(sizeof *f + LWS_PRE + len);
	f->next = NULL;
	f->len = len;
	f->sh = NULL;
	memcpy(f->buf + LWS_PRE, text, len);
	conn_queue_append(c, f);
}

/* Append f to c's queue and count it. */
static void
conn_queue_append(struct conn *c, struct frame *f)
{
	if (c->qtail != NULL)
		c->qtail->next = f;
	else {
		c->qhead = f;
		c->progress_ms = parley_mono_ms();
	}
	c->qtail = f;
	c->qbytes += (uint32_t)f->len;
	c->qframes++;
}

void
conn_queue_first(struct conn *c, const char *text, size_t len)
{
	struct frame *f;

	f = xmalloc(sizeof *f + LWS_PRE + len);
	f->len = len;
	f->sh = NULL;
	memcpy(f->buf + LWS_PRE, text, len);
	f->next = c->qhead;
	if (c->qhead == NULL) {
		c->qtail = f;
		c->progress_ms = parley_mono_ms();
	}
	c->qhead = f;
	c->qbytes += (uint32_t)len;
	c->qframes++;
}

int
conn_queue(struct conn *c, const char *text, size_t len, size_t max_bytes, size_t max_frames)
{
	if ((size_t)c->qbytes + len > max_bytes || (size_t)c->qframes + 1 > max_frames) {
		errno = ENOBUFS;
		return -1;
	}
	conn_queue_force(c, text, len);
	return 0;
}

struct frame *
conn_dequeue(struct conn *c)
{
	struct frame *f = c->qhead;

	if (f == NULL)
		return NULL;
	c->qhead = f->next;
	if (c->qhead == NULL)
		c->qtail = NULL;
	c->qbytes -= (uint32_t)f->len;
	c->qframes--;
	return f;
}

int
conn_queue_shared(struct conn *c, struct frame_shared *sh, size_t max_bytes, size_t max_frames)
{
	struct frame *f;

	if ((size_t)c->qbytes + sh->len > max_bytes || (size_t)c->qframes + 1 > max_frames) {
		errno = ENOBUFS;
		return -1;
	}
	f = xmalloc(sizeof *f);
	f->next = NULL;
	f->len = sh->len;
	f->sh = sh;
	sh->refs++;
	conn_queue_append(c, f);
	return 0;
}

unsigned char *
conn_frame_data(struct frame *f)
{
	return (f->sh != NULL ? f->sh->buf : f->buf) + LWS_PRE;
}

void
conn_frame_free(struct frame *f)
{
	if (f == NULL)
		return;
	frame_shared_unref(f->sh);
	free(f);
}

struct frame_shared *
frame_shared_new(const char *text, size_t len)
{
	struct frame_shared *sh;

	sh = xmalloc(sizeof *sh + LWS_PRE + len);
	sh->refs = 1;
	sh->len = len;
	memcpy(sh->buf + LWS_PRE, text, len);
	return sh;
}

void
frame_shared_unref(struct frame_shared *sh)
{
	if (sh != NULL && --sh->refs == 0)
		free(sh);
}

void
conn_queue_drop(struct conn *c)
{
	struct frame *f;

	while ((f = conn_dequeue(c)) != NULL)
		conn_frame_free(f);
}

void
conn_backlog_free(struct conn *c)
{
	struct backlog *b = c->backlog;
	size_t i;

	if (b == NULL)
		return;
	for (i = 0; i < b->n; i++)
		free(b->events[i]);
	free(b->events);
	free(b);
	c->backlog = NULL;
}
