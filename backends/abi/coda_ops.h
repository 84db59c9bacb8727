/*
 * coda_ops.h — the graph ops: each op's number, name, tensor slots with their shapes, and its
 * exact semantics. Part of the ABI; included by coda_backend.h. Plain C99.
 *
 * CODA_OP_TABLE is the one definition of the ops. The ABI enum (coda_op_type), the model file's
 * op numbers, the host's graph check and memory planner, the names tools print and the
 * conformance suite all derive from it. coda_ops.hpp reads the signatures in C++ (and checks a
 * coda_op against them) for the host and for backends written in C++.
 *
 * Adding an op: a row here (a new number at the end: numbers are stored in model files), its
 * kernels in the backends that run it, its reference and cases in tools/conformance/ops/, and
 * the graph writer if models use it. A backend built before the op existed declines its number
 * in supports_op(), so the host falls back to one that knows it: appending an op is a
 * compatible change (no ABI version bump).
 *
 * ---- Signatures ----
 *
 * "inputs | weights | outputs", each a comma-separated list of slots, in coda_op order:
 *
 *   name[dim, dim, ...]         a tensor of that shape, row-major
 *   name[...]:i32               an activation of dtype I32 (activations are F32 otherwise)
 *   name[...]?                  an optional weight (absent: data and buffer both NULL)
 *   name[...]?h / name[...]?!h  a weight present exactly when hyper-parameter h is nonzero / zero
 *   (slot, slot, ...)*h         weights only: the group repeated h times, slots in group order
 *
 * A dimension is an expression of names, integers, + and * (and parentheses). `n` is the op's
 * n_tokens (0 in a placement probe, see supports_op). A name that is a field of coda_hparams
 * (n_heads, kv_lora_rank, ...) is that hyper-parameter. Any other name is free: it takes its
 * value where it first appears (inputs, then weights, then outputs) and must equal it wherever it
 * appears again. Weights may be F32, BF16 or F16, or FP8_E4M3 when 2-D, with F32 block scales of
 * shape [ceil(rows / block), ceil(cols / block)] (block: coda_tensor.block, 0 meaning 128).
 *
 * ---- Numbers ----
 *
 * A weight's value W[i][j] is its element decoded (coda_dtypes.h: BF16 and F16 widened, an FP8
 * code times scale[i / block][j / block]). Backends accumulate in at least F32 and may round
 * activations to BF16 for their matrix units; tools/conformance states the tolerances. Outputs
 * are F32 (ids: I32). An op never reads outside its tensors: an id out of range (Embed's token
 * ids, MoeExperts' expert ids) fails the op with CODA_STATUS_INVALID_ARGUMENT.
 *
 * ---- Semantics, op by op ----
 *
 * Embed        y[t] = table[ids[t]].
 * RmsNorm      y[t] = x[t] / sqrt(mean_i(x[t][i]^2) + rms_norm_eps) * weight.
 * Linear       y = x W^T: y[t][r] = sum_c x[t][c] W[r][c].
 * Head         as Linear; the language-model head, whose output is the logits.
 * Add          y = a + b.
 * Concat       y[t] = (a[t], b[t]): a row of a, then the row of b (DeepSeek's multi-token
 *              prediction joins an embedding and a hidden state this way).
 * Mlp          SwiGLU: y = down(silu(gate x) * up x), silu(v) = v / (1 + e^-v), each
 *              projection as Linear.
 *
 * MlaAttention DeepSeek's multi-head latent attention over one sequence, tokens t = 0..n-1 at
 *   positions p_t = start_pos + t. H = n_heads, dn = qk_nope_head_dim, dr = qk_rope_head_dim,
 *   dv = v_head_dim, c = kv_lora_rank. Weight slots, in order: q_a_proj, q_a_layernorm,
 *   q_b_proj (present with q LoRA, q_lora_rank > 0), q_proj (present without), kv_a_proj_with_mqa,
 *   kv_a_layernorm, kv_b_proj, o_proj.
 *   1. q = q_b(RmsNorm(q_a x, q_a_layernorm)) with q LoRA, else q_proj x; per token and head,
 *      q[t][h] = (q_nope: dn values, q_pe: dr values).
 *   2. kv = kv_a_proj_with_mqa x = (latent: c values, k_pe: dr values);
 *      latent = RmsNorm(latent, kv_a_layernorm).
 *   3. RoPE at p_t on q_pe (every head) and on k_pe, on interleaved pairs: for i < dr/2 with
 *      a = p_t * rope_inv_freq[i], (v[2i], v[2i+1]) <- (v[2i] cos a - v[2i+1] sin a,
 *      v[2i] sin a + v[2i+1] cos a). The host computes rope_inv_freq (YaRN-corrected).
 *   4. The latent cache (coda_op.kv) row of position p_t becomes (latent, k_pe), stored in the
 *      cache's dtype (BF16: rounded to nearest even). Rows below start_pos are read, never
 *      written; rows above start_pos + n - 1 are neither read nor written.
 *   5. Attention reads the cache as stored, own row included. With kv_b_proj's rows for head h
 *      split into W_UK[h] (dn rows) then W_UV[h] (dv rows), and (lat_p, pe_p) the cache row of
 *      position p, token t attends to p = 0..p_t (causal):
 *        s[h][p] = (q_nope[t][h] . (W_UK[h] lat_p) + q_pe[t][h] . pe_p) * softmax_scale,
 *        o[t][h] = sum_p softmax_p(s[h])[p] * (W_UV[h] lat_p),
 *      softmax_scale from the host ((dn + dr)^-1/2, times mscale^2 under YaRN). The absorbed
 *      form, (q_nope W_UK[h]) . lat_p and W_UV[h] (sum_p prob * lat_p), is the same sum in another
 *      order; a backend may use either.
 *   6. y = o_proj o, with o[t] the H heads' dv values concatenated.
 *
 * MoeGate  DeepSeekMoE routing, per token. E = n_routed_experts, k = n_experts_per_tok.
 *   1. logits = weight x; scores = softmax(logits) (scoring_func 0) or sigmoid(logits) (1).
 *   2. sel[e] = scores[e] + bias[e] (bias absent: 0). The bias steers selection only.
 *   3. With G = n_group > 1: the experts form G groups of E/G consecutive ids; a group's score
 *      is its largest sel, or with a bias the sum of its two largest; experts outside the
 *      topk_group best groups are excluded.
 *   4. The k remaining experts with the largest sel are chosen. Ties, in groups and in experts,
 *      go to the lower index.
 *   5. weights[j] = scores[ids[j]] (unbiased), divided by the sum of the k chosen scores when
 *      norm_topk_prob, then multiplied by routed_scaling_factor.
 *   The k (id, weight) pairs of a token may come in any order.
 *
 * MoeExperts  y[t] = sum_j weights[t][j] * Mlp_e(x[t]), e = ids[t][j], Mlp_e the SwiGLU of
 *   expert e's (gate, up, down): weight slots 3e, 3e + 1, 3e + 2. A token's ids may repeat,
 *   each pair adding its term: offloading sends the routes it computes elsewhere to an expert
 *   the call has, at weight 0. Only experts some pair names are read.
 */
