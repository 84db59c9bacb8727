#include "plan.h"

#include <algorithm>

#include "coda_ops.hpp"

namespace coda::runtime {

namespace {

constexpr uint64_t kAlign = 64;  // every value starts on a cache line

enum class Rows : uint8_t { kNone, kLast, kAll };

// Which rows of each node's output the logits need, walking back from them: row-wise ops need
// the rows asked of them; any other op (attention mixes positions and writes the cache) runs all.
std::vector<Rows> NodeRows(const GraphRef& g, bool all_logits) {
  std::vector<Rows> value(g.n_values, Rows::kNone), node(g.nodes.size(), Rows::kAll);
  value[g.logits] = all_logits ? Rows::kAll : Rows::kLast;
  for (size_t i = g.nodes.size(); i-- > 0;) {
    const GraphNode& nd = g.nodes[i];
    const ops::OpInfo* info = ops::Find(nd.op);
    Rows r = Rows::kNone;
    for (uint32_t v : nd.outputs) r = std::max(r, value[v]);
    // A node nothing reads still runs (on one row) so that every value is defined.
    if (!(info->flags & CODA_OP_ROWWISE)) r = Rows::kAll;
    else if (r == Rows::kNone) r = Rows::kLast;
    node[i] = r;
    for (uint32_t v : nd.inputs) value[v] = std::max(value[v], r);
  }
  return node;
}

}  // namespace

uint64_t ValueBytes(const coda_tensor& v) {
  uint64_t n = coda_dtype_size(v.dtype);
  for (uint32_t d = 0; d < v.ndim; ++d) n *= v.shape[d];
  return n;
}

Result<ForwardPlan> PlanForward(const Model& model, uint32_t n, bool all_logits) {
  const GraphRef& g = model.file().graph();
  ForwardPlan p;
  p.n = n;
  p.all_logits = all_logits;
  p.values.assign(g.n_values, coda_tensor{});
  p.values[0].dtype = CODA_DTYPE_I32;  // token ids [n]
  p.values[0].ndim = 1;
  p.values[0].shape[0] = n;
  const std::vector<Rows> rows = NodeRows(g, all_logits);
  p.nodes.resize(g.nodes.size());
  std::vector<coda_tensor> in, weights, out;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const GraphNode& node = g.nodes[i];
    NodePlan& np = p.nodes[i];
    const bool last = rows[i] == Rows::kLast && n > 1;
    np.n_tokens = last ? 1 : n;
    np.first_row = last ? n - 1 : 0;
    in.clear();
    weights.clear();
    out.assign(node.outputs.size(), coda_tensor{});
    for (uint32_t v : node.inputs) {
      coda_tensor t = p.values[v];
      t.shape[0] = np.n_tokens;  // a last-row node reads one row of an input that has n
      in.push_back(t);
    }
    for (int32_t w : node.weights) weights.push_back(w >= 0 ? model.tensor(w) : coda_tensor{});
    const std::string e = ops::Match({node.op, np.n_tokens, &model.hparams(), in.data(), static_cast<uint32_t>(in.size()),
                                      weights.data(), static_cast<uint32_t>(weights.size()), out.data(),
                                      static_cast<uint32_t>(out.size())},
                                     /*infer=*/true);
    // The model file was checked against the same signatures when it was opened.
    if (!e.empty()) return Internal("planning '" + node.name + "': " + e);
    for (size_t k = 0; k < node.outputs.size(); ++k) p.values[node.outputs[k]] = out[k];
  }

  // Arena: each value gets a place when produced and gives it back after its last reader; the
  // logits are never given back.
  p.offsets.assign(g.n_values, 0);
  std::vector<size_t> last_use(g.n_values, 0);
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (uint32_t v : g.nodes[i].inputs) last_use[v] = i;
  last_use[g.logits] = SIZE_MAX;
  std::vector<std::pair<uint64_t, uint64_t>> free_blocks;  // (offset, bytes)
  auto size_of = [&](uint32_t v) { return std::max<uint64_t>(kAlign, (ValueBytes(p.values[v]) + kAlign - 1) / kAlign * kAlign); };
  auto allocate = [&](uint32_t v) {
    const uint64_t need = size_of(v);
    auto best = free_blocks.end();
    for (auto it = free_blocks.begin(); it != free_blocks.end(); ++it)
      if (it->second >= need && (best == free_blocks.end() || it->second < best->second)) best = it;
    if (best == free_blocks.end()) {
      p.offsets[v] = p.arena_bytes;
      p.arena_bytes += need;
      return;
    }
    p.offsets[v] = best->first;
    if (best->second == need) free_blocks.erase(best);
    else *best = {best->first + need, best->second - need};
  };
  allocate(0);
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    for (uint32_t v : g.nodes[i].outputs) allocate(v);
    for (uint32_t v : g.nodes[i].inputs)
      if (last_use[v] == i) free_blocks.push_back({p.offsets[v], size_of(v)});
  }
  return p;
}

}  // namespace coda::runtime
