#include "conformance.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>

#include "reference.h"
#include "suite.h"

namespace coda::conformance {

namespace {

std::vector<Case> AllCases(uint64_t seed) {
  Gen g(seed);
  std::vector<Case> cases;
  for (uint32_t op = 0; op < CODA_OP_COUNT; ++op) SuiteOf(op)->cases(g, cases);
  return cases;
}

// ---- Running a case on a backend. ----

struct RunOutput {
  std::vector<std::vector<uint8_t>> outputs;
  std::vector<uint8_t> kv;
};

// Frees what a run allocated in a backend, whatever happens.
struct BufferGuard {
  const Backend& b;
  std::vector<coda_buffer> list;
  ~BufferGuard() {
    for (coda_buffer x : list) b.FreeBuffer(x);
  }
};

struct PreparedGuard {
  const Backend& b;
  bool active = false;
  void* handle = nullptr;
  ~PreparedGuard() {
    if (active) b.Release(handle);
  }
};

// The op of a case over its views (each tensor where it lies) and hparams; the cache's memory is
// the caller's to set.
coda_op CaseOp(const Case& c, Views& v, const coda_hparams* hp) {
  coda_op op{};
  op.struct_size = sizeof op;
  op.type = c.op;
  op.layer = -1;
  op.n_tokens = c.n_tokens;
  op.start_pos = c.start_pos;
  op.n_inputs = static_cast<uint32_t>(v.inputs.size());
  op.n_outputs = static_cast<uint32_t>(v.outputs.size());
  op.n_weights = static_cast<uint32_t>(v.weights.size());
  op.inputs = v.inputs.data();
  op.outputs = v.outputs.data();
  op.weights = v.weights.data();
  op.hparams = hp;
  if (c.has_kv) {
    op.kv.dtype = c.kv_dtype;
    op.kv.n_ctx = c.kv_n_ctx;
    op.kv.row = c.kv_row;
  }
  return op;
}

// On a backend with prepare(): its present weights prepared, the handle in op.prepared and in the
// guard, which releases it.
Status PrepareCase(const Backend& b, const Case& c, const Views& v, const coda_hparams* hp, PreparedGuard& guard,
                   coda_op& op) {
  if (!b.has_prepare()) return Status::Ok();
  std::vector<coda_tensor> present;
  for (size_t i = 0; i < c.weights.size(); ++i)
    if (!c.weights[i].absent) present.push_back(v.weights[i]);
  const coda_weights table{sizeof(coda_weights), static_cast<uint32_t>(present.size()), present.data(), hp};
  CODA_ASSIGN_OR_RETURN(guard.handle, b.Prepare(table));
  guard.active = true;
  op.prepared = guard.handle;
  return Status::Ok();
}

// Builds the op; `buffers`: inputs, outputs and the cache in the backend's buffers.
// Returns Unsupported when supports_op() declines.
Result<RunOutput> RunCase(const Backend& b, const Case& c, bool buffers) {
  Views v(c);
  coda_hparams hp = c.hp;
  hp.rope_inv_freq = c.inv_freq.empty() ? nullptr : c.inv_freq.data();
  std::vector<std::vector<uint8_t>> outs;
  for (const Blob& o : c.outputs) outs.emplace_back(o.bytes.size(), 0);
  std::vector<uint8_t> kv = c.kv_init;
  for (size_t i = 0; i < c.outputs.size(); ++i) {
    coda_tensor t = c.outputs[i].View();
    t.data = outs[i].data();
    v.outputs.push_back(t);
  }
  BufferGuard guard{b, {}};
  coda_op op = CaseOp(c, v, &hp);
  if (c.has_kv) op.kv.data = kv.data();
  if (buffers) {
    // Each activation in its own buffer at a nonzero offset, so offsets are honoured too.
    constexpr uint64_t kOffset = 64;
    auto place = [&](coda_tensor& t, const void* init, uint64_t bytes) -> Status {
      CODA_ASSIGN_OR_RETURN(coda_buffer buf, b.AllocBuffer(bytes + kOffset));
      guard.list.push_back(buf);
      if (init) CODA_RETURN_IF_ERROR(b.Upload(buf, kOffset, init, bytes, CODA_QUEUE_TRANSFER));
      t.data = nullptr;
      t.buffer = buf;
      t.offset = kOffset;
      return Status::Ok();
    };
    for (size_t i = 0; i < v.inputs.size(); ++i) CODA_RETURN_IF_ERROR(place(v.inputs[i], c.inputs[i].bytes.data(), c.inputs[i].bytes.size()));
    for (size_t i = 0; i < v.outputs.size(); ++i) CODA_RETURN_IF_ERROR(place(v.outputs[i], nullptr, outs[i].size()));
    if (c.has_kv) {
      CODA_ASSIGN_OR_RETURN(coda_buffer buf, b.AllocBuffer(kv.size() + kOffset));
      guard.list.push_back(buf);
      CODA_RETURN_IF_ERROR(b.Upload(buf, kOffset, kv.data(), kv.size(), CODA_QUEUE_TRANSFER));
      op.kv.data = nullptr;
      op.kv.buffer = buf;
      op.kv.offset = kOffset;
    }
    // Transfers queued on the transfer queue must land before compute reads them.
    if (b.has_events()) {
      CODA_ASSIGN_OR_RETURN(coda_event e, b.CreateEvent());
      Status s = b.RecordEvent(e, CODA_QUEUE_TRANSFER);
      if (s.ok()) s = b.WaitEvent(e, CODA_QUEUE_COMPUTE);
      b.DestroyEvent(e);
      CODA_RETURN_IF_ERROR(s);
    } else {
      CODA_RETURN_IF_ERROR(b.Synchronize());
    }
  }
  if (!b.Supports(op)) return Unsupported("supports_op() returned 0");
  PreparedGuard prepared{b, false, nullptr};
  CODA_RETURN_IF_ERROR(PrepareCase(b, c, v, &hp, prepared, op));
  Status s = b.Execute(op);
  if (s.code() == StatusCode::kUnsupported) return Internal("supports_op() accepted it, but execute() said: " + s.message());
  CODA_RETURN_IF_ERROR(s);
  CODA_RETURN_IF_ERROR(b.Synchronize());
  if (buffers) {
    for (size_t i = 0; i < outs.size(); ++i)
      CODA_RETURN_IF_ERROR(b.Download(v.outputs[i].buffer, v.outputs[i].offset, outs[i].data(), outs[i].size()));
    if (c.has_kv) CODA_RETURN_IF_ERROR(b.Download(op.kv.buffer, op.kv.offset, kv.data(), kv.size()));
    CODA_RETURN_IF_ERROR(b.Synchronize());
  }
  return RunOutput{std::move(outs), std::move(kv)};
}

// ---- Comparing. ----

// Error of `got` against `want`: the op's own comparison, or each output element by element; and
// the cache rows an attention step wrote.
double Compare(const Case& c, const RunOutput& got, const RunOutput& want, std::string* detail) {
  double err = 0;
  if (const OpSuite* suite = SuiteOf(c.op); suite->compare) return suite->compare(c, got.outputs, want.outputs, detail);
  for (size_t i = 0; i < c.outputs.size(); ++i) {
    const double e = RelError(AsDoubles(got.outputs[i], c.outputs[i].dtype), AsDoubles(want.outputs[i], c.outputs[i].dtype));
    if (e > err) {
      err = e;
      *detail = "output " + std::to_string(i);
    }
  }
  if (c.has_kv) {
    // The rows this step appended to the cache, and that earlier rows were left alone.
    const uint64_t first = uint64_t{c.start_pos} * c.kv_row, count = uint64_t{c.n_tokens} * c.kv_row;
    const double e = RelError(AsDoubles(got.kv, c.kv_dtype, first, count), AsDoubles(want.kv, c.kv_dtype, first, count));
    if (e > err) {
      err = e;
      *detail = "KV cache rows written";
    }
    if (!std::equal(got.kv.begin(), got.kv.begin() + static_cast<long>(first * coda_dtype_size(c.kv_dtype)), c.kv_init.begin())) {
      *detail = "KV cache rows before start_pos were modified";
      return INFINITY;
    }
  }
  return err;
}

std::string OpName(uint32_t op) { return coda_op_name(op) ? coda_op_name(op) : "?"; }

// ---- The optional ABI areas. ----

CaseResult Area(const std::string& area, const std::string& name) {
  CaseResult r;
  r.op = area;
  r.dtype = "-";
  r.name = name;
  return r;
}

void Fail(CaseResult& r, const Status& s) {
  r.outcome = Outcome::kFail;
  r.detail = s.message();
}

void CheckAbi(const Backend& b, std::vector<CaseResult>& out) {
  {
    CaseResult r = Area("devices", "device_count / device_info");
    if (!b.has_devices()) {
      r.outcome = Outcome::kUnsupported;
    } else if (auto d = b.Devices(); !d.ok()) {
      Fail(r, d.status());
    } else if (d->empty()) {
      Fail(r, Internal("device_count() returned 0"));
    } else {
      for (const DeviceInfo& i : *d)
        if (i.name.empty()) Fail(r, Internal("a device has no name"));
    }
    out.push_back(r);
  }
  {
    CaseResult r = Area("buffers", "alloc, upload, copy, download at offsets; out-of-range refused");
    if (!b.has_buffers()) {
      r.outcome = Outcome::kUnsupported;
    } else {
      Status s = [&]() -> Status {
        BufferGuard g{b, {}};
        CODA_ASSIGN_OR_RETURN(coda_buffer x, b.AllocBuffer(1000));
        g.list.push_back(x);
        CODA_ASSIGN_OR_RETURN(coda_buffer y, b.AllocBuffer(777));
        g.list.push_back(y);
        CODA_ASSIGN_OR_RETURN(coda_buffer z, b.AllocBuffer(0));
        g.list.push_back(z);
        std::vector<uint8_t> src(333), back(333, 0);
        for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 7 + 1);
        CODA_RETURN_IF_ERROR(b.Upload(x, 5, src.data(), src.size(), CODA_QUEUE_TRANSFER));
        CODA_RETURN_IF_ERROR(b.Copy(x, 5, y, 444, src.size(), CODA_QUEUE_TRANSFER));
        CODA_RETURN_IF_ERROR(b.Download(y, 444, back.data(), back.size(), CODA_QUEUE_TRANSFER));
        CODA_RETURN_IF_ERROR(b.Synchronize());
        if (back != src) return Internal("bytes read back differ from the bytes written");
        if (b.Upload(y, 700, src.data(), 100).ok()) return Internal("an upload past the end of a buffer succeeded");
        if (b.Download(x, 1001, back.data(), 0).ok()) return Internal("a download starting past the end succeeded");
        if (b.Copy(x, 0, y, 0, 778).ok()) return Internal("a copy larger than its destination succeeded");
        return Status::Ok();
      }();
      if (!s.ok()) Fail(r, s);
    }
    out.push_back(r);
  }
  {
    CaseResult r = Area("events", "create, record, wait (queue and host), destroy");
    if (!b.has_events()) {
      r.outcome = Outcome::kUnsupported;
    } else {
      Status s = [&]() -> Status {
        CODA_ASSIGN_OR_RETURN(coda_event e, b.CreateEvent());
        Status st = b.RecordEvent(e, CODA_QUEUE_COMPUTE);
        if (st.ok()) st = b.WaitEvent(e, CODA_QUEUE_TRANSFER);
        if (st.ok()) st = b.RecordEvent(e, CODA_QUEUE_TRANSFER);
        if (st.ok()) st = b.WaitEvent(e, CODA_QUEUE_HOST);
        b.DestroyEvent(e);
        return st;
      }();
      if (!s.ok()) Fail(r, s);
    }
    out.push_back(r);
  }
  {
    CaseResult r = Area("prepare", "prepare / release (exercised by every op case)");
    if (!b.has_prepare()) r.outcome = Outcome::kUnsupported;
    out.push_back(r);
  }
  {
    CaseResult r = Area("synchronize", "synchronize with nothing queued");
    if (!b.has_synchronize()) r.outcome = Outcome::kUnsupported;
    else if (Status s = b.Synchronize(); !s.ok()) Fail(r, s);
    out.push_back(r);
  }
  {
    // Every backend must refuse what it does not know, with a message, and stay usable.
    CaseResult r = Area("errors", "unknown op refused by supports_op and execute, with a message");
    coda_hparams hp = BaseHparams();
    coda_op op{};
    op.struct_size = sizeof op;
    op.type = CODA_OP_COUNT;
    op.layer = -1;
    op.hparams = &hp;
    if (b.Supports(op)) {
      Fail(r, Internal("supports_op() accepted an unknown op type"));
    } else {
      Status s = b.Execute(op);
      if (s.ok()) Fail(r, Internal("execute() ran an unknown op type"));
      else if (s.message().empty() || s.message() == "backend reported failure without a message")
        Fail(r, Internal("execute() failed without a message"));
    }
    out.push_back(r);
  }
}

// ---- Steps (coda_backend.h, step_begin / step_end). ----

constexpr uint32_t kSteps = 9;

// Runs a program of ops (one per case, decode-sized) for kSteps steps: bracketed by step_begin
// and step_end when `bracket`, else one op at a time. Everything lives in the backend's buffers but
// Embed's ids, which stay host memory, as the runtime passes them; each step moves the positions
// on by one (the attention appends to its cache) and changes the ids. From step 3 on the second op
// writes to another buffer (a step unlike the ones before), and before step 6 a buffer is freed
// (what a backend keeps of earlier steps may point into it). Returns each step's outputs, then the
// caches.
struct StepOutput {
  size_t op = 0;  // index in the program
  int step = -1;  // -1: the op's cache after the last step
  std::vector<uint8_t> bytes;
};
Result<std::vector<StepOutput>> RunSteps(const Backend& b, const std::vector<Case>& cases, bool bracket) {
  struct Op {
    coda_hparams hp{};
    std::unique_ptr<Views> v;
    coda_op op{};
    std::vector<int32_t> ids;
    coda_buffer spare = nullptr;
  };
  BufferGuard guard{b, {}};
  std::vector<std::unique_ptr<PreparedGuard>> prepared;
  std::vector<Op> ops(cases.size());
  auto alloc = [&](uint64_t bytes, const void* init) -> Result<coda_buffer> {
    CODA_ASSIGN_OR_RETURN(coda_buffer buf, b.AllocBuffer(std::max<uint64_t>(bytes, 1)));
    guard.list.push_back(buf);
    if (init) CODA_RETURN_IF_ERROR(b.Upload(buf, 0, init, bytes, CODA_QUEUE_COMPUTE));
    return buf;
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    Op& o = ops[i];
    o.hp = c.hp;
    o.hp.rope_inv_freq = c.inv_freq.empty() ? nullptr : c.inv_freq.data();
    o.v = std::make_unique<Views>(c);
    for (size_t j = 0; j < c.inputs.size(); ++j) {
      coda_tensor& t = o.v->inputs[j];
      if (c.op == CODA_OP_EMBED) {
        o.ids.resize(c.inputs[j].bytes.size() / 4);
        std::memcpy(o.ids.data(), c.inputs[j].bytes.data(), c.inputs[j].bytes.size());
        t.data = o.ids.data();
        continue;
      }
      CODA_ASSIGN_OR_RETURN(t.buffer, alloc(c.inputs[j].bytes.size(), c.inputs[j].bytes.data()));
      t.data = nullptr;
    }
    for (const Blob& out : c.outputs) {
      coda_tensor t = out.View();
      t.data = nullptr;
      CODA_ASSIGN_OR_RETURN(t.buffer, alloc(out.bytes.size(), nullptr));
      o.v->outputs.push_back(t);
    }
    CODA_ASSIGN_OR_RETURN(o.spare, alloc(c.outputs[0].bytes.size(), nullptr));
    o.op = CaseOp(c, *o.v, &o.hp);
    o.op.layer = static_cast<int32_t>(i);
    if (c.has_kv) {
      CODA_ASSIGN_OR_RETURN(o.op.kv.buffer, alloc(c.kv_init.size(), c.kv_init.data()));
    }
    prepared.push_back(std::make_unique<PreparedGuard>(PreparedGuard{b, false, nullptr}));
    CODA_RETURN_IF_ERROR(PrepareCase(b, c, *o.v, &o.hp, *prepared.back(), o.op));
  }
  CODA_RETURN_IF_ERROR(b.Synchronize());
  std::vector<StepOutput> result;
  for (uint32_t k = 0; k < kSteps; ++k) {
    if (k == 6) {
      b.FreeBuffer(ops[0].spare);
      std::erase(guard.list, ops[0].spare);
    }
    if (bracket) CODA_RETURN_IF_ERROR(b.StepBegin(7));
    for (size_t i = 0; i < ops.size(); ++i) {
      Op& o = ops[i];
      const Case& c = cases[i];
      o.op.start_pos = c.has_kv ? c.start_pos + k : k;
      if (c.op == CODA_OP_EMBED) {
        const uint64_t vocab = c.weights[0].data.shape[0];
        for (size_t t = 0; t < o.ids.size(); ++t) o.ids[t] = static_cast<int32_t>((t * 5 + k * 3 + 1) % vocab);
      }
      if (i == 1 && k == 3) o.v->outputs[0].buffer = o.spare;
      if (Status s = b.Execute(o.op); !s.ok()) {
        if (bracket) (void)b.StepEnd();
        return s.WithContext(OpName(c.op) + " in step " + std::to_string(k));
      }
    }
    if (bracket) CODA_RETURN_IF_ERROR(b.StepEnd());
    for (size_t i = 0; i < ops.size(); ++i)
      for (size_t j = 0; j < cases[i].outputs.size(); ++j) {
        StepOutput& r = result.emplace_back(StepOutput{i, static_cast<int>(k), std::vector<uint8_t>(cases[i].outputs[j].bytes.size())});
        CODA_RETURN_IF_ERROR(b.Download(ops[i].v->outputs[j].buffer, 0, r.bytes.data(), r.bytes.size()));
      }
    CODA_RETURN_IF_ERROR(b.Synchronize());
  }
  for (size_t i = 0; i < ops.size(); ++i)
    if (cases[i].has_kv) {
      StepOutput& r = result.emplace_back(StepOutput{i, -1, std::vector<uint8_t>(cases[i].kv_init.size())});
      CODA_RETURN_IF_ERROR(b.Download(ops[i].op.kv.buffer, 0, r.bytes.data(), r.bytes.size()));
    }
  CODA_RETURN_IF_ERROR(b.Synchronize());
  return result;
}

// Steps give exactly what the same ops give one at a time (coda_backend.h promises it): a program
// of one decode-sized case per op the backend runs from buffers, over steps at moving positions,
// bracketed and not.
void CheckSteps(const Backend& b, const std::vector<Case>& all, std::vector<CaseResult>& out) {
  CaseResult r = Area("steps", std::to_string(kSteps) + " steps of one op of each type, against the same ops unbracketed");
  if (!b.has_steps() || !b.has_buffers()) {
    r.outcome = Outcome::kUnsupported;
    out.push_back(r);
    return;
  }
  std::vector<Case> program;
  std::vector<std::string> names;
  for (uint32_t type = 0; type < CODA_OP_COUNT; ++type)
    for (const Case& c : all) {
      if (c.op != type || c.n_tokens != 1 || (c.has_kv && c.start_pos == 0)) continue;
      if (!RunCase(b, c, true).ok()) continue;  // what it does not run from buffers
      Case p = c;
      if (p.has_kv) {  // room for every step's row
        p.kv_n_ctx = std::max(p.kv_n_ctx, p.start_pos + kSteps);
        p.kv_init.resize(uint64_t{p.kv_n_ctx} * p.kv_row * coda_dtype_size(p.kv_dtype), 0);
      }
      names.push_back(OpName(type));
      program.push_back(std::move(p));
      break;
    }
  auto with = RunSteps(b, program, true);
  auto without = RunSteps(b, program, false);
  if (!with.ok() || !without.ok()) {
    Fail(r, !with.ok() ? with.status().WithContext("bracketed") : without.status().WithContext("one at a time"));
  } else {
    for (size_t i = 0; i < with->size() && r.outcome == Outcome::kPass; ++i) {
      const StepOutput &got = (*with)[i], &want = (*without)[i];
      const Case& c = program[got.op];
      const uint32_t dtype = got.step < 0 ? c.kv_dtype : uint32_t{CODA_DTYPE_F32};
      const double e = got.bytes == want.bytes ? 0 : RelError(AsDoubles(got.bytes, dtype), AsDoubles(want.bytes, dtype));
      r.error = std::max(r.error, e);
      if (got.bytes != want.bytes) {
        r.outcome = Outcome::kFail;
        r.detail = names[got.op] + (got.step < 0 ? ": the cache after the steps" : ": step " + std::to_string(got.step)) +
                   " differs from the same ops run one at a time (error " + std::to_string(e) + ")";
      }
    }
  }
  r.name += " (" + std::to_string(program.size()) + " ops)";
  out.push_back(r);
}

}  // namespace

