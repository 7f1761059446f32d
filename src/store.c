/* store.c - see store.h. */
#include "store.h"
