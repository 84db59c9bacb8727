#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include "coda/checked.h"
#include "coda/dtype.h"
#include "coda/file.h"
#include "coda/status.h"

namespace coda {
namespace {

TEST(Status, CarriesCodeAndContext) {
  Status s = Corrupt("bad header").WithContext("model.safetensors");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_EQ(s.message(), "model.safetensors: bad header");
  EXPECT_TRUE(Status::Ok().WithContext("x").ok());
}

Result<int> Half(int v) {
  if (v % 2) return InvalidArgument("odd");
  return v / 2;
}
Result<int> Quarter(int v) {
  CODA_ASSIGN_OR_RETURN(int h, Half(v));
  return Half(h);
}

TEST(Result, PropagatesErrors) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_FALSE(Quarter(6).ok());
  EXPECT_EQ(Quarter(6).status().message(), "odd");
}

TEST(Checked, DetectsOverflow) {
  EXPECT_FALSE(CheckedAdd(UINT64_MAX, 1));
  EXPECT_FALSE(CheckedMul(1ull << 33, 1ull << 33));
  EXPECT_EQ(*CheckedMul(3, 5), 15u);
  const uint64_t big[] = {1ull << 32, 1ull << 32};
  EXPECT_FALSE(CheckedElementCount(big));
  const uint64_t ok[] = {3, 4, 5};
  EXPECT_EQ(*CheckedElementCount(ok), 60u);
  EXPECT_EQ(*CheckedElementCount({}), 1u);
  EXPECT_EQ(*CheckedAlignUp(65, 64), 128u);
  EXPECT_FALSE(CheckedAlignUp(UINT64_MAX - 2, 64));
}

TEST(DType, Fp8E4M3MatchesTheFormat) {
  EXPECT_EQ(Fp8E4M3ToF32(0x00), 0.0f);
  EXPECT_EQ(Fp8E4M3ToF32(0x38), 1.0f);          // exponent 7 = bias
  EXPECT_EQ(Fp8E4M3ToF32(0x7e), 448.0f);        // largest finite
  EXPECT_EQ(Fp8E4M3ToF32(0xfe), -448.0f);
  EXPECT_TRUE(std::isnan(Fp8E4M3ToF32(0x7f)));
  EXPECT_TRUE(std::isnan(Fp8E4M3ToF32(0xff)));
  EXPECT_EQ(Fp8E4M3ToF32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(Fp8E4M3ToF32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  // Every finite code round-trips through float.
  for (int v = 0; v < 256; ++v) {
    const float f = Fp8E4M3ToF32(static_cast<uint8_t>(v));
    if (std::isnan(f)) continue;
    if (f == 0.0f) continue;  // +0 and -0 both encode zero
    EXPECT_EQ(F32ToFp8E4M3(f), v) << v;
  }
  EXPECT_EQ(F32ToFp8E4M3(1e9f), 0x7e);  // saturates
  // Random values round to the nearest code (ties to the even code), checked by brute force.
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> mag(-12.0f, 9.5f);
  for (int i = 0; i < 20000; ++i) {
    const float f = std::exp2(mag(rng)) * ((rng() & 1) ? -1.0f : 1.0f);
    const uint8_t got = F32ToFp8E4M3(f);
    float best = INFINITY;
    for (int v = 0; v < 0x7f; ++v) best = std::min(best, std::fabs(Fp8E4M3ToF32(static_cast<uint8_t>(v)) - std::fabs(f)));
    const float err = std::fabs(Fp8E4M3ToF32(got) - f);
    if (std::fabs(f) < 448.0f) {
      EXPECT_EQ(err, best) << f;
    }
  }
  EXPECT_EQ(F32ToFp8E4M3(1.0625f), 0x38);  // halfway between 1 and 1.125: to even (1)
  EXPECT_EQ(F32ToFp8E4M3(1.1875f), 0x3a);  // halfway between 1.125 and 1.25: to even (1.25)
  EXPECT_EQ(F32ToFp8E4M3(3.0f / 1024), 0x02);  // 1.5 subnormal steps: to even (2)
}

TEST(DType, Bf16AndF16RoundTrip) {
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.5f)), 1.5f);
  EXPECT_EQ(F32ToBf16(1.0f + 1.0f / 256), F32ToBf16(1.0f));  // tie rounds to even
  for (float f : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f})
    EXPECT_EQ(F16ToF32(F32ToF16(f)), f) << f;
  EXPECT_EQ(*DTypeFromSafetensors("F8_E4M3"), DType::kFP8_E4M3);
  EXPECT_FALSE(DTypeFromSafetensors("F4"));
}

