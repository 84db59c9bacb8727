// Backend plugins loaded at run time: every way a library file can be wrong is one clear line
// naming the file, the good ones still load, and a backend failing mid-graph is an error value.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <set>

#include "../common/golden_model.h"
#include "../common/test_util.h"
#include "coda/runtime.h"
#include "coda_cpu_backend.h"
#include "convert.h"

namespace coda {
namespace {

namespace fs = std::filesystem;

std::string PluginDir() { return CODA_TEST_PLUGIN_DIR; }
std::string Plugin(const std::string& name) { return PluginDir() + "/" + BackendFileName(name); }

// Copies test plugins into `dir` under the given file names.
void Stage(const test::TempDir& dir, const std::vector<std::pair<std::string, std::string>>& files) {
  for (const auto& [from, to] : files) fs::copy_file(Plugin(from), dir / BackendFileName(to));
}

const BackendNote* NoteFor(const Context& ctx, const std::string& file) {
  for (const BackendNote& n : ctx.notes())
    if (fs::path(n.path).filename() == file) return &n;
  return nullptr;
}

using test::GoldenModel;

ContextOptions CpuAnd(std::vector<std::string> dirs) {
  ContextOptions o;
  o.backends = {coda_cpu_backend_entry};
  o.plugin_dirs = std::move(dirs);
  o.log = [](int, const std::string&) {};
  return o;
}

TEST(Plugins, EachBrokenLibraryIsRefusedWithOneLineAndTheRestLoad) {
  test::TempDir dir;
  Stage(dir, {{"future", "future"}, {"ancient", "ancient"}, {"noentry", "noentry"}, {"null", "null"},
              {"small", "small"}, {"partial", "partial"}, {"noexec", "noexec"}, {"failcreate", "failcreate"},
              {"flaky", "flaky"}, {"flaky", "alias"}});
  test::WriteFile(dir / "libcoda-backend-bad.so", "this is a text file, not a shared object\n");
  test::WriteFile(dir / "libcoda-backend-Bad Name.so", "");
  test::WriteFile(dir / "README.txt", "not a plugin name: ignored\n");
  auto ctx = Context::Create(CpuAnd({dir.str()}));
  ASSERT_TRUE(ctx.ok()) << ctx.status().message();

  std::vector<std::string> names;
  for (const auto& b : (*ctx)->backends()) names.emplace_back(b->name());
  EXPECT_EQ(names, (std::vector<std::string>{"cpu", "flaky"}));
  EXPECT_EQ((*(*ctx)->Find("flaky"))->path(), dir / "libcoda-backend-flaky.so");

  const std::map<std::string, std::string> expected = {
      {"libcoda-backend-future.so", "built for backend ABI version 2, this runtime speaks version 1 (the backend is newer"},
      {"libcoda-backend-ancient.so", "built for backend ABI version 0, this runtime speaks version 1 (the backend is older"},
      {"libcoda-backend-noentry.so", "does not export coda_backend_entry"},
      {"libcoda-backend-null.so", "coda_backend_entry(1) returned no function table"},
      {"libcoda-backend-small.so", "its function table is 16 bytes, smaller than the"},
      {"libcoda-backend-partial.so", "provides some of the buffer functions but not buffer_free, buffer_upload"},
      {"libcoda-backend-noexec.so", "lacks the required function(s) execute"},
      {"libcoda-backend-failcreate.so", "create() failed: failcreate: no compatible device found"},
      {"libcoda-backend-alias.so", "declares the name 'flaky', but its file name says 'alias'"},
      {"libcoda-backend-bad.so", "not a loadable shared library: "},
      {"libcoda-backend-Bad Name.so", "'Bad Name' is not a valid backend name"},
  };
  for (const auto& [file, message] : expected) {
    const BackendNote* n = NoteFor(**ctx, file);
    ASSERT_NE(n, nullptr) << file;
    EXPECT_EQ(n->kind, BackendNote::Kind::kRefused) << file;
    EXPECT_NE(n->message.find(message), std::string::npos) << file << ": " << n->message;
    // One line that starts with the file's full path.
    EXPECT_EQ(n->Line().rfind(dir / file + ": ", 0), 0u) << n->Line();
    EXPECT_EQ(n->Line().find('\n'), std::string::npos) << n->Line();
  }
  EXPECT_EQ(NoteFor(**ctx, "README.txt"), nullptr);
  // dlopen's own reason is kept (glibc: "invalid ELF header" or "file too short").
  const std::string bad = NoteFor(**ctx, "libcoda-backend-bad.so")->message;
  EXPECT_TRUE(bad.find("ELF") != std::string::npos || bad.find("too short") != std::string::npos) << bad;
}

TEST(Plugins, ARefusedBackendAskedForByNameSaysWhy) {
  test::TempDir dir;
  Stage(dir, {{"future", "future"}});
  auto ctx = Context::Create(CpuAnd({dir.str()}));
  ASSERT_TRUE(ctx.ok());
  auto b = (*ctx)->Find("future");
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("no backend named 'future' (available: cpu); " + dir / "libcoda-backend-future.so" +
                                      ": built for backend ABI version 2"),
            std::string::npos)
      << b.status().message();
}

// A plugin for hardware this machine lacks (a CUDA backend without a GPU) is noted as
// unavailable, which programs do not warn about, and asking for it by name still says why.
TEST(Plugins, ABackendWithoutItsDeviceIsUnavailableNotRefused) {
  test::TempDir dir;
  Stage(dir, {{"nodevice", "nodevice"}});
  auto ctx = Context::Create(CpuAnd({dir.str()}));
  ASSERT_TRUE(ctx.ok()) << ctx.status().message();
  const BackendNote* n = NoteFor(**ctx, "libcoda-backend-nodevice.so");
  ASSERT_NE(n, nullptr);
  EXPECT_EQ(n->kind, BackendNote::Kind::kUnavailable);
  auto b = (*ctx)->Find("nodevice");
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("create() failed: nodevice: no GPU on this machine"), std::string::npos)
      << b.status().message();
}

