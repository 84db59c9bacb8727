#include "device.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>

#include "spirv.h"

namespace coda::vk {

namespace {

std::string VkFail(VkResult r, const char* what) {
  const char* name = "error";
  switch (r) {
    case VK_ERROR_OUT_OF_HOST_MEMORY: name = "out of host memory"; break;
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: name = "out of device memory"; break;
    case VK_ERROR_INITIALIZATION_FAILED: name = "initialization failed"; break;
    case VK_ERROR_DEVICE_LOST: name = "device lost"; break;
    case VK_ERROR_LAYER_NOT_PRESENT: name = "layer not present"; break;
    case VK_ERROR_EXTENSION_NOT_PRESENT: name = "extension not present"; break;
    case VK_ERROR_FEATURE_NOT_PRESENT: name = "feature not present"; break;
    case VK_ERROR_INCOMPATIBLE_DRIVER: name = "incompatible driver"; break;
    case VK_ERROR_TOO_MANY_OBJECTS: name = "too many objects"; break;
    case VK_ERROR_FRAGMENTED_POOL: name = "fragmented pool"; break;
    case VK_ERROR_OUT_OF_POOL_MEMORY: name = "out of pool memory"; break;
    default: break;
  }
  return std::string(what) + " failed: " + name + " (VkResult " + std::to_string(static_cast<int>(r)) + ")";
}

#define VK_TRY(call, what)                    \
  do {                                        \
    const VkResult r_ = (call);               \
    if (r_ != VK_SUCCESS) return VkFail(r_, what); \
  } while (0)

// Where compiled pipelines persist between runs: CODA_VULKAN_PIPELINE_CACHE (a file; "off"
// disables), else $XDG_CACHE_HOME/coda or ~/.cache/coda.
std::string PipelineCachePath(const VkPhysicalDeviceProperties& p) {
  if (const char* v = std::getenv("CODA_VULKAN_PIPELINE_CACHE"))
    return std::strcmp(v, "off") == 0 || !*v ? std::string() : std::string(v);
  std::string dir;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) dir = std::string(x) + "/coda";
  else if (const char* h = std::getenv("HOME"); h && *h) dir = std::string(h) + "/.cache/coda";
  else return "";
  char file[128];
  std::snprintf(file, sizeof file, "/vulkan-pipelines-%04x-%04x-%08x.bin", p.vendorID, p.deviceID, p.driverVersion);
  return dir + file;
}

}  // namespace

// ---- Arena ----

Arena::~Arena() {
  for (auto& b : blocks_) device_->Free(*b);
}

std::string Arena::Allocate(uint64_t size, Span* out) {
  const uint64_t align = device_->binding_alignment();
  size = std::max<uint64_t>((size + 3) / 4 * 4, 4);
  while (current_ < blocks_.size()) {
    const uint64_t at = (used_ + align - 1) / align * align;
    if (at + size <= blocks_[current_]->size) {
      *out = {blocks_[current_].get(), at, size};
      used_ = at + size;
      return "";
    }
    ++current_;
    used_ = 0;
  }
  auto b = std::make_unique<Block>();
  std::string e = device_->Allocate(std::max(size, block_size_), host_visible_, b.get());
  if (!e.empty()) return e;
  blocks_.push_back(std::move(b));
  current_ = blocks_.size() - 1;
  *out = {blocks_.back().get(), 0, size};
  used_ = size;
  return "";
}

void Arena::Reset() {
  current_ = 0;
  used_ = 0;
}

// ---- Device ----