TEST(AtomicFileWriter, LeavesNothingBehindUnlessCommitted) {
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "/atomic_test.bin";
  std::remove(path.c_str());
  {
    auto w = AtomicFileWriter::Create(path);
    ASSERT_TRUE(w.ok()) << w.status().message();
    const uint8_t bytes[] = {1, 2, 3};
    ASSERT_TRUE((*w)->Write(bytes).ok());
    EXPECT_FALSE(FileExists(path));
  }
  EXPECT_FALSE(FileExists(path));
  auto w = AtomicFileWriter::Create(path);
  ASSERT_TRUE(w.ok());
  const uint8_t bytes[] = {1, 2, 3};
  ASSERT_TRUE((*w)->Write(bytes).ok());
  ASSERT_TRUE((*w)->Commit().ok());
  auto m = MappedFile::Open(path);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->size(), 3u);
  std::remove(path.c_str());

  auto missing = AtomicFileWriter::Create(dir + "/no/such/dir/out.bin");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("does not exist"), std::string::npos);
}

// Output paths that are not plain files: the writer never replaces them.
class OutputPaths : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/coda_outputs_" + std::to_string(::getpid());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  static std::string Slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  static Status WriteAll(const std::string& path, const std::string& text) {
    CODA_ASSIGN_OR_RETURN(auto w, AtomicFileWriter::Create(path));
    CODA_RETURN_IF_ERROR(w->Write({reinterpret_cast<const uint8_t*>(text.data()), text.size()}));
    return w->Commit();
  }
  // Names in the directory other than those listed (leftover temporary files).
  std::vector<std::string> Others(std::initializer_list<std::string> known) const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(dir_)) {
      const std::string name = e.path().filename();
      if (std::find(known.begin(), known.end(), name) == known.end()) out.push_back(name);
    }
    return out;
  }
  std::string dir_;
};

TEST_F(OutputPaths, ASymlinkIsWrittenThroughNotReplaced) {
  const std::string real = dir_ + "/real.bin", link = dir_ + "/link.bin";
  ASSERT_TRUE(WriteAll(real, "old").ok());
  std::filesystem::create_symlink("real.bin", link);
  ASSERT_TRUE(WriteAll(link, "new").ok());
  EXPECT_TRUE(std::filesystem::is_symlink(link));
  EXPECT_EQ(Slurp(real), "new");
  // A dangling link: its target is created.
  std::filesystem::create_symlink("later.bin", dir_ + "/dangling.bin");
  ASSERT_TRUE(WriteAll(dir_ + "/dangling.bin", "made").ok());
  EXPECT_TRUE(std::filesystem::is_symlink(dir_ + "/dangling.bin"));
  EXPECT_EQ(Slurp(dir_ + "/later.bin"), "made");
  EXPECT_TRUE(Others({"real.bin", "link.bin", "dangling.bin", "later.bin"}).empty());
  // A loop is an error, not a hang.
  std::filesystem::create_symlink("loop2", dir_ + "/loop1");
  std::filesystem::create_symlink("loop1", dir_ + "/loop2");
  auto w = AtomicFileWriter::Create(dir_ + "/loop1");
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("too many levels of symbolic links"), std::string::npos);
}

