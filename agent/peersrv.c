/* Not written yet (see peersrv.h). */
#include "peersrv.h"
