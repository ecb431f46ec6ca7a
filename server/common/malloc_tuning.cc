#include "server/common/malloc_tuning.h"

#include <malloc.h>

namespace ringattn::server {

void TuneMallocForLargeBuffers() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  // Freed memory now stays in the arena that held it, and glibc gives
  // threads up to 8 arenas per core: RSS would creep towards arenas x the
  // largest call (seen: the coordinator at 180-250 MiB and still growing
  // after minutes of load on 2 cores, against 70 MiB flat with 2 arenas).
  // Calls allocate few, large buffers, so two arenas do not contend.
  mallopt(M_ARENA_MAX, 2);
}

}  // namespace ringattn::server
