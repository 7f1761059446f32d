/* protocol.c - see protocol.h. */
#include "protocol.h"
