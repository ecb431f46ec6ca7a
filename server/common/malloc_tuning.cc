#include "server/common/malloc_tuning.h"

#include <malloc.h>

namespace ringattn::server {

void TuneMallocForLargeBuffers() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace ringattn::server