TEST(Plugins, AnExplicitlyRequestedBrokenFileIsAnError) {
  ContextOptions o = CpuAnd({});
  o.plugin_files = {Plugin("noentry")};
  auto ctx = Context::Create(o);
  ASSERT_FALSE(ctx.ok());
  EXPECT_NE(ctx.status().message().find(Plugin("noentry") + ": does not export coda_backend_entry"), std::string::npos)
      << ctx.status().message();
}

// What a plugin hands the host is bounded by the host: an error message without a terminator, a
// device count in the billions, a FIFO where a library should be (dlopen would wait forever).
TEST(Plugins, HostileTablesAndFilesAreBounded) {
  ContextOptions o = CpuAnd({});
  o.plugin_files = {Plugin("noterm")};
  auto ctx = Context::Create(o);
  ASSERT_FALSE(ctx.ok());
  EXPECT_NE(ctx.status().message().find(": noterm: " + std::string(1023, 'x')), std::string::npos);
  EXPECT_EQ(ctx.status().message().find(std::string(1024, 'x')), std::string::npos);

  o.plugin_files = {Plugin("devices")};
  ctx = Context::Create(o);
  ASSERT_TRUE(ctx.ok()) << ctx.status().message();
  auto devices = (*(*ctx)->Find("devices"))->Devices();
  ASSERT_FALSE(devices.ok());
  EXPECT_NE(devices.status().message().find("device_count() says 4294967295 devices (at most 64"), std::string::npos)
      << devices.status().message();

  test::TempDir dir;
  const std::string fifo = dir / "libcoda-backend-fifo.so";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ctx = Context::Create(CpuAnd({dir.str()}));
  ASSERT_TRUE(ctx.ok()) << ctx.status().message();
  ASSERT_EQ((*ctx)->notes().size(), 1u);
  EXPECT_EQ((*ctx)->notes()[0].Line(), fifo + ": not a regular file");
}

