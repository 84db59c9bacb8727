// libFuzzer target, structure-aware: a valid model's FlatBuffer edited field by field (graph
// nodes, the logits value, the tensor table, hyper-parameters), each edit a value the FlatBuffer
// verifier accepts, so the checks behind it are what is exercised. A model that opens must also
// run: two forward passes on the CPU backend, under ASan and UBSan. "Whatever passes validation
// can run without touching memory it does not own."
#include <fuzzer/FuzzedDataProvider.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "coda/file.h"
#include "coda/runtime.h"
#include "coda_cpu_backend.h"
#include "coda_generated.h"
#include "convert.h"

namespace {

std::string* g_seed = nullptr;            // the valid model's bytes
coda::Context* g_context = nullptr;       // the CPU backend, one thread

// A value near the ones a field holds, or an extreme one.
template <typename T>
T Pick(FuzzedDataProvider& in, T near) {
  switch (in.ConsumeIntegralInRange(0, 3)) {
    case 0: return static_cast<T>(near + static_cast<T>(in.ConsumeIntegralInRange(-3, 3)));
    case 1: return static_cast<T>(in.ConsumeIntegralInRange(0, 40));
    default: return in.ConsumeIntegral<T>();
  }
}

void EditNode(FuzzedDataProvider& in, coda::fb::Graph* g) {
  auto* nodes = g->mutable_nodes();
  if (!nodes || nodes->size() == 0) return;
  coda::fb::Node* n = nodes->GetMutableObject(in.ConsumeIntegralInRange<uint32_t>(0, nodes->size() - 1));
  auto edit = [&](auto* vec, auto near) {
    if (vec && vec->size()) {
      const uint32_t i = in.ConsumeIntegralInRange<uint32_t>(0, vec->size() - 1);
      vec->Mutate(i, Pick(in, near(vec->Get(i))));
    }
  };
  switch (in.ConsumeIntegralInRange(0, 4)) {
    case 0: n->mutate_op(Pick<uint8_t>(in, n->op())); break;
    case 1: n->mutate_layer(Pick<int32_t>(in, n->layer())); break;
    case 2: edit(n->mutable_inputs(), [](uint32_t v) { return v; }); break;
    case 3: edit(n->mutable_outputs(), [](uint32_t v) { return v; }); break;
    default: edit(n->mutable_weights(), [](int32_t v) { return v; }); break;
  }
}

void EditTensor(FuzzedDataProvider& in, coda::fb::Model* m) {
  auto* tensors = m->mutable_tensors();
  if (!tensors || tensors->size() == 0) return;
  coda::fb::Tensor* t = tensors->GetMutableObject(in.ConsumeIntegralInRange<uint32_t>(0, tensors->size() - 1));
  switch (in.ConsumeIntegralInRange(0, 6)) {
    case 0: t->mutate_dtype(static_cast<coda::fb::DType>(Pick<uint8_t>(in, static_cast<uint8_t>(t->dtype())))); break;
    case 1:
      if (auto* shape = t->mutable_shape(); shape && shape->size()) {
        const uint32_t i = in.ConsumeIntegralInRange<uint32_t>(0, shape->size() - 1);
        shape->Mutate(i, Pick<uint64_t>(in, shape->Get(i)));
      }
      break;
    case 2: t->mutate_offset(Pick<uint64_t>(in, t->offset())); break;
    case 3: t->mutate_size(Pick<uint64_t>(in, t->size())); break;
    case 4: t->mutate_scale(Pick<int32_t>(in, t->scale())); break;
    case 5: t->mutate_layer(Pick<int32_t>(in, t->layer())); break;
    default: t->mutate_expert(Pick<int32_t>(in, t->expert())); break;
  }
}

void EditHparams(FuzzedDataProvider& in, coda::fb::HParams* h) {
  switch (in.ConsumeIntegralInRange(0, 11)) {
    case 0: h->mutate_hidden_size(Pick<uint32_t>(in, h->hidden_size())); break;
    case 1: h->mutate_n_layers(Pick<uint32_t>(in, h->n_layers())); break;
    case 2: h->mutate_n_heads(Pick<uint32_t>(in, h->n_heads())); break;
    case 3: h->mutate_kv_lora_rank(Pick<uint32_t>(in, h->kv_lora_rank())); break;
    case 4: h->mutate_qk_rope_head_dim(Pick<uint32_t>(in, h->qk_rope_head_dim())); break;
    case 5: h->mutate_n_routed_experts(Pick<uint32_t>(in, h->n_routed_experts())); break;
    case 6: h->mutate_n_experts_per_tok(Pick<uint32_t>(in, h->n_experts_per_tok())); break;
    case 7: h->mutate_vocab_size(Pick<uint32_t>(in, h->vocab_size())); break;
    case 8: h->mutate_routed_scaling_factor(in.ConsumeFloatingPoint<float>()); break;
    case 9: h->mutate_rms_norm_eps(in.ConsumeFloatingPoint<float>()); break;
    case 10: h->mutate_n_group(Pick<uint32_t>(in, h->n_group())); break;
    default: h->mutate_topk_group(Pick<uint32_t>(in, h->topk_group())); break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string path = "/tmp/coda_fuzz_graph_seed_" + std::to_string(::getpid()) + ".coda";
  coda::convert::RandomOptions o;
  o.seed = 3;
  if (!coda::convert::ConvertRandom(CODA_FUZZ_SEED_CONFIG, path, o).ok()) std::abort();
  auto bytes = coda::ReadTextFile(path, 64u << 20);
  std::remove(path.c_str());
  if (!bytes.ok()) std::abort();
  g_seed = new std::string(std::move(*bytes));
  coda::ContextOptions co;
  co.n_threads = 1;
  co.backends = {coda_cpu_backend_entry};
  auto ctx = coda::Context::Create(co);
  if (!ctx.ok()) std::abort();
  g_context = ctx->release();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  std::string bytes = *g_seed;
  coda::fb::Model* m = coda::fb::GetMutableModel(bytes.data() + coda::kCodaPreambleSize);
  for (int edits = in.ConsumeIntegralInRange(1, 6); edits > 0 && in.remaining_bytes() > 0; --edits) {
    switch (in.ConsumeIntegralInRange(0, 4)) {
      case 0: case 1: EditNode(in, m->mutable_graph()); break;
      case 2: m->mutable_graph()->mutate_logits(Pick<uint32_t>(in, m->graph()->logits())); break;
      case 3: EditTensor(in, m); break;
      default: EditHparams(in, m->mutable_hparams()); break;
    }
  }
  auto file = coda::ModelFile::FromBytes({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, "fuzz.coda");
  if (!file.ok()) return 0;
  auto model = coda::Model::FromFile(std::move(*file));
  if (!model.ok()) return 0;
  coda::SessionOptions so;
  so.n_ctx = 8;
  auto session = coda::Session::Create(*g_context, *model, so);
  if (!session.ok()) return 0;
  const int32_t prompt[] = {1, 2, 3};
  if (!(*session)->Forward(prompt, /*all_logits=*/true).ok()) return 0;
  const int32_t next[] = {4};
  (void)(*session)->Forward(next);
  return 0;
}