std::string_view OutcomeName(Outcome o) {
  switch (o) {
    case Outcome::kPass: return "pass";
    case Outcome::kFail: return "fail";
    default: return "unsupported";
  }
}

double Tolerance(uint32_t weight_dtype, uint32_t kv_dtype) {
  // F32 weights: only summation order may differ. BF16/FP8 weights: a backend may also round
  // activations to BF16 for its matrix units. A BF16 cache: a latent that lands one BF16 step
  // apart moves that position's scores.
  double t = weight_dtype == CODA_DTYPE_F32 ? 1e-4 : 1e-2;
  if (kv_dtype == CODA_DTYPE_BF16) t = std::max(t, 2e-2);
  return t;
}

const std::vector<std::string>& OpNames() {
  static const std::vector<std::string> kNames = [] {
    std::vector<std::string> names;
    for (uint32_t op = 0; op < CODA_OP_COUNT; ++op) names.push_back(coda_op_name(op));
    return names;
  }();
  return kNames;
}

const OpSuite* SuiteOf(uint32_t op) {
  static const OpSuite* const kSuites[] = {
#define CODA_CONFORMANCE_SUITE_PTR_(NAME, Name, number, flags, signature) &k##Name##Suite,
      CODA_OP_TABLE(CODA_CONFORMANCE_SUITE_PTR_)
#undef CODA_CONFORMANCE_SUITE_PTR_
  };
  return op < CODA_OP_COUNT ? kSuites[op] : nullptr;
}