TEST(Plugins, FirstOfANameWinsAndTheLinkedCpuIsNeverLoadedTwice) {
  test::TempDir dir;
  const fs::path a = dir / "a", b = dir / "b";
  fs::create_directories(a);
  fs::create_directories(b);
  fs::copy_file(Plugin("flaky"), a / "libcoda-backend-flaky.so");
  fs::copy_file(Plugin("flaky"), b / "libcoda-backend-flaky.so");
  fs::copy_file(test::BinDir() + "/libcoda-backend-cpu.so", a / "libcoda-backend-cpu.so");
  auto ctx = Context::Create(CpuAnd({a.string(), b.string()}));
  ASSERT_TRUE(ctx.ok()) << ctx.status().message();
  EXPECT_EQ((*ctx)->backends().size(), 2u);
  EXPECT_TRUE((*(*ctx)->Find("cpu"))->path().empty());  // the linked-in one
  ASSERT_EQ((*ctx)->notes().size(), 2u);
  for (const BackendNote& n : (*ctx)->notes()) {
    EXPECT_EQ(n.kind, BackendNote::Kind::kSkipped) << n.Line();
    EXPECT_NE(n.message.find("is already loaded"), std::string::npos) << n.Line();
  }
  EXPECT_EQ((*ctx)->notes()[0].path, (a / "libcoda-backend-cpu.so").string());
  EXPECT_EQ((*ctx)->notes()[1].path, (b / "libcoda-backend-flaky.so").string());
  EXPECT_NE((*ctx)->notes()[1].message.find("from " + (a / "libcoda-backend-flaky.so").string()), std::string::npos);
}

TEST(Plugins, SearchPathIsTheExecutableDirectoryThenCodaBackendPath) {
  const char* old = std::getenv("CODA_BACKEND_PATH");
  const std::string saved = old ? old : "";
  ::setenv("CODA_BACKEND_PATH", "/opt/a::/opt/b:", 1);
  const std::vector<std::string> dirs = BackendSearchPath();
  if (old) ::setenv("CODA_BACKEND_PATH", saved.c_str(), 1);
  else ::unsetenv("CODA_BACKEND_PATH");
  ASSERT_EQ(dirs.size(), 3u);
  EXPECT_EQ(fs::canonical(dirs[0]), fs::canonical(test::BinDir()));
  EXPECT_EQ(dirs[1], "/opt/a");
  EXPECT_EQ(dirs[2], "/opt/b");
}

// The CPU backend as a plugin (libcoda-backend-cpu.so, its own copy of the CPU code) computes the
// same logits as the copy linked into this test.
TEST(Plugins, TheCpuPluginMatchesTheLinkedCpuBackend) {
  auto model = GoldenModel("v3-fp8");
  std::vector<std::vector<float>> logits;
  for (bool plugin : {false, true}) {
    ContextOptions o;
    if (plugin) o.plugin_files = {test::BinDir() + "/libcoda-backend-cpu.so"};
    else o.backends = {coda_cpu_backend_entry};
    auto ctx = Context::Create(o);
    ASSERT_TRUE(ctx.ok()) << ctx.status().message();
    EXPECT_EQ((*(*ctx)->Find("cpu"))->path().empty(), !plugin);
    SessionOptions so;
    so.n_ctx = 16;
    auto s = Session::Create(**ctx, model, so);
    ASSERT_TRUE(s.ok()) << s.status().message();
    const int32_t t[] = {3, 1, 4, 1, 5};
    auto r = (*s)->Forward(t, true);
    ASSERT_TRUE(r.ok()) << r.status().message();
    logits.emplace_back(r->begin(), r->end());
  }
  EXPECT_EQ(logits[0], logits[1]);
}

TEST(Plugins, LoadingAndUnloadingRepeatedlyIsClean) {
  for (int i = 0; i < 3; ++i) {
    ContextOptions o = CpuAnd({PluginDir()});
    o.plugin_files = {};
    auto ctx = Context::Create(o);
    ASSERT_TRUE(ctx.ok()) << ctx.status().message();
    EXPECT_TRUE((*ctx)->Find("flaky").ok());
  }
}

