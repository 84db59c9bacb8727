// libFuzzer target: the safetensors header parser on arbitrary bytes.
#include <cstddef>
#include <cstdint>

#include "coda/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto h = coda::safetensors::ParseHeader({data, size});
  if (h.ok()) {
    // Accepted headers must describe ranges inside the data.
    for (const auto& t : h->tensors)
      if (h->data_start + t.end > size) __builtin_trap();
  }
  return 0;
}