TEST_F(OutputPaths, AFifoIsWrittenInPlace) {
  const std::string fifo = dir_ + "/pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  std::string got;
  std::thread reader([&] { got = Slurp(fifo); });
  ASSERT_TRUE(WriteAll(fifo, "through the pipe").ok());
  reader.join();
  EXPECT_EQ(got, "through the pipe");
  struct stat st {};
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_TRUE(Others({"pipe"}).empty());
}

TEST_F(OutputPaths, ADeviceIsWrittenInPlace) {
  // A null device of our own (the machine's /dev/null is not put at risk by a test).
  const std::string dev = dir_ + "/null";
  if (::mknod(dev.c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0)
    GTEST_SKIP() << "cannot make a device node here (" << std::strerror(errno) << "): needs root";
  ASSERT_TRUE(WriteAll(dev, "discarded").ok());
  struct stat st {};
  ASSERT_EQ(::lstat(dev.c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_TRUE(Others({"null"}).empty());
}

TEST_F(OutputPaths, ReadOnlyFilesAreRefusedAndPermissionsKept) {
  const std::string ro = dir_ + "/ro.bin", rw = dir_ + "/rw.bin";
  ASSERT_TRUE(WriteAll(ro, "keep").ok());
  ASSERT_EQ(::chmod(ro.c_str(), 0444), 0);
  const Status s = WriteAll(ro, "overwrite");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), ro + ": is read-only; not replaced");
  EXPECT_EQ(Slurp(ro), "keep");
  ASSERT_TRUE(WriteAll(rw, "one").ok());
  ASSERT_EQ(::chmod(rw.c_str(), 0600), 0);
  ASSERT_TRUE(WriteAll(rw, "two").ok());
  struct stat st {};
  ASSERT_EQ(::stat(rw.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_TRUE(Others({"ro.bin", "rw.bin"}).empty());
}

TEST_F(OutputPaths, APlantedTemporaryNameIsNeverFollowed) {
  const std::string victim = dir_ + "/victim", out = dir_ + "/out.bin";
  ASSERT_TRUE(WriteAll(victim, "precious").ok());
  // The name the writer tries first, planted as a link to another file.
  std::filesystem::create_symlink(victim, out + ".tmp." + std::to_string(::getpid()) + ".0");
  ASSERT_TRUE(WriteAll(out, "output").ok());
  EXPECT_EQ(Slurp(victim), "precious");
  EXPECT_EQ(Slurp(out), "output");
}

// A signal that ends the process takes the temporary file with it; so do exit() and a crash.
TEST_F(OutputPaths, TemporaryFilesDieWithTheProcess) {
  enum class End { kSignal, kExit };
  for (auto [sig, end] : {std::pair{SIGINT, End::kSignal}, {SIGTERM, End::kSignal}, {SIGHUP, End::kSignal},
                          {SIGSEGV, End::kSignal}, {SIGABRT, End::kSignal}, {0, End::kExit}}) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto w = AtomicFileWriter::Create(dir_ + "/out.bin");
      const uint8_t bytes[] = {1, 2, 3};
      if (!w.ok() || !(*w)->Write(bytes).ok() || ::access((*w)->temp_path().c_str(), F_OK) != 0) ::_exit(3);
      if (end == End::kExit) std::exit(0);  // no destructors run
      ::raise(sig);
      ::_exit(4);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    if (end == End::kExit) {
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    } else if (sig == SIGSEGV) {
      // A sanitizer's crash handler may end the process its own way (an exit code, or abort).
      EXPECT_TRUE(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) != 0)) << status;
    } else {
      EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == sig) << "signal " << sig << ", status " << status;
    }
    EXPECT_TRUE(Others({}).empty()) << "after signal " << sig << ": " << (Others({}).empty() ? "" : Others({})[0]);
  }
}

}  // namespace
}  // namespace coda