#ifndef CODA_OPS_H_
#define CODA_OPS_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Flags of an op. */
/* Each output row depends only on the same row of the inputs: the host may run a subset of the
   rows (only the last token's logits, for example). */
#define CODA_OP_ROWWISE 1u
/* Reads and writes the sequence's latent cache (coda_op.kv); coda_op.layer addresses it. */
#define CODA_OP_USES_KV 2u

/* X(NAME, Name, number, flags, signature) */
#define CODA_OP_TABLE(X)                                                                          \
  X(EMBED, Embed, 0, CODA_OP_ROWWISE, "ids[n]:i32 | table[vocab,d] | y[n,d]")                     \
  X(RMS_NORM, RmsNorm, 1, CODA_OP_ROWWISE, "x[n,d] | weight[d] | y[n,d]")                         \
  X(LINEAR, Linear, 2, CODA_OP_ROWWISE, "x[n,k] | weight[m,k] | y[n,m]")                          \
  X(MLA_ATTENTION, MlaAttention, 3, CODA_OP_USES_KV,                                              \
    "x[n,d] | q_a_proj[q_lora_rank,d]?q_lora_rank, q_a_layernorm[q_lora_rank]?q_lora_rank,"       \
    " q_b_proj[n_heads*(qk_nope_head_dim+qk_rope_head_dim),q_lora_rank]?q_lora_rank,"             \
    " q_proj[n_heads*(qk_nope_head_dim+qk_rope_head_dim),d]?!q_lora_rank,"                        \
    " kv_a_proj_with_mqa[kv_lora_rank+qk_rope_head_dim,d], kv_a_layernorm[kv_lora_rank],"         \
    " kv_b_proj[n_heads*(qk_nope_head_dim+v_head_dim),kv_lora_rank], o_proj[d,n_heads*v_head_dim]" \
    " | y[n,d]")                                                                                  \
  X(MOE_GATE, MoeGate, 4, CODA_OP_ROWWISE,                                                        \
    "x[n,d] | weight[n_routed_experts,d], bias[n_routed_experts]?"                                \
    " | ids[n,n_experts_per_tok]:i32, weights[n,n_experts_per_tok]")                              \
  X(MOE_EXPERTS, MoeExperts, 5, CODA_OP_ROWWISE,                                                  \
    "x[n,d], ids[n,n_experts_per_tok]:i32, weights[n,n_experts_per_tok]"                          \
    " | (gate[f,d], up[f,d], down[d,f])*n_routed_experts | y[n,d]")                               \
  X(MLP, Mlp, 6, CODA_OP_ROWWISE, "x[n,d] | gate[f,d], up[f,d], down[d,f] | y[n,d]")              \
  X(ADD, Add, 7, CODA_OP_ROWWISE, "a[n,d], b[n,d] | | y[n,d]")                                    \
  X(HEAD, Head, 8, CODA_OP_ROWWISE, "x[n,d] | weight[vocab,d] | y[n,vocab]")                      \
  X(CONCAT, Concat, 9, CODA_OP_ROWWISE, "a[n,p], b[n,q] | | y[n,p+q]")

typedef enum coda_op_type {
#define CODA_OP_ENUM_(NAME, Name, number, flags, signature) CODA_OP_##NAME = number,
  CODA_OP_TABLE(CODA_OP_ENUM_)
#undef CODA_OP_ENUM_
} coda_op_type;

/* Op numbers are 0 .. CODA_OP_COUNT - 1, with none left out. */
#define CODA_OP_COUNT_ONE_(NAME, Name, number, flags, signature) +1
#define CODA_OP_COUNT (0 CODA_OP_TABLE(CODA_OP_COUNT_ONE_))

/* "Embed", "MlaAttention", ...; NULL for a number that is not an op of this header. */
static inline const char* coda_op_name(uint32_t op) {
  switch (op) {
#define CODA_OP_NAME_(NAME, Name, number, flags, signature) case number: return #Name;
    CODA_OP_TABLE(CODA_OP_NAME_)
#undef CODA_OP_NAME_
    default: return 0;
  }
}

#ifdef __cplusplus
}
#endif

#endif /* CODA_OPS_H_ */
