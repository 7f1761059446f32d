/* auth.c - see auth.h. */
#include "auth.h"
