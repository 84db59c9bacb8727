// coda-bench: prefill and decode speed of a model, against the memory bandwidth measured in the
// same run (decode reads every active weight once per token: it is bandwidth-bound).
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "coda/cli/command_line.h"
#include "coda/cli/human_readable.h"
#include "coda/cli/model_session.h"
#include "coda/cli/options.h"
#include "coda/cli/values.h"
#include "coda_cpu_backend.h"

namespace {

constexpr char kTool[] = "coda-bench";
constexpr char kAbout[] = R"(coda-bench: prefill and decode speed, and the fraction of the memory-bandwidth bound.

Usage:
  coda-bench -m model.coda [options]

Runs pp<N> (one prefill of N tokens) and tg<M> (M decode steps) at each context depth, and
measures the machine's read bandwidth just before and after each decode test. The decode bound
is bandwidth / (active weight bytes + latent-cache bytes read per token), with the higher of
the two bandwidth figures. Each decode test runs --repetitions times: the table shows the median,
the slowest and fastest (min..max tokens/s) and the context switches per token (all threads).)";

// Prefill lengths, decode steps and depths: far beyond any context a benchmark needs.
constexpr uint32_t kMaxTokens = 1'000'000;

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// The device tier's work between two snapshots, per token: hits, what moved, and the minimum
// (the bytes of the experts that were not resident when needed).
nlohmann::ordered_json DeviceTier(const coda::OffloadStats::Device& a, const coda::OffloadStats::Device& b, double tokens) {
  const uint64_t requests = b.requests - a.requests;
  return {{"backend", b.backend},
          {"cached_experts", b.capacity},
          {"experts", b.total},
          {"hit_rate", requests ? static_cast<double>(b.hits - a.hits) / static_cast<double>(requests) : 1.0},
          {"bytes_uploaded_per_token", static_cast<double>(b.bytes_uploaded - a.bytes_uploaded) / tokens},
          {"bytes_missed_per_token", static_cast<double>(b.bytes_missed - a.bytes_missed) / tokens},
          {"uploads_per_token", static_cast<double>((b.uploads + b.promotions) - (a.uploads + a.promotions)) / tokens},
          {"cpu_experts_per_token", static_cast<double>(b.cpu_experts - a.cpu_experts) / tokens},
          {"upload_ms_per_token", (b.upload_seconds - a.upload_seconds) / tokens * 1e3},
          {"cpu_ms_per_token", (b.cpu_seconds - a.cpu_seconds) / tokens * 1e3},
          {"upload_gbs", b.upload_gbs},
          {"cpu_gbs", b.cpu_gbs}};
}

// The machine's read bandwidth: the best of a few passes, all threads summing their share of a
// buffer far larger than the caches. It is measured again around every decode test, because
// on a shared host it moves by tens of percent within a minute; each test is compared with the
// higher of the figures taken just before and just after it.
class BandwidthMeter {
 public:
  explicit BandwidthMeter(unsigned threads)
      : threads_(threads), chunk_((size_t{512} << 20) / 8 / threads / 8 * 8), buf_(chunk_ * threads) {
    for (size_t i = 0; i < buf_.size(); i += 512) buf_[i] = i;  // commit the pages now
  }
  double Measure(int passes = 3) {
    double best = 0;
    for (int pass = 0; pass < passes; ++pass) {
      std::vector<uint64_t> sums(threads_);
      const auto t0 = Clock::now();
      std::vector<std::thread> ts;
      for (unsigned t = 0; t < threads_; ++t)
        ts.emplace_back([&, t] {
          const uint64_t* p = buf_.data() + t * chunk_;
          uint64_t a[8] = {};  // independent sums: the loads, not the adds, set the pace
          for (size_t i = 0; i < chunk_; i += 8) {
            if (i + 512 < chunk_) __builtin_prefetch(p + i + 512);  // 4 KB ahead, as decode does
            for (int k = 0; k < 8; ++k) a[k] += p[i + k];
          }
          sums[t] = a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
        });
      for (auto& t : ts) t.join();
      const double s = Seconds(t0, Clock::now());
      volatile uint64_t sink = sums[0];
      (void)sink;
      best = std::max(best, static_cast<double>(buf_.size() * sizeof(uint64_t)) / s);
    }
    highest_ = std::max(highest_, best);
    return best;
  }
  double highest() const { return highest_; }

