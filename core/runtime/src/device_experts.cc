#include "device_experts.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

namespace coda::runtime {

namespace {

constexpr uint64_t kBufferBytes = 256ull << 20;  // per buffer: devices cap single allocations
constexpr double kDecay = 0.98;                  // per call, for the use counts

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Result<std::unique_ptr<DeviceExpertCache>> DeviceExpertCache::Create(Backend& backend, uint32_t capacity,
                                                                     uint64_t slot_bytes) {
  if (!backend.has_buffers()) return Unsupported(std::string(backend.name()) + " has no buffers to cache experts in");
  if (capacity == 0 || slot_bytes == 0) return InvalidArgument("an expert cache needs at least one slot");
  // Slots start at 256-byte offsets, which every device's storage binding alignment divides.
  slot_bytes = (slot_bytes + 255) / 256 * 256;
  std::unique_ptr<DeviceExpertCache> c(new DeviceExpertCache(backend, slot_bytes));
  c->per_buffer_ = static_cast<uint32_t>(std::clamp<uint64_t>(kBufferBytes / slot_bytes, 1, capacity));
  for (uint32_t done = 0; done < capacity; done += c->per_buffer_) {
    const uint32_t n = std::min(c->per_buffer_, capacity - done);
    auto b = backend.AllocBuffer(static_cast<uint64_t>(n) * slot_bytes);
    if (!b.ok())
      return b.status().WithContext("allocating " + std::to_string(capacity) + " expert slots of " +
                                    std::to_string(slot_bytes) + " bytes on " + std::string(backend.name()) +
                                    " (lower --device-memory)");
    c->buffers_.push_back(*b);
  }
  c->slots_.resize(capacity);
  if (backend.has_events()) {
    auto e = backend.CreateEvent();
    if (!e.ok()) return e.status();
    c->loaded_ = *e;
  }
  // The cost model needs a transfer rate before the first load: time one (up to 16 MiB).
  const uint64_t probe = std::min<uint64_t>(16ull << 20, static_cast<uint64_t>(c->per_buffer_) * slot_bytes);
  std::vector<uint8_t> zeros(probe);
  const double t0 = Now();
  CODA_RETURN_IF_ERROR(backend.Upload(c->buffers_[0], 0, zeros.data(), probe, CODA_QUEUE_TRANSFER));
  CODA_RETURN_IF_ERROR(backend.Synchronize());
  c->upload_bps_ = static_cast<double>(probe) / std::max(Now() - t0, 1e-6);
  return c;
}

DeviceExpertCache::~DeviceExpertCache() {
  (void)backend_.Synchronize();  // no transfer may still read or write what goes away
  if (loaded_) backend_.DestroyEvent(loaded_);
  for (coda_buffer b : buffers_) backend_.FreeBuffer(b);
}

void DeviceExpertCache::BeginCall() {
  ++tick_;
  for (Slot& s : slots_) s.pinned = false;
}

double DeviceExpertCache::Count(uint64_t key) const {
  auto it = uses_.find(key);
  if (it == uses_.end()) return 0;
  return it->second.count * std::pow(kDecay, static_cast<double>(tick_ - it->second.tick));
}

void DeviceExpertCache::CountUse(uint64_t key) {
  Use& u = uses_[key];
  u.count = u.count * std::pow(kDecay, static_cast<double>(tick_ - u.tick)) + 1;
  u.tick = tick_;
}

int32_t DeviceExpertCache::Find(uint64_t key) {
  auto it = where_.find(key);
  if (it == where_.end()) return -1;
  Slot& s = slots_[static_cast<size_t>(it->second)];
  s.pinned = true;
  s.last = tick_;
  return it->second;
}

int32_t DeviceExpertCache::Victim(uint64_t over) const {
  int32_t best = -1;
  double best_count = 0;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    if (s.pinned) continue;
    if (s.key == UINT64_MAX) return static_cast<int32_t>(i);  // an empty slot first
    const double c = Count(s.key);
    if (best < 0 || c < best_count || (c == best_count && s.last < slots_[static_cast<size_t>(best)].last)) {
      best = static_cast<int32_t>(i);
      best_count = c;
    }
  }
  if (best >= 0 && over != UINT64_MAX && !(best_count * 2 < Count(over))) return -1;
  return best;
}

void DeviceExpertCache::Claim(int32_t slot) {
  Slot& s = slots_[static_cast<size_t>(slot)];
  if (s.key != UINT64_MAX) where_.erase(s.key);
  s.key = UINT64_MAX;
  s.pinned = true;
  s.last = tick_;
}

Status DeviceExpertCache::Load(int32_t slot, uint64_t key, const uint8_t* src, uint64_t bytes) {
  if (slot < 0 || static_cast<size_t>(slot) >= slots_.size() || bytes > slot_bytes_)
    return Internal("expert load outside the device cache");
  Slot& s = slots_[static_cast<size_t>(slot)];
  if (s.key != UINT64_MAX) where_.erase(s.key);
  s.key = UINT64_MAX;  // until the upload is issued, the slot holds nothing usable
  if (pending_bytes_ == 0) pending_since_ = 0;
  const double t0 = Now();
  CODA_RETURN_IF_ERROR(backend_.Upload(buffer(slot), offset(slot), src, bytes, CODA_QUEUE_TRANSFER));
  pending_since_ += Now() - t0;
  pending_bytes_ += bytes;
  s.key = key;
  s.pinned = true;
  s.last = tick_;
  where_[key] = slot;
  return Status::Ok();
}

Status DeviceExpertCache::OrderCompute() {
  if (pending_bytes_ == 0) return Status::Ok();
  if (!loaded_) return backend_.Synchronize();
  CODA_RETURN_IF_ERROR(backend_.RecordEvent(loaded_, CODA_QUEUE_TRANSFER));
  return backend_.WaitEvent(loaded_, CODA_QUEUE_COMPUTE);
}

Status DeviceExpertCache::Settle(bool measure) {
  if (pending_bytes_ == 0) return Status::Ok();
  const double t0 = Now();
  if (loaded_) {
    CODA_RETURN_IF_ERROR(backend_.RecordEvent(loaded_, CODA_QUEUE_TRANSFER));
    CODA_RETURN_IF_ERROR(backend_.WaitEvent(loaded_, CODA_QUEUE_HOST));
  } else {
    CODA_RETURN_IF_ERROR(backend_.Synchronize());
  }
  // What the transfers cost the caller: time in the upload calls plus the wait for the rest.
  const double seconds = pending_since_ + (Now() - t0);
  if (measure && seconds > 0) upload_bps_ = 0.8 * upload_bps_ + 0.2 * (static_cast<double>(pending_bytes_) / seconds);
  pending_bytes_ = 0;
  return Status::Ok();
}

}  // namespace coda::runtime
