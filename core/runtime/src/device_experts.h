// The device tier of expert offloading: a cache of routed experts in a device backend's own
// buffers, for models whose experts do not fit in its memory. Each slot holds one expert's range
// of the .coda file byte for byte (weights and FP8 scales at their offsets in the range), so a
// resident expert's tensors are the slot's buffer plus the tensor's offset in the range. It uses
// only the ABI's buffers (and events, where the backend has them): any backend with buffers can
// serve offloaded experts. Private to core/runtime.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "coda/backend.h"
#include "coda/status.h"

namespace coda::runtime {

class DeviceExpertCache {
 public:
  // `capacity` slots of `slot_bytes` each, in buffers of at most 256 MiB. Times one upload to
  // learn the transfer bandwidth the cost model starts from.
  static Result<std::unique_ptr<DeviceExpertCache>> Create(Backend& backend, uint32_t capacity, uint64_t slot_bytes);
  ~DeviceExpertCache();
  DeviceExpertCache(const DeviceExpertCache&) = delete;
  DeviceExpertCache& operator=(const DeviceExpertCache&) = delete;

  static uint64_t Key(int32_t layer, int32_t expert) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(layer)) << 32) | static_cast<uint32_t>(expert);
  }
  uint32_t capacity() const { return static_cast<uint32_t>(slots_.size()); }
  uint64_t slot_bytes() const { return slot_bytes_; }
  Backend& backend() const { return backend_; }

  // Starts a call (a new tick for recency and decay); slots used by the previous call are unpinned.
  void BeginCall();
  // Counts a use of `key` (resident or not) for the frequency the policy ranks by.
  void CountUse(uint64_t key);
  // The slot holding `key`, pinned for this call, or -1.
  int32_t Find(uint64_t key);
  // A slot to replace: unpinned, with the lowest decayed use count (ties: least recent); -1 when
  // every slot is pinned. `over`: only a slot whose count is below half of that key's (so that
  // promotions do not churn between experts of equal use).
  int32_t Victim(uint64_t over = UINT64_MAX) const;
  // Empties `slot` and pins it for a Load() later in this call.
  void Claim(int32_t slot);
  // Copies `bytes` (at most slot_bytes) from host memory into `slot` on the transfer queue, for
  // `key`; pins it. The host bytes must stay until Settle() (or any synchronize).
  Status Load(int32_t slot, uint64_t key, const uint8_t* src, uint64_t bytes);
  // Makes the compute queue wait for the loads issued so far (an event, or a synchronize).
  Status OrderCompute();
  // Waits for every load issued so far (their host bytes may then be released). `measure`: the
  // loads were issued just before, so the time they took updates the transfer rate.
  Status Settle(bool measure);
  // Where a slot's bytes are.
  coda_buffer buffer(int32_t slot) const { return buffers_[static_cast<size_t>(slot) / per_buffer_]; }
  uint64_t offset(int32_t slot) const { return static_cast<uint64_t>(slot) % per_buffer_ * slot_bytes_; }

  // Bytes per second the transfer reached (calibrated at creation, then measured on loads waited
  // for right away).
  double upload_bytes_per_second() const { return upload_bps_; }

 private:
  struct Slot {
    uint64_t key = UINT64_MAX;
    uint64_t last = 0;  // tick of the last use
    bool pinned = false;
  };
  struct Use {
    double count = 0;
    uint64_t tick = 0;
  };
  DeviceExpertCache(Backend& b, uint64_t slot_bytes) : backend_(b), slot_bytes_(slot_bytes) {}
  double Count(uint64_t key) const;

  Backend& backend_;
  uint64_t slot_bytes_;
  uint32_t per_buffer_ = 1;
  std::vector<coda_buffer> buffers_;
  std::vector<Slot> slots_;
  std::unordered_map<uint64_t, int32_t> where_;  // key -> slot
  std::unordered_map<uint64_t, Use> uses_;
  coda_event loaded_ = nullptr;  // recorded after the last load (backends with events)
  uint64_t tick_ = 0;
  uint64_t pending_bytes_ = 0;  // loaded since the last Settle()
  double pending_since_ = 0;
  double upload_bps_ = 0;
};

}  // namespace coda::runtime