std::string Device::Create(const DeviceOptions& options, std::unique_ptr<Device>* out) {
  std::unique_ptr<Device> d(new Device());
  d->options_ = options;
  uint32_t loader = VK_API_VERSION_1_0;
  if (vkEnumerateInstanceVersion(&loader) != VK_SUCCESS || loader < VK_API_VERSION_1_2)
    return "the Vulkan loader supports only Vulkan " + std::to_string(VK_API_VERSION_MAJOR(loader)) + "." +
           std::to_string(VK_API_VERSION_MINOR(loader)) + " (1.2 needed)";

  VkApplicationInfo app{VK_STRUCTURE_TYPE_APPLICATION_INFO};
  app.pApplicationName = "coda";
  app.pEngineName = "coda";
  app.apiVersion = VK_API_VERSION_1_2;
  VkInstanceCreateInfo ici{VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
  ici.pApplicationInfo = &app;
  // Portability drivers (MoltenVK) are listed only when asked for.
  std::vector<const char*> extensions;
  uint32_t n_ext = 0;
  vkEnumerateInstanceExtensionProperties(nullptr, &n_ext, nullptr);
  std::vector<VkExtensionProperties> ext(n_ext);
  vkEnumerateInstanceExtensionProperties(nullptr, &n_ext, ext.data());
  for (const auto& e : ext)
    if (std::strcmp(e.extensionName, VK_KHR_PORTABILITY_ENUMERATION_EXTENSION_NAME) == 0) {
      extensions.push_back(VK_KHR_PORTABILITY_ENUMERATION_EXTENSION_NAME);
      ici.flags |= VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR;
    }
  const char* validation = "VK_LAYER_KHRONOS_validation";
  if (options.validation) {
    ici.enabledLayerCount = 1;
    ici.ppEnabledLayerNames = &validation;
  }
  ici.enabledExtensionCount = static_cast<uint32_t>(extensions.size());
  ici.ppEnabledExtensionNames = extensions.data();
  const VkResult ir = vkCreateInstance(&ici, nullptr, &d->instance_);
  if (ir == VK_ERROR_INCOMPATIBLE_DRIVER)
    return "no Vulkan driver found (the loader reports none compatible; Mesa's lavapipe is in mesa-vulkan-drivers)";
  if (ir == VK_ERROR_LAYER_NOT_PRESENT)
    return "CODA_VULKAN_VALIDATION is set, but the Khronos validation layer is not installed (vulkan-validationlayers)";
  if (ir != VK_SUCCESS) return VkFail(ir, "vkCreateInstance");

  uint32_t n = 0;
  VK_TRY(vkEnumeratePhysicalDevices(d->instance_, &n, nullptr), "vkEnumeratePhysicalDevices");
  std::vector<VkPhysicalDevice> all(n);
  VK_TRY(vkEnumeratePhysicalDevices(d->instance_, &n, all.data()), "vkEnumeratePhysicalDevices");
  // Usable: Vulkan 1.2 with a compute queue.
  std::vector<std::pair<VkPhysicalDevice, uint32_t>> usable;
  std::string skipped;
  for (VkPhysicalDevice p : all) {
    VkPhysicalDeviceProperties props;
    vkGetPhysicalDeviceProperties(p, &props);
    if (props.apiVersion < VK_API_VERSION_1_2) {
      skipped += std::string(skipped.empty() ? "" : "; ") + props.deviceName + " supports only Vulkan " +
                 std::to_string(VK_API_VERSION_MAJOR(props.apiVersion)) + "." +
                 std::to_string(VK_API_VERSION_MINOR(props.apiVersion));
      continue;
    }
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(p, &nq, nullptr);
    std::vector<VkQueueFamilyProperties> q(nq);
    vkGetPhysicalDeviceQueueFamilyProperties(p, &nq, q.data());
    for (uint32_t i = 0; i < nq; ++i)
      if (q[i].queueFlags & VK_QUEUE_COMPUTE_BIT) {
        usable.push_back({p, i});
        break;
      }
  }
  for (const auto& [p, family] : usable) {
    VkPhysicalDeviceProperties props;
    VkPhysicalDeviceMemoryProperties mem;
    vkGetPhysicalDeviceProperties(p, &props);
    vkGetPhysicalDeviceMemoryProperties(p, &mem);
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < mem.memoryHeapCount; ++i)
      if (mem.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) bytes += mem.memoryHeaps[i].size;
    d->devices_.push_back({props.deviceName, props.deviceType, bytes});
  }
  if (usable.empty())
    return n == 0 ? std::string("no Vulkan device found (is a driver installed? Mesa's lavapipe: mesa-vulkan-drivers)")
                  : "no Vulkan 1.2 device with a compute queue (" + skipped + ")";
  if (options.index >= usable.size())
    return "there are " + std::to_string(usable.size()) + " Vulkan device(s), not " + std::to_string(options.index + 1);
  d->physical_ = usable[options.index].first;
  d->queue_family_ = usable[options.index].second;
  vkGetPhysicalDeviceProperties(d->physical_, &d->props_);
  vkGetPhysicalDeviceMemoryProperties(d->physical_, &d->memory_);
  d->binding_alignment_ = std::max<uint64_t>(256, d->props_.limits.minStorageBufferOffsetAlignment);
  if (d->props_.limits.maxPerStageDescriptorStorageBuffers < kMaxBindings)
    return std::string(d->props_.deviceName) + " allows " +
           std::to_string(d->props_.limits.maxPerStageDescriptorStorageBuffers) +
           " storage buffers per shader stage; the kernels need " + std::to_string(kMaxBindings);

  VkPhysicalDeviceSubgroupProperties sub{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
  VkPhysicalDeviceProperties2 props2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
  props2.pNext = &sub;
  vkGetPhysicalDeviceProperties2(d->physical_, &props2);
  const VkSubgroupFeatureFlags need = VK_SUBGROUP_FEATURE_BASIC_BIT | VK_SUBGROUP_FEATURE_ARITHMETIC_BIT;
  d->subgroup_ = options.allow_subgroup && (sub.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
                 (sub.supportedOperations & need) == need && sub.subgroupSize >= 1 && sub.subgroupSize <= 128;

  const float priority = 1.0f;
  VkDeviceQueueCreateInfo qci{VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
  qci.queueFamilyIndex = d->queue_family_;
  qci.queueCount = 1;
  qci.pQueuePriorities = &priority;
  VkDeviceCreateInfo dci{VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
  dci.queueCreateInfoCount = 1;
  dci.pQueueCreateInfos = &qci;
  VK_TRY(vkCreateDevice(d->physical_, &dci, nullptr, &d->device_), "vkCreateDevice");
  vkGetDeviceQueue(d->device_, d->queue_family_, 0, &d->queue_);

  VkCommandPoolCreateInfo cpi{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
  cpi.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
  cpi.queueFamilyIndex = d->queue_family_;
  VK_TRY(vkCreateCommandPool(d->device_, &cpi, nullptr, &d->command_pool_), "vkCreateCommandPool");
  VkCommandBufferAllocateInfo cai{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
  cai.commandPool = d->command_pool_;
  cai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
  cai.commandBufferCount = 1;
  VK_TRY(vkAllocateCommandBuffers(d->device_, &cai, &d->cmd_), "vkAllocateCommandBuffers");
  VkFenceCreateInfo fci{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
  VK_TRY(vkCreateFence(d->device_, &fci, nullptr, &d->fence_), "vkCreateFence");

  std::string e = d->CreatePipelines();
  if (!e.empty()) return e;
  e = d->Allocate(256, false, &d->dummy_);
  if (!e.empty()) return e;
  d->staging_ = std::make_unique<Arena>(d.get(), true, 4ull << 20);

  const char* kinds[] = {"other", "integrated GPU", "discrete GPU", "virtual GPU", "CPU"};
  const uint32_t kind = d->props_.deviceType <= 4 ? d->props_.deviceType : 0;
  d->name_ = d->props_.deviceName;
  d->description_ = "Vulkan " + std::to_string(VK_API_VERSION_MAJOR(d->props_.apiVersion)) + "." +
                    std::to_string(VK_API_VERSION_MINOR(d->props_.apiVersion)) + " " + kinds[kind] + ": " + d->name_ +
                    (d->subgroup_ ? ", subgroup reductions" : ", shared-memory reductions") +
                    (options.allow_map ? "" : ", staging transfers");
  *out = std::move(d);
  return "";
}

Device::~Device() {
  if (device_) {
    vkDeviceWaitIdle(device_);
    staging_.reset();
    Free(dummy_);
    SavePipelineCache();
    for (VkPipeline p : pipelines_)
      if (p) vkDestroyPipeline(device_, p, nullptr);
    if (pipeline_cache_) vkDestroyPipelineCache(device_, pipeline_cache_, nullptr);
    if (pipeline_layout_) vkDestroyPipelineLayout(device_, pipeline_layout_, nullptr);
    if (set_layout_) vkDestroyDescriptorSetLayout(device_, set_layout_, nullptr);
    for (VkDescriptorPool p : pools_) vkDestroyDescriptorPool(device_, p, nullptr);
    if (fence_) vkDestroyFence(device_, fence_, nullptr);
    if (command_pool_) vkDestroyCommandPool(device_, command_pool_, nullptr);
    vkDestroyDevice(device_, nullptr);
  }
  if (instance_) vkDestroyInstance(instance_, nullptr);
}

std::string Device::CreatePipelines() {
  VkDescriptorSetLayoutBinding b[kMaxBindings];
  for (uint32_t i = 0; i < kMaxBindings; ++i)
    b[i] = {i, VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, 1, VK_SHADER_STAGE_COMPUTE_BIT, nullptr};
  VkDescriptorSetLayoutCreateInfo sli{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO};
  sli.bindingCount = kMaxBindings;
  sli.pBindings = b;
  VK_TRY(vkCreateDescriptorSetLayout(device_, &sli, nullptr, &set_layout_), "vkCreateDescriptorSetLayout");
  VkPushConstantRange range{VK_SHADER_STAGE_COMPUTE_BIT, 0, kMaxPushBytes};
  VkPipelineLayoutCreateInfo pli{VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO};
  pli.setLayoutCount = 1;
  pli.pSetLayouts = &set_layout_;
  pli.pushConstantRangeCount = 1;
  pli.pPushConstantRanges = &range;
  VK_TRY(vkCreatePipelineLayout(device_, &pli, nullptr, &pipeline_layout_), "vkCreatePipelineLayout");

  // A cache file is used only when its header names this device and driver; the driver then
  // checks the rest.
  pipeline_cache_path_ = PipelineCachePath(props_);
  std::vector<char> data;
  if (!pipeline_cache_path_.empty()) {
    std::ifstream f(pipeline_cache_path_, std::ios::binary);
    if (f) data.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    uint32_t h[4] = {};
    if (data.size() >= 16 + VK_UUID_SIZE) std::memcpy(h, data.data(), sizeof h);
    if (data.size() < 16 + VK_UUID_SIZE || h[0] < 16 + VK_UUID_SIZE || h[1] != VK_PIPELINE_CACHE_HEADER_VERSION_ONE ||
        h[2] != props_.vendorID || h[3] != props_.deviceID ||
        std::memcmp(data.data() + 16, props_.pipelineCacheUUID, VK_UUID_SIZE) != 0)
      data.clear();
  }
  VkPipelineCacheCreateInfo pci{VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO};
  pci.initialDataSize = data.size();
  pci.pInitialData = data.empty() ? nullptr : data.data();
  if (vkCreatePipelineCache(device_, &pci, nullptr, &pipeline_cache_) != VK_SUCCESS) {
    pci.initialDataSize = 0;
    pci.pInitialData = nullptr;
    VK_TRY(vkCreatePipelineCache(device_, &pci, nullptr, &pipeline_cache_), "vkCreatePipelineCache");
  }

  for (uint32_t k = 0; k < kKernelCount; ++k) {
    const Spirv& code = KernelSpirv(static_cast<Kernel>(k), subgroup_);
    VkShaderModuleCreateInfo smi{VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO};
    smi.codeSize = code.size;
    smi.pCode = code.words;
    VkShaderModule module;
    VK_TRY(vkCreateShaderModule(device_, &smi, nullptr, &module), "vkCreateShaderModule");
    VkComputePipelineCreateInfo cpi{VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
    cpi.stage = {VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO};
    cpi.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
    cpi.stage.module = module;
    cpi.stage.pName = "main";
    cpi.layout = pipeline_layout_;
    const VkResult r = vkCreateComputePipelines(device_, pipeline_cache_, 1, &cpi, nullptr, &pipelines_[k]);
    vkDestroyShaderModule(device_, module, nullptr);
    if (r != VK_SUCCESS) return VkFail(r, (std::string("creating the pipeline of kernel ") + code.name).c_str());
  }
  return "";
}

void Device::SavePipelineCache() {
  if (pipeline_cache_path_.empty() || !pipeline_cache_) return;
  size_t size = 0;
  if (vkGetPipelineCacheData(device_, pipeline_cache_, &size, nullptr) != VK_SUCCESS || size == 0) return;
  std::vector<char> data(size);
  if (vkGetPipelineCacheData(device_, pipeline_cache_, &size, data.data()) != VK_SUCCESS) return;
  // Best effort and atomic: a cache that cannot be written only costs compile time next run.
  const size_t slash = pipeline_cache_path_.rfind('/');
  if (slash != std::string::npos) {
    std::string dir;
    for (size_t i = 1; i <= slash; ++i)
      if (pipeline_cache_path_[i] == '/' || i == slash) {
        dir = pipeline_cache_path_.substr(0, i);
        ::mkdir(dir.c_str(), 0755);
      }
  }
  const std::string tmp = pipeline_cache_path_ + ".tmp" + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return;
  const bool ok = std::fwrite(data.data(), 1, size, f) == size;
  if (std::fclose(f) == 0 && ok) std::rename(tmp.c_str(), pipeline_cache_path_.c_str());
  else std::remove(tmp.c_str());
}

std::string Device::Allocate(uint64_t size, bool host_visible, Block* out) {
  *out = {};
  VkBufferCreateInfo bci{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
  bci.size = std::max<uint64_t>((size + 3) / 4 * 4, 16);  // kernels read whole 32-bit words
  bci.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;
  bci.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
  VK_TRY(vkCreateBuffer(device_, &bci, nullptr, &out->buffer), "vkCreateBuffer");
  VkMemoryRequirements req;
  vkGetBufferMemoryRequirements(device_, out->buffer, &req);
  const VkMemoryPropertyFlags hv = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
  // Candidates in order of preference; the first type that allocates wins.
  std::vector<std::pair<VkMemoryPropertyFlags, bool>> wants;  // (flags, map it)
  if (host_visible) {
    wants = {{hv | VK_MEMORY_PROPERTY_HOST_CACHED_BIT, true}, {hv, true}};
  } else {
    if (options_.allow_map) wants.push_back({VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT | hv, true});
    wants.push_back({VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, false});
    wants.push_back({0, false});
  }
  VkResult last = VK_ERROR_OUT_OF_DEVICE_MEMORY;
  for (const auto& [flags, map] : wants)
    for (uint32_t i = 0; i < memory_.memoryTypeCount; ++i) {
      if (!(req.memoryTypeBits & (1u << i)) || (memory_.memoryTypes[i].propertyFlags & flags) != flags) continue;
      VkMemoryAllocateInfo mai{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
      mai.allocationSize = req.size;
      mai.memoryTypeIndex = i;
      last = vkAllocateMemory(device_, &mai, nullptr, &out->memory);
      if (last != VK_SUCCESS) continue;
      if (vkBindBufferMemory(device_, out->buffer, out->memory, 0) != VK_SUCCESS ||
          (map && vkMapMemory(device_, out->memory, 0, VK_WHOLE_SIZE, 0, &out->mapped) != VK_SUCCESS)) {
        Free(*out);
        return "binding or mapping " + std::to_string(size) + " bytes of Vulkan memory failed";
      }
      out->size = bci.size;
      return "";
    }
  Free(*out);
  return VkFail(last, ("allocating " + std::to_string(size) + " bytes of Vulkan " +
                       (host_visible ? "host-visible" : "device") + " memory").c_str());
}

void Device::Free(Block& b) {
  if (b.buffer) vkDestroyBuffer(device_, b.buffer, nullptr);
  if (b.memory) vkFreeMemory(device_, b.memory, nullptr);  // unmaps too
  b = {};
}

std::string Device::Begin() {
  if (recording_) return "";
  VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
  bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
  VK_TRY(vkBeginCommandBuffer(cmd_, &bi), "vkBeginCommandBuffer");
  recording_ = true;
  return "";
}

// Every command waits for everything before it: kernels are short and ordered, and this keeps
// each op's internal dependencies (and those between ops) correct without tracking them.
void Device::Barrier() {
  VkMemoryBarrier mb{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
  mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
  mb.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_READ_BIT |
                     VK_ACCESS_TRANSFER_WRITE_BIT;
  const VkPipelineStageFlags stages = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
  vkCmdPipelineBarrier(cmd_, stages, stages, 0, 1, &mb, 0, nullptr, 0, nullptr);
}

std::string Device::AllocateSet(VkDescriptorSet* set) {
  for (;;) {
    if (pool_ == pools_.size()) {
      VkDescriptorPoolSize size{VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, 512 * kMaxBindings};
      VkDescriptorPoolCreateInfo dpi{VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO};
      dpi.maxSets = 512;
      dpi.poolSizeCount = 1;
      dpi.pPoolSizes = &size;
      VkDescriptorPool pool;
      VK_TRY(vkCreateDescriptorPool(device_, &dpi, nullptr, &pool), "vkCreateDescriptorPool");
      pools_.push_back(pool);
    }
    VkDescriptorSetAllocateInfo ai{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO};
    ai.descriptorPool = pools_[pool_];
    ai.descriptorSetCount = 1;
    ai.pSetLayouts = &set_layout_;
    const VkResult r = vkAllocateDescriptorSets(device_, &ai, set);
    if (r == VK_SUCCESS) return "";
    if (r != VK_ERROR_OUT_OF_POOL_MEMORY && r != VK_ERROR_FRAGMENTED_POOL) return VkFail(r, "vkAllocateDescriptorSets");
    ++pool_;
  }
}

std::string Device::Dispatch(Kernel kernel, std::initializer_list<Span> bindings, const void* push, uint32_t push_size,
                             uint32_t gx, uint32_t gy, uint32_t gz) {
  if (bindings.size() > kMaxBindings || push_size > kMaxPushBytes) return "internal: too many bindings or push bytes";
  if (gx == 0 || gy == 0 || gz == 0) return "";
  const uint32_t* maxg = props_.limits.maxComputeWorkGroupCount;
  if (gx > maxg[0] || gy > maxg[1] || gz > maxg[2])
    return "internal: a dispatch of " + std::to_string(gx) + "x" + std::to_string(gy) + "x" + std::to_string(gz) +
           " workgroups exceeds the device's limits";
  std::string e = Begin();
  if (!e.empty()) return e;
  VkDescriptorSet set;
  e = AllocateSet(&set);
  if (!e.empty()) return e;
  VkDescriptorBufferInfo info[kMaxBindings];
  VkWriteDescriptorSet writes[kMaxBindings];
  uint32_t i = 0;
  for (const Span& s : bindings) {
    info[i] = s.block ? VkDescriptorBufferInfo{s.block->buffer, s.offset, std::max<uint64_t>(s.size, 4)}
                      : VkDescriptorBufferInfo{dummy_.buffer, 0, VK_WHOLE_SIZE};
    ++i;
  }
  for (; i < kMaxBindings; ++i) info[i] = {dummy_.buffer, 0, VK_WHOLE_SIZE};
  for (i = 0; i < kMaxBindings; ++i) {
    writes[i] = {VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET};
    writes[i].dstSet = set;
    writes[i].dstBinding = i;
    writes[i].descriptorCount = 1;
    writes[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
    writes[i].pBufferInfo = &info[i];
  }
  vkUpdateDescriptorSets(device_, kMaxBindings, writes, 0, nullptr);
  vkCmdBindPipeline(cmd_, VK_PIPELINE_BIND_POINT_COMPUTE, pipelines_[kernel]);
  vkCmdBindDescriptorSets(cmd_, VK_PIPELINE_BIND_POINT_COMPUTE, pipeline_layout_, 0, 1, &set, 0, nullptr);
  uint8_t pc[kMaxPushBytes] = {};
  std::memcpy(pc, push, push_size);
  vkCmdPushConstants(cmd_, pipeline_layout_, VK_SHADER_STAGE_COMPUTE_BIT, 0, kMaxPushBytes, pc);
  vkCmdDispatch(cmd_, gx, gy, gz);
  Barrier();
  return "";
}

std::string Device::Copy(const Span& src, const Span& dst) {
  if (src.size == 0) return "";
  std::string e = Begin();
  if (!e.empty()) return e;
  VkBufferCopy region{src.offset, dst.offset, src.size};
  vkCmdCopyBuffer(cmd_, src.block->buffer, dst.block->buffer, 1, &region);
  Barrier();
  return "";
}

std::string Device::Fill(const Span& dst, uint32_t value) {
  if (dst.size == 0) return "";
  std::string e = Begin();
  if (!e.empty()) return e;
  vkCmdFillBuffer(cmd_, dst.block->buffer, dst.offset, (dst.size + 3) / 4 * 4, value);
  Barrier();
  return "";
}

void Device::Discard() {
  if (!recording_) return;
  recording_ = false;
  vkResetCommandBuffer(cmd_, 0);
  for (size_t i = 0; i <= pool_ && i < pools_.size(); ++i) vkResetDescriptorPool(device_, pools_[i], 0);
  pool_ = 0;
}

std::string Device::Submit() {
  if (!recording_) return "";
  recording_ = false;
  // The fence orders device work only: make its writes visible to host reads of mapped memory.
  VkMemoryBarrier mb{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
  mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
  mb.dstAccessMask = VK_ACCESS_HOST_READ_BIT;
  vkCmdPipelineBarrier(cmd_, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                       VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, nullptr, 0, nullptr);
  VK_TRY(vkEndCommandBuffer(cmd_), "vkEndCommandBuffer");
  VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO};
  si.commandBufferCount = 1;
  si.pCommandBuffers = &cmd_;
  VK_TRY(vkQueueSubmit(queue_, 1, &si, fence_), "vkQueueSubmit");
  const VkResult w = vkWaitForFences(device_, 1, &fence_, VK_TRUE, UINT64_MAX);
  vkResetFences(device_, 1, &fence_);
  vkResetCommandBuffer(cmd_, 0);
  for (size_t i = 0; i <= pool_ && i < pools_.size(); ++i) vkResetDescriptorPool(device_, pools_[i], 0);
  pool_ = 0;
  if (w != VK_SUCCESS) return VkFail(w, "waiting for the Vulkan queue");
  return "";
}

// Host <-> device through staging, in chunks of at most 64 MiB, each submitted and waited for.
std::string Device::Staged(const Span& dev, uint8_t* host, uint64_t size, bool to_device) {
  std::string e = Submit();
  for (uint64_t done = 0; e.empty() && done < size;) {
    const uint64_t chunk = std::min<uint64_t>(size - done, 64ull << 20);
    const Span part{dev.block, dev.offset + done, chunk};
    Span st;
    staging_->Reset();
    e = staging_->Allocate(chunk, &st);
    if (!e.empty()) break;
    if (to_device) std::memcpy(st.host(), host + done, chunk);
    e = to_device ? Copy(st, part) : Copy(part, st);
    if (e.empty()) e = Submit();
    if (e.empty() && !to_device) std::memcpy(host + done, st.host(), chunk);
    done += chunk;
  }
  staging_->Reset();
  return e;
}

std::string Device::Write(const Span& dst, const void* src, uint64_t size) {
  if (size == 0) return "";
  if (uint8_t* p = dst.host()) {
    std::memcpy(p, src, size);
    return "";
  }
  return Staged(dst, static_cast<uint8_t*>(const_cast<void*>(src)), size, true);
}

std::string Device::Read(const Span& src, void* dst, uint64_t size) {
  if (size == 0) return "";
  if (const uint8_t* p = src.host()) {
    std::string e = Submit();  // work that writes `src` may still be recorded
    if (e.empty()) std::memcpy(dst, p, size);
    return e;
  }
  return Staged(src, static_cast<uint8_t*>(dst), size, false);
}

}  // namespace coda::vk