 private:
  unsigned threads_;
  size_t chunk_;  // values per thread, a multiple of 8
  std::vector<uint64_t> buf_;
  double highest_ = 0;
};

// The model file's direct-read bandwidth, as the expert store reads it: 4 MB page-aligned reads
// at random places, several in flight, bypassing the page cache (so nothing cached helps).
double MeasureDiskRead(const std::string& path, uint64_t bytes, unsigned threads) {
  constexpr uint64_t kRead = 4u << 20;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  if (fd < 0) return 0;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < 2 * kRead) {
    ::close(fd);
    return 0;
  }
  const uint64_t places = static_cast<uint64_t>(st.st_size) / kRead - 1;
  std::atomic<uint64_t> done{0};
  const auto t0 = Clock::now();
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      void* buf = std::aligned_alloc(4096, kRead);
      std::mt19937_64 rng(t + 1);
      while (buf && done.fetch_add(kRead) < bytes)
        if (::pread(fd, buf, kRead, static_cast<off_t>((rng() % places) * kRead)) <= 0) break;
      std::free(buf);
    });
  for (auto& t : ts) t.join();
  ::close(fd);
  return static_cast<double>(std::min<uint64_t>(done.load(), bytes)) / Seconds(t0, Clock::now());
}

}  // namespace

