// The CUDA backend's library holds Hopper code: an sm_90a cubin in its fat binary. This toolkit
// has no cuobjdump, so the test reads the ELF's .nv_fatbin section itself. The layout of a fat
// binary entry (kind, sizes, SM number at byte 28, flags at byte 40 with 0x100000 for an
// architecture-specific "a" target) was read off this toolkit's output: the same kernel built
// for sm_90 and for sm_90a differs in that bit alone. Runs without a GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "test_util.h"

namespace {

template <typename T>
bool Read(const std::string& b, uint64_t at, T* v) {
  if (at > b.size() || sizeof(T) > b.size() - at) return false;
  std::memcpy(v, b.data() + at, sizeof(T));
  return true;
}

// The bytes of the named ELF64 section, or empty.
std::string Section(const std::string& elf, const std::string& name) {
  uint64_t shoff = 0;
  uint16_t shentsize = 0, shnum = 0, shstrndx = 0;
  if (elf.compare(0, 4, "\x7f" "ELF") != 0 || elf.size() < 64 || elf[4] != 2) return "";
  if (!Read(elf, 0x28, &shoff) || !Read(elf, 0x3a, &shentsize) || !Read(elf, 0x3c, &shnum) || !Read(elf, 0x3e, &shstrndx))
    return "";
  auto header = [&](uint16_t i, uint32_t* sh_name, uint64_t* off, uint64_t* size) {
    const uint64_t h = shoff + uint64_t{i} * shentsize;
    return Read(elf, h, sh_name) && Read(elf, h + 24, off) && Read(elf, h + 32, size) && *off <= elf.size() &&
           *size <= elf.size() - *off;
  };
  uint32_t n = 0;
  uint64_t str_off = 0, str_size = 0;
  if (shstrndx >= shnum || !header(shstrndx, &n, &str_off, &str_size)) return "";
  for (uint16_t i = 0; i < shnum; ++i) {
    uint64_t off = 0, size = 0;
    if (!header(i, &n, &off, &size) || n >= str_size) continue;
    const char* s = elf.data() + str_off + n;
    if (std::string(s, strnlen(s, str_size - n)) == name) return elf.substr(off, size);
  }
  return "";
}

struct FatbinEntry {
  uint16_t kind;  // 1 PTX, 2 cubin
  uint32_t sm, flags;
};

std::vector<FatbinEntry> Entries(const std::string& fb) {
  std::vector<FatbinEntry> out;
  for (uint64_t pos = 0;;) {
    uint32_t magic = 0;
    uint16_t header = 0;
    uint64_t size = 0;
    if (!Read(fb, pos, &magic) || magic != 0xBA55ED50u || !Read(fb, pos + 6, &header) || !Read(fb, pos + 8, &size))
      return out;
    const uint64_t end = pos + header + size;
    for (uint64_t e = pos + header; e < end;) {
      FatbinEntry f{};
      uint32_t eh = 0;
      uint64_t payload = 0;
      if (!Read(fb, e, &f.kind) || !Read(fb, e + 4, &eh) || !Read(fb, e + 8, &payload) || !Read(fb, e + 28, &f.sm) ||
          !Read(fb, e + 40, &f.flags) || eh == 0)
        return out;
      out.push_back(f);
      e += eh + payload;
    }
    pos = end;
  }
}

TEST(CudaBuild, LibraryHoldsSm90aAndGenericCode) {
  const std::string lib = coda::test::BinDir() + "/libcoda-backend-cuda.so";
  if (!std::filesystem::exists(lib)) GTEST_SKIP() << lib << " was not built (no CUDA toolkit)";
  const std::vector<FatbinEntry> entries = Entries(Section(coda::test::ReadFile(lib), ".nv_fatbin"));
  ASSERT_FALSE(entries.empty()) << "no fat binary in " << lib;
  bool sm90a = false, sm80 = false, ptx = false;
  for (const FatbinEntry& e : entries) {
    sm90a = sm90a || (e.kind == 2 && e.sm == 90 && (e.flags & 0x100000u));
    sm80 = sm80 || (e.kind == 2 && e.sm == 80);
    ptx = ptx || e.kind == 1;
  }
  EXPECT_TRUE(sm90a) << "no sm_90a cubin";
  EXPECT_TRUE(sm80) << "no sm_80 cubin (the generic path)";
  EXPECT_TRUE(ptx) << "no PTX for GPUs newer than the cubins";
}

}  // namespace
