/* Not written yet (see peerclient.h). */
#include "peerclient.h"