size_t Report::Count(Outcome o) const {
  return static_cast<size_t>(std::count_if(cases.begin(), cases.end(), [&](const CaseResult& c) { return c.outcome == o; }));
}

std::string Report::Table() const {
  const std::vector<std::string> cols = {"F32", "BF16", "FP8", "-"};
  std::vector<std::string> rows;
  for (const CaseResult& c : cases)
    if (std::find(rows.begin(), rows.end(), c.op) == rows.end()) rows.push_back(c.op);
  auto cell = [&](const std::string& row, const std::string& col) {
    size_t n[3] = {0, 0, 0};
    for (const CaseResult& c : cases)
      if (c.op == row && c.dtype == col) n[static_cast<int>(c.outcome)]++;
    if (!n[0] && !n[1] && !n[2]) return std::string(".");
    std::string s;
    const char* names[] = {"pass", "FAIL", "unsupported"};
    for (int i : {1, 0, 2})
      if (n[i]) s += (s.empty() ? "" : " ") + std::to_string(n[i]) + " " + names[i];
    return s;
  };
  auto status = [&](const std::string& row) {
    size_t n[3] = {0, 0, 0};
    for (const CaseResult& c : cases)
      if (c.op == row) n[static_cast<int>(c.outcome)]++;
    if (n[1]) return "FAIL";
    if (n[0] && n[2]) return "partial";
    return n[0] ? "pass" : "unsupported";
  };
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "%-13s %-12s %-22s %-22s %-22s %-22s\n", "op", "result", "F32 weights",
                "BF16 weights", "FP8 weights", "no weights / ABI");
  out += line;
  for (const std::string& r : rows) {
    std::snprintf(line, sizeof line, "%-13s %-12s %-22s %-22s %-22s %-22s\n", r.c_str(), status(r), cell(r, cols[0]).c_str(),
                  cell(r, cols[1]).c_str(), cell(r, cols[2]).c_str(), cell(r, cols[3]).c_str());
    out += line;
  }
  return out;
}

