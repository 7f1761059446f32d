/* actor.c - see actor.h. */
#include "actor.h"
