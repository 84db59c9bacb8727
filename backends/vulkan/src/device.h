// One Vulkan device as the backend uses it: instance, compute queue, memory, one command buffer
// recorded per call and submitted synchronously, descriptor pools, and the compute pipelines.
// Errors are returned as messages (empty: success), as in the CPU backend.
#pragma once

#include <vulkan/vulkan.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace coda::vk {

// Every kernel the backend runs: kAdd, kEmbed, ..., from the kernel list in CMakeLists.txt.
enum Kernel : uint32_t {
#define CODA_VK_KERNEL(name, Name) k##Name,
#include "kernels.inc"
#undef CODA_VK_KERNEL
  kKernelCount
};

// A VkBuffer with its own memory; `mapped` is non-null when the host can address it directly.
struct Block {
  VkBuffer buffer = VK_NULL_HANDLE;
  VkDeviceMemory memory = VK_NULL_HANDLE;
  void* mapped = nullptr;
  uint64_t size = 0;
};

// A byte range of a block.
struct Span {
  const Block* block = nullptr;
  uint64_t offset = 0, size = 0;
  uint8_t* host() const { return block->mapped ? static_cast<uint8_t*>(block->mapped) + offset : nullptr; }
};

// Bump allocation over blocks, all released at once by Reset() (per-call scratch and staging).
class Arena {
 public:
  Arena(class Device* device, bool host_visible, uint64_t block_size)
      : device_(device), host_visible_(host_visible), block_size_(block_size) {}
  ~Arena();
  std::string Allocate(uint64_t size, Span* out);
  void Reset();

 private:
  Device* device_;
  bool host_visible_;
  uint64_t block_size_;
  std::vector<std::unique_ptr<Block>> blocks_;
  size_t current_ = 0;
  uint64_t used_ = 0;
};

struct DeviceOptions {
  uint32_t index = 0;
  bool allow_map = true;      // false: never map device memory, always go through staging
  bool allow_subgroup = true; // false: shared-memory reductions even where subgroups work
  bool validation = false;    // enable VK_LAYER_KHRONOS_validation
};

class Device {
 public:
  // Opens usable device number options.index (Vulkan 1.2+ with a compute queue, in
  // enumeration order); the error says why none could be.
  static std::string Create(const DeviceOptions& options, std::unique_ptr<Device>* out);
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const std::string& name() const { return name_; }
  const std::string& description() const { return description_; }
  // Every usable device (Vulkan 1.2+ with a compute queue), this one at index options.index.
  struct Info {
    std::string name;
    VkPhysicalDeviceType type;
    uint64_t memory;  // bytes of device-local heaps
  };
  const std::vector<Info>& devices() const { return devices_; }
  uint64_t max_binding() const { return props_.limits.maxStorageBufferRange; }
  uint64_t binding_alignment() const { return binding_alignment_; }
  bool subgroup_reductions() const { return subgroup_; }

  // Memory: `host_visible` asks for memory the host writes and reads (staging); otherwise
  // device-local memory, mapped when the device allows it and options permit.
  std::string Allocate(uint64_t size, bool host_visible, Block* out);
  void Free(Block& block);

  // Commands go into one command buffer, started on demand; Submit() runs them and waits.
  std::string Dispatch(Kernel kernel, std::initializer_list<Span> bindings, const void* push, uint32_t push_size,
                       uint32_t gx, uint32_t gy = 1, uint32_t gz = 1);
  std::string Copy(const Span& src, const Span& dst);
  std::string Fill(const Span& dst, uint32_t value);
  std::string Submit();
  // Drops what was recorded and not submitted (a call that failed part-way).
  void Discard();

  // Host <-> block transfers outside a call's recording: through the mapping or via staging.
  std::string Write(const Span& dst, const void* src, uint64_t size);
  std::string Read(const Span& src, void* dst, uint64_t size);

 private:
  Device() = default;
  std::string Begin();
  void Barrier();
  std::string Staged(const Span& dev, uint8_t* host, uint64_t size, bool to_device);
  std::string AllocateSet(VkDescriptorSet* set);
  std::string CreatePipelines();
  void SavePipelineCache();

  DeviceOptions options_;
  VkInstance instance_ = VK_NULL_HANDLE;
  VkPhysicalDevice physical_ = VK_NULL_HANDLE;
  VkDevice device_ = VK_NULL_HANDLE;
  VkQueue queue_ = VK_NULL_HANDLE;
  uint32_t queue_family_ = 0;
  VkPhysicalDeviceProperties props_{};
  VkPhysicalDeviceMemoryProperties memory_{};
  uint64_t binding_alignment_ = 256;
  std::vector<Info> devices_;
  bool subgroup_ = false;
  std::string name_, description_;

  VkCommandPool command_pool_ = VK_NULL_HANDLE;
  VkCommandBuffer cmd_ = VK_NULL_HANDLE;
  VkFence fence_ = VK_NULL_HANDLE;
  bool recording_ = false;
  std::vector<VkDescriptorPool> pools_;
  size_t pool_ = 0;

  VkDescriptorSetLayout set_layout_ = VK_NULL_HANDLE;
  VkPipelineLayout pipeline_layout_ = VK_NULL_HANDLE;
  VkPipelineCache pipeline_cache_ = VK_NULL_HANDLE;
  std::string pipeline_cache_path_;
  VkPipeline pipelines_[kKernelCount] = {};
  Block dummy_{};  // bound to the slots a kernel does not use

  std::unique_ptr<Arena> staging_;  // for Write/Read when memory is not mapped
};

// Bindings per kernel (the descriptor set layout has this many storage buffers).
constexpr uint32_t kMaxBindings = 8;
constexpr uint32_t kMaxPushBytes = 128;

}  // namespace coda::vk
