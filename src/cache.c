/* cache.c - see cache.h. */
#include "cache.h"
