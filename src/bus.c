/* bus.c - see bus.h. */
#include "bus.h"