static int Main(int argc, char** argv) {
  using namespace coda;
  cli::ModelSessionOptions mo;
  mo.program = kTool;
  mo.linked_backends = {coda_cpu_backend_entry};
  uint32_t pp = 512, tg = 128, repetitions = 3;
  std::vector<int32_t> depths = {0, 1024, 4096};
  bool json = false, profile = false;
  cli::CommandLine cl(kTool, kAbout);
  cli::AddModel(cl, &mo.model_path);
  cli::AddWholeNumber(cl, "--pp", &pp, "N", "prefill length in tokens; 0 skips the prefill test", 0, kMaxTokens);
  cli::AddWholeNumber(cl, "--tg", &tg, "N", "decode steps per depth", 1, kMaxTokens);
  cli::AddWholeNumber(cl, "--repetitions", &repetitions, "N",
                      "decode tests per depth, 1 to 100: the median is reported, with the spread", 1, 100);
  cli::AddWholeNumberList(cl, "--depths", &depths, "LIST", "context depths for decoding", kMaxTokens);
  cli::AddThreads(cl, &mo.n_threads);
  cli::AddPrecision(cl, &mo.exact_products);
  cli::AddWeights(cl, &mo.load.weights);
  cli::AddRamBudget(cl, &mo.load);
  cli::AddDeviceMemory(cl, &mo.device_memory);
  cli::AddExpertEviction(cl, &mo.load);
  cli::AddKvDtype(cl, &mo.kv_dtype);
  cli::AddBackends(cl, &mo.backends);
  cl.Flag("--profile", &profile, "also print where decode time goes, by op type");
  cl.Flag("--json", &json, "print one JSON object instead of the table");
  if (auto code = cl.ParseMain(argc, argv)) return *code;
  if (mo.model_path.empty()) return cl.UsageError("no model given (-m model.coda)");
  const int32_t max_depth = depths.empty() ? 0 : *std::max_element(depths.begin(), depths.end());
  mo.n_ctx = static_cast<uint32_t>(std::max<int64_t>(pp, int64_t{max_depth} + tg)) + 1;
  const unsigned threads = mo.n_threads ? mo.n_threads : std::max(1u, std::thread::hardware_concurrency());
  // The meter's buffer exists before the model loads, so that an expert budget sized from the
  // memory left (under a cgroup cap) counts it.
  BandwidthMeter meter(threads);
  auto loaded = cli::OpenModelSession(mo);
  if (!loaded.ok()) return cl.Fail(loaded.status());
  Session& s = *loaded->session;
  const Model& m = *loaded->model;
  ExpertStore* store = m.expert_store();
  // The first preferred backend (the session would have failed had it not been found).
  auto preferred = loaded->context->Find(mo.backends.front());
  const std::string backend = preferred.ok() ? (*preferred)->describe() : "cpu";

  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(m.config().vocab_size) - 1);
  auto random_tokens = [&](size_t n) {
    std::vector<int32_t> t(n);
    for (auto& x : t) x = tok(rng);
    return t;
  };
  meter.Measure();
  double disk = 0;  // direct reads of the model file, best seen
  if (store) disk = MeasureDiskRead(mo.model_path, 256u << 20, 4);
  nlohmann::ordered_json out;
  out["model"] = mo.model_path;
  out["backend"] = backend;
  out["threads"] = threads;
  out["active_weight_bytes"] = m.active_weight_bytes();
  out["weights_held"] = m.weights_held();
  out["kv_bytes_per_token"] = s.kv_cache().bytes_per_token();
  if (store)
    out["expert_store"] = {{"slots", store->capacity()}, {"slot_bytes", store->slot_bytes()},
                           {"budget_bytes", uint64_t{store->capacity()} * store->slot_bytes()}};

  // Per-op wall time, by phase: the observer runs after each node.
  std::map<std::string, std::map<std::string, double>> op_seconds;  // phase -> op -> seconds
  std::string phase;
  Clock::time_point last;
  if (profile)
    s.set_observer([&](const GraphNode& node, std::span<const coda_tensor>) {
      const auto now = Clock::now();
      if (!phase.empty()) op_seconds[phase][std::string(OpTypeName(node.op))] += Seconds(last, now);
      last = now;
    });
  if (pp > 0) {
    // One warm-up prefill (page faults of the mapping, allocation), then the timed one.
    auto warm = random_tokens(std::min<uint32_t>(pp, 16));
    if (auto r = s.Forward(warm); !r.ok()) return cl.Fail(r.status());
    s.Reset();
    const auto t = random_tokens(pp);
    const OffloadStats pp_before = s.offload_stats();
    const auto t0 = Clock::now();
    phase = "pp";
    last = t0;
    if (auto r = s.Forward(t); !r.ok()) return cl.Fail(r.status());
    phase.clear();
    const double sec = Seconds(t0, Clock::now());
    out["pp"] = {{"tokens", pp}, {"seconds", sec}, {"tokens_per_s", pp / sec}};
    if (const OffloadStats o = s.offload_stats(); !o.device.backend.empty())
      out["pp"]["device_offload"] = DeviceTier(pp_before.device, o.device, pp);
  }
  auto& tgs = out["tg"] = nlohmann::json::array();
  for (int32_t depth : depths) {
    s.Reset();
    if (Status st = s.JumpTo(static_cast<uint32_t>(depth)); !st.ok()) return cl.Fail(st);
    int32_t next = tok(rng);
    if (auto r = s.Forward(std::span(&next, 1)); !r.ok()) return cl.Fail(r.status());  // warm-up
    const double bw_before = meter.Measure();
    if (store) store->ResetStats();
    const OffloadStats before = s.offload_stats();
    // Each repetition decodes the same positions; context switches (every thread of the
    // process) show how often decoding gave up a core.
    std::vector<double> rep_sec;
    rusage ru0{}, ru1{};
    ::getrusage(RUSAGE_SELF, &ru0);
    for (uint32_t rep = 0; rep < repetitions; ++rep) {
      if (Status st = s.Rewind(static_cast<uint32_t>(depth) + 1); !st.ok()) return cl.Fail(st);
      const auto t0 = Clock::now();
      phase = "tg";
      for (uint32_t i = 0; i < tg; ++i) {
        next = tok(rng);
        last = Clock::now();
        if (auto r = s.Forward(std::span(&next, 1)); !r.ok()) return cl.Fail(r.status());
      }
      phase.clear();
      rep_sec.push_back(Seconds(t0, Clock::now()) / tg);
    }
    ::getrusage(RUSAGE_SELF, &ru1);
    std::sort(rep_sec.begin(), rep_sec.end());
    const double sec = rep_sec[rep_sec.size() / 2];
    const double steps = static_cast<double>(tg) * repetitions;
    const double bandwidth = std::max(bw_before, meter.Measure());
    // Average cache depth read during the steps.
    const double kv = static_cast<double>(s.kv_cache().bytes_per_token()) * (depth + 1 + tg / 2.0);
    const double bytes = static_cast<double>(m.active_weight_bytes()) + kv;
    tgs.push_back({{"depth", depth},
                   {"tokens", tg},
                   {"ms_per_token", sec * 1e3},
                   {"tokens_per_s", 1.0 / sec},
                   {"bytes_per_token", bytes},
                   {"achieved_gbs", bytes / sec / 1e9},
                   {"bandwidth_gbs", bandwidth / 1e9},
                   {"fraction_of_bound", bytes / sec / bandwidth},
                   {"repetitions", repetitions},
                   {"tokens_per_s_min", 1.0 / rep_sec.back()},
                   {"tokens_per_s_max", 1.0 / rep_sec.front()},
                   {"voluntary_switches_per_token", static_cast<double>(ru1.ru_nvcsw - ru0.ru_nvcsw) / steps},
                   {"involuntary_switches_per_token", static_cast<double>(ru1.ru_nivcsw - ru0.ru_nivcsw) / steps}});
    if (const OffloadStats o = s.offload_stats(); !o.device.backend.empty())
      tgs.back()["device_offload"] = DeviceTier(before.device, o.device, steps);
    if (store) {
      // Offloaded: the bound adds the reads the cache could not avoid (the misses) at the
      // disk's direct-read bandwidth to the in-memory decode time.
      const OffloadStats o = s.offload_stats();
      disk = std::max(disk, MeasureDiskRead(mo.model_path, 256u << 20, 4));
      const double per = steps;
      const double demand = static_cast<double>(o.store.bytes_demand) / per;
      const double bound_sec = demand / std::max(disk, 1.0) + bytes / bandwidth;
      const uint64_t predicted = o.predicted_total - before.predicted_total;
      auto& t = tgs.back();
      t["fraction_of_bound"] = bound_sec / sec;
      t["offload"] = {
          {"hit_rate", o.store.requests ? static_cast<double>(o.store.hits) / o.store.requests : 1.0},
          {"bytes_read_per_token", static_cast<double>(o.store.bytes_read) / per},
          {"bytes_missed_per_token", demand},
          {"disk_gbs", disk / 1e9},
          {"stall_ms_per_token", o.store.stall_seconds / per * 1e3},
          {"prefetch_recall", predicted ? static_cast<double>(o.predicted_hits - before.predicted_hits) / predicted : 0.0},
          {"prefetch_wasted_per_token", static_cast<double>(o.store.prefetch_wasted) / per},
          {"bound_ms_per_token", bound_sec * 1e3}};
    }
  }
  out["bandwidth_gbs"] = meter.highest() / 1e9;
  if (profile) {
    const double decode_steps = static_cast<double>(tg) * repetitions * static_cast<double>(depths.size());
    for (const auto& [ph, ops] : op_seconds) {
      const double per = ph == "pp" ? pp : decode_steps;  // ms per token
      double total = 0;
      for (const auto& [op, sec] : ops) total += sec;
      auto& p = out["profile_ms_per_token"][ph];
      for (const auto& [op, sec] : ops) p[op] = sec / per * 1e3;
      if (json) continue;
      std::printf("%s time by op (ms per token):\n", ph == "pp" ? "prefill" : "decode (all depths)");
      for (const auto& [op, sec] : ops)
        std::printf("  %-14s %8.3f  %5.1f%%\n", op.c_str(), sec / per * 1e3, 100 * sec / total);
      std::printf("\n");
    }
  }
  if (json) {
    std::printf("%s\n", out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }
  std::printf("model       %s\n", mo.model_path.c_str());
  std::printf("backend     %s\n", backend.c_str());
  std::printf("bandwidth   %.1f GB/s at best (read, %u threads; measured again around each decode test)\n",
              meter.highest() / 1e9, threads);
  std::printf("weights     %s read per decoded token (active experts, lm_head; embedding row excluded); %s\n",
              cli::HumanBytes(m.active_weight_bytes()).c_str(), m.weights_held().c_str());
  std::printf("\n%-14s %10s %10s %12s %9s %9s %9s %15s %9s\n", "test", "tokens/s", "ms/token", "bytes/token", "GB/s",
              "bandwidth", "of bound", "min..max", "switches");
  if (out.contains("pp"))
    std::printf("%-14s %10.1f %10.2f %12s %9s %9s %9s %15s %9s\n", ("pp" + std::to_string(pp)).c_str(),
                out["pp"]["tokens_per_s"].get<double>(), 1e3 / out["pp"]["tokens_per_s"].get<double>(), "-", "-", "-",
                "-", "-", "-");
  if (store)
    std::printf("offload     expert store of %u experts (%s); the bound adds the missed experts' bytes at %.2f GB/s "
                "(direct reads of the file)\n",
                store->capacity(), cli::HumanBytes(uint64_t{store->capacity()} * store->slot_bytes()).c_str(), disk / 1e9);
  for (const auto& t : out["tg"]) {
    char spread[64];
    std::snprintf(spread, sizeof spread, "%.1f..%.1f", t["tokens_per_s_min"].get<double>(),
                  t["tokens_per_s_max"].get<double>());
    std::printf("%-14s %10.1f %10.2f %12s %9.1f %9.1f %8.0f%% %15s %9.1f\n",
                ("tg" + std::to_string(tg) + " @" + std::to_string(t["depth"].get<int>())).c_str(),
                t["tokens_per_s"].get<double>(), t["ms_per_token"].get<double>(),
                cli::HumanBytes(static_cast<uint64_t>(t["bytes_per_token"].get<double>())).c_str(),
                t["achieved_gbs"].get<double>(), t["bandwidth_gbs"].get<double>(), 100 * t["fraction_of_bound"].get<double>(),
                spread,
                t["voluntary_switches_per_token"].get<double>() + t["involuntary_switches_per_token"].get<double>());
  }
  std::vector<std::pair<std::string, nlohmann::ordered_json>> tiers;
  if (out.contains("pp") && out["pp"].contains("device_offload")) tiers.emplace_back("pp", out["pp"]["device_offload"]);
  for (const auto& t : out["tg"])
    if (t.contains("device_offload")) tiers.emplace_back("@" + std::to_string(t["depth"].get<int>()), t["device_offload"]);
  if (!tiers.empty())
    std::printf("device      %s holds %u of %u routed experts; the rest upload (%.1f GB/s) or run on the cpu "
                "(%.1f GB/s), whichever is sooner\n",
                tiers[0].second["backend"].get<std::string>().c_str(), tiers[0].second["cached_experts"].get<unsigned>(),
                tiers[0].second["experts"].get<unsigned>(), tiers.back().second["upload_gbs"].get<double>(),
                tiers.back().second["cpu_gbs"].get<double>());
  for (const auto& [name, d] : tiers)
    std::printf("  %-6s device hits %5.1f%%, uploaded %s/token (missed %s), %.1f experts/token on the cpu\n",
                name.c_str(), 100 * d["hit_rate"].get<double>(),
                cli::HumanBytes(static_cast<uint64_t>(d["bytes_uploaded_per_token"].get<double>())).c_str(),
                cli::HumanBytes(static_cast<uint64_t>(d["bytes_missed_per_token"].get<double>())).c_str(),
                d["cpu_experts_per_token"].get<double>());
  for (const auto& t : out["tg"]) {
    if (!t.contains("offload")) continue;
    const auto& o = t["offload"];
    std::printf("  @%-5d hits %5.1f%%, read %s/token (missed %s), stall %.1f ms/token, prefetch recall %.0f%%\n",
                t["depth"].get<int>(), 100 * o["hit_rate"].get<double>(),
                cli::HumanBytes(static_cast<uint64_t>(o["bytes_read_per_token"].get<double>())).c_str(),
                cli::HumanBytes(static_cast<uint64_t>(o["bytes_missed_per_token"].get<double>())).c_str(),
                o["stall_ms_per_token"].get<double>(), 100 * o["prefetch_recall"].get<double>());
  }
  return 0;
}

int main(int argc, char** argv) { return coda::cli::RunMain(kTool, argc, argv, Main); }
