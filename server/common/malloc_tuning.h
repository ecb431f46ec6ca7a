#ifndef RINGATTN_SERVER_COMMON_MALLOC_TUNING_H_
#define RINGATTN_SERVER_COMMON_MALLOC_TUNING_H_

namespace ringattn::server {

// Keeps large tensor buffers in the heap instead of mapping and unmapping
// each one (glibc's default above 128 KiB, raised only as far as 32 MiB):
// every call allocates and frees hundreds of MiB, and fresh mappings cost a
// page fault per 4 KiB. Call once at the start of a daemon's main.
void TuneMallocForLargeBuffers();

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COMMON_MALLOC_TUNING_H_
