/* chat.c - see chat.h. */
#include "chat.h"
