// libFuzzer target: the .coda reader (preamble, FlatBuffer verification, tensor and graph checks).
#include <cstddef>
#include <cstdint>

#include "coda/model_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = coda::ModelFile::FromBytes({data, size}, "fuzz.coda");
  if (f.ok()) {
    // Accepted files must only point inside the input.
    uint64_t sum = 0;
    for (const auto& t : f->tensors()) {
      if (t.data < data || t.data + t.size > data + size) __builtin_trap();
      if (t.size) sum += t.data[t.size - 1];
    }
    volatile uint64_t sink = sum;
    (void)sink;
  }
  return 0;
}
