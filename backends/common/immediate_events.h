// Events and synchronize() for a backend whose every call has finished when it returns (cpu,
// vulkan): an event is always reached; it exists to be a valid handle.
#pragma once

#include <new>

#include "backend_util.h"

struct coda_event_impl {
  int unused;
};

namespace coda::backend_util {

inline coda_status_code EventCreate(void*, coda_event* event, char* error, size_t error_size) {
  *event = new (std::nothrow) coda_event_impl{0};
  if (*event) return CODA_STATUS_OK;
  CopyError("out of memory", error, error_size);
  return CODA_STATUS_OUT_OF_MEMORY;
}
inline coda_status_code EventRecord(void*, coda_event, uint32_t, char*, size_t) { return CODA_STATUS_OK; }
inline coda_status_code EventWait(void*, coda_event, uint32_t, char*, size_t) { return CODA_STATUS_OK; }
inline void EventDestroy(void*, coda_event event) { delete event; }
inline coda_status_code Synchronize(void*, char*, size_t) { return CODA_STATUS_OK; }

}  // namespace coda::backend_util
