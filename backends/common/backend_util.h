// Plumbing shared by the C++ backends (cpu, vulkan): tensor sizes, error text into the caller's
// buffer, buffer range checks, and the events of a backend whose every call has finished when it returns.
// Header-only and internal to each library: not part of the ABI.
#pragma once

#include <cstdint>
#include <cstdio>
#include <new>
#include <string>

#include "coda_backend.h"

// Work is finished when each call returns, so an event is always reached; it exists to be a
// valid handle.
struct coda_event_impl {
  int unused;
};

namespace coda::backend_util {

inline uint64_t Elements(const coda_tensor& t) {
  uint64_t n = 1;
  for (uint32_t d = 0; d < t.ndim && d < CODA_MAX_DIMS; ++d) n *= t.shape[d];
  return n;
}

inline uint64_t TensorBytes(const coda_tensor& t) { return Elements(t) * coda_dtype_size(t.dtype); }

// The host puts the backend's name (and the op) in front of the message.
inline void CopyError(const std::string& m, char* error, size_t size) {
  if (error && size) std::snprintf(error, size, "%s", m.c_str());
}

// True when [offset, offset + size) lies inside the buffer (any type with a `size` member);
// otherwise the error says where.
template <typename Buffer>
bool InRange(const Buffer* b, uint64_t offset, uint64_t size, char* error, size_t error_size) {
  if (b && offset <= b->size && size <= b->size - offset) return true;
  CopyError("range of " + std::to_string(size) + " bytes at offset " + std::to_string(offset) +
                (b ? " lies outside a buffer of " + std::to_string(b->size) + " bytes" : " of a NULL buffer"),
            error, error_size);
  return false;
}

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