std::string Report::Failures() const {
  std::string out;
  for (const CaseResult& c : cases) {
    if (c.outcome != Outcome::kFail) continue;
    out += "FAIL " + c.op + " [" + c.dtype + "] " + c.name + ": ";
    if (std::isfinite(c.error) && c.tolerance > 0) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "error %.3g > tolerance %.3g", c.error, c.tolerance);
      out += buf;
      if (!c.detail.empty()) out += " (" + c.detail + ")";
    } else {
      out += c.detail;
    }
    out += "\n";
  }
  return out;
}

std::string Report::Json() const {
  nlohmann::ordered_json j;
  j["backend"] = backend;
  j["reference"] = reference;
  j["pass"] = Count(Outcome::kPass);
  j["fail"] = Count(Outcome::kFail);
  j["unsupported"] = Count(Outcome::kUnsupported);
  nlohmann::ordered_json list = nlohmann::json::array();
  for (const CaseResult& c : cases)
    list.push_back({{"op", c.op}, {"dtype", c.dtype}, {"case", c.name}, {"outcome", OutcomeName(c.outcome)},
                    {"error", std::isfinite(c.error) ? nlohmann::json(c.error) : nlohmann::json(nullptr)},
                    {"tolerance", c.tolerance}, {"against", c.against}, {"detail", c.detail}});
  j["cases"] = std::move(list);
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

Result<Report> Run(const Backend& backend, const Backend& reference, const Options& options) {
  for (const std::string& op : options.ops)
    if (std::find(OpNames().begin(), OpNames().end(), op) == OpNames().end()) {
      std::string known;
      for (const std::string& name : OpNames()) known += (known.empty() ? "" : ", ") + name;
      return InvalidArgument("unknown op '" + op + "' (ops: " + known + ")");
    }
  Report report;
  report.backend = std::string(backend.name()) + (backend.path().empty() ? " (linked in)" : " (" + backend.path() + ")");
  report.reference = std::string(reference.name()) + (reference.path().empty() ? " (linked in)" : " (" + reference.path() + ")");
  for (const Case& c : AllCases(options.seed)) {
    const std::string op = OpName(c.op);
    if (!options.ops.empty() && std::find(options.ops.begin(), options.ops.end(), op) == options.ops.end()) continue;
    const Backend* against = &reference;
    auto want = RunCase(reference, c, false);
    if (!want.ok() && want.status().code() == StatusCode::kUnsupported && options.fallback) {
      against = options.fallback;
      want = RunCase(*against, c, false);
    }
    if (!want.ok())
      return want.status().WithContext("reference " + std::string(against->name()) + " on " + op + " [" + c.dtype + "] " + c.name);
    for (bool buffers : {false, true}) {
      if (buffers && (!options.buffers || !backend.has_buffers())) continue;
      CaseResult r;
      r.op = op;
      r.dtype = c.dtype;
      r.name = c.name + (buffers ? " [in buffers]" : "");
      r.tolerance = c.tol;
      r.against = std::string(against->name());
      if (options.on_case) options.on_case(r.op, r.dtype, r.name);
      auto got = RunCase(backend, c, buffers);
      if (!got.ok()) {
        if (got.status().code() == StatusCode::kUnsupported && got.status().message() == "supports_op() returned 0") {
          r.outcome = Outcome::kUnsupported;
        } else {
          r.outcome = Outcome::kFail;
          r.error = INFINITY;
          r.detail = got.status().message();
        }
      } else {
        r.error = Compare(c, *got, *want, &r.detail);
        r.outcome = r.error <= c.tol ? Outcome::kPass : Outcome::kFail;
        if (r.outcome == Outcome::kPass) r.detail.clear();
      }
      report.cases.push_back(std::move(r));
    }
  }
  if (options.ops.empty()) {
    CheckAbi(backend, report.cases);
    CheckSteps(backend, AllCases(options.seed), report.cases);
  }
  return report;
}

}  // namespace coda::conformance