TEST(Plugins, ABackendFailingMidGraphIsAnErrorAndTheSessionStaysUsable) {
  auto ctx = Context::Create(CpuAnd({PluginDir()}));
  ASSERT_TRUE(ctx.ok()) << ctx.status().message();
  SessionOptions so;
  so.n_ctx = 16;
  so.backends = {"flaky", "cpu"};
  auto s = Session::Create(**ctx, GoldenModel("v2lite-bf16"), so);
  ASSERT_TRUE(s.ok()) << s.status().message();
  bool placed = false;
  for (const std::string& p : (*s)->Placement())
    placed = placed || p.find("model.layers.1.attn_residual (Add) -> flaky: first choice") != std::string::npos;
  EXPECT_TRUE(placed);
  const int32_t t[] = {1, 2, 3};
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto r = (*s)->Forward(t);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInternal);
    EXPECT_EQ(r.status().message(),
              "Add 'model.layers.1.attn_residual' on flaky: simulated device fault in layer 1");
    EXPECT_EQ((*s)->n_past(), 0u);
  }
  // The same model without the flaky backend still runs in this context.
  so.backends = {"cpu"};
  auto cpu = Session::Create(**ctx, GoldenModel("v2lite-bf16"), so);
  ASSERT_TRUE(cpu.ok());
  EXPECT_TRUE((*cpu)->Forward(t).ok());
}

TEST(Plugins, ToolsReportRefusalsAndMidGraphFailuresAsOneLine) {
  test::TempDir dir;
  Stage(dir, {{"future", "future"}, {"flaky", "flaky"}});
  test::WriteFile(dir / "libcoda-backend-bad.so", "not an ELF file at all, just some text to be refused\n");
  const std::string env = "CODA_BACKEND_PATH=" + dir.str() + " ";
  auto r = test::RunCommand(env + test::Tool("coda-inspect") + " --backends");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("flaky"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Refused:\n  " + dir / "libcoda-backend-bad.so" + ": not a loadable shared library"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find(dir / "libcoda-backend-future.so" + ": built for backend ABI version 2, this runtime speaks version 1"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("libcoda-backend-cpu.so: skipped: backend 'cpu' is already loaded (linked into the program)"),
            std::string::npos)
      << r.out;
  r = test::RunCommand(env + test::Tool("coda-inspect") + " --backends --json");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  // Other plugins built next to the tools (vulkan) may be listed too: count only ours.
  std::set<std::string> names;
  for (const auto& b : j["backends"]) names.insert(b["name"].get<std::string>());
  EXPECT_TRUE(names.count("cpu") && names.count("flaky")) << r.out;
  size_t refused_here = 0;
  for (const auto& f : j["refused"]) refused_here += f.dump().find(dir.str()) != std::string::npos;
  EXPECT_EQ(refused_here, 2u) << r.out;

  const std::string model = dir / "m.coda";
  ASSERT_EQ(test::RunCommand(test::Tool("coda-convert") + " -q " + test::DataDir() + "/golden/v2lite-bf16/hf -o " + model)
                .exit_code,
            0);
  r = test::RunCommand(env + test::Tool("coda-logits") + " -m " + model + " --tokens 1,2,3 -o " + (dir / "x.f32") +
                       " --backend flaky,cpu");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("coda-logits: error: Add 'model.layers.1.attn_residual' on flaky: simulated device fault "
                       "in layer 1\n"),
            std::string::npos)
      << r.out;
  // Refused plugins are warnings, one line each, and do not stop the run.
  EXPECT_NE(r.out.find("coda-logits: warning: " + dir / "libcoda-backend-future.so" + ": built for backend ABI"),
            std::string::npos)
      << r.out;
  r = test::RunCommand(env + test::Tool("coda-logits") + " -m " + model + " --tokens 1,2,3 -o " + (dir / "x.f32") +
                       " --backend future");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  const size_t at = r.out.find("no backend named 'future' (available: cpu");
  ASSERT_NE(at, std::string::npos) << r.out;
  EXPECT_NE(r.out.find("flaky); ", at), std::string::npos) << r.out;
}

}  // namespace
}  // namespace coda
