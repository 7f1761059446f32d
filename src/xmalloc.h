/* xmalloc.h - allocation that cannot fail: running out of memory is fatal. */
#ifndef XMALLOC_H
#define XMALLOC_H

#include <stdarg.h>
#include <stddef.h>

/* All of these abort the process through fatal() when memory is exhausted; callers free. */
void *xmalloc(size_t);
void *xcalloc(size_t, size_t);
void *xrealloc(void *, size_t);
void *xreallocarray(void *, size_t, size_t);
char *xstrdup(const char *);
char *xstrndup(const char *, size_t);
int   xasprintf(char **, const char *, ...) __attribute__((format(printf, 2, 3)));
int   xvasprintf(char **, const char *, va_list);

#endif
