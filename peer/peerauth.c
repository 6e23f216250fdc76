/* Not written yet (see peerauth.h). */
#include "peerauth.h"
