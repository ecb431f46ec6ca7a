#include "server/common/malloc_tuning.h"

#include <malloc.h>

namespace ringattn::server {

void TuneMallocForLargeBuffers() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  // One arena, the main one, for every thread. A thread's own arena grows
  // in heaps of at most 64 MiB, so a larger buffer allocated on a gRPC
  // thread is mapped on its own and unmapped when freed, whatever the
  // threshold above, and every call pays its page faults again. And freed
  // memory stays in the arena that held it: with glibc's 8 arenas per core
  // RSS crept towards arenas x the largest call (seen: the coordinator at
  // 180-250 MiB and still growing after minutes of load on 2 cores). Calls
  // allocate few, large buffers, so one arena does not contend.
  mallopt(M_ARENA_MAX, 1);
}

}  // namespace ringattn::server
