/* Not written yet (see redisidx.h). */
#include "redisidx.h"
