// Folds W_UK into the query: ql[t, h, j] = sum_d q_nope[t, h, d] * kv_b[h * (dn + dv) + d, j].
// Grid: (ceil(c / 64), heads, tokens).
#version 450
#include "common.glsl"
layout(local_size_x = WG) in;
layout(std430, binding = 0) readonly buffer Qb { float Q[]; };
layout(std430, binding = 1) readonly buffer Wb { uint W[]; };
layout(std430, binding = 2) readonly buffer Sb { float S[]; };
layout(std430, binding = 3) writeonly buffer Ob { float QL[]; };
layout(push_constant) uniform P {
  uint n, heads, c, dn, dv, qk, q_off, ql_off, w_off, w_dtype, s_off, s_cols, block;
} p;

void main() {
  const uint j = gl_WorkGroupID.x * WG + gl_LocalInvocationIndex, h = gl_WorkGroupID.y;
  if (j >= p.c) return;
  for (uint t = gl_WorkGroupID.z; t < p.n; t += gl_NumWorkGroups.z) {
    const uint qb = p.q_off + (t * p.heads + h) * p.qk;
    float acc = 0.0;
    for (uint d = 0u; d < p.dn; ++d) {
      const uint R = h * (p.dn + p.dv) + d;
      float w = LOAD_ELEM(W, p.w_dtype, p.w_off + R * p.c + j);
      if (p.w_dtype == DT_FP8) w *= S[p.s_off + (R / p.block) * p.s_cols + j / p.block];
      acc += Q[qb + d] * w;
    }
    QL[p.ql_off + (t * p.heads + h) * p.c + j] = acc;
  }
}
