// Absorbed MLA attention for one (head, token) per workgroup over the latent cache:
// s_p = (ql . latent_p + q_rope . krope_p) * scale for the visible positions p <= start + t,
// softmax, then ol = sum_p softmax_p * latent_p. Scores go through SC (one slice per workgroup).
#version 450
#include "common.glsl"
layout(local_size_x = WG) in;
layout(std430, binding = 0) readonly buffer QLb { float QL[]; };
layout(std430, binding = 1) readonly buffer Qb { float Q[]; };
layout(std430, binding = 2) readonly buffer Kb { uint K[]; };
layout(std430, binding = 3) buffer Sb { float SC[]; };
layout(std430, binding = 4) writeonly buffer Ob { float OL[]; };
layout(push_constant) uniform P {
  uint n, heads, c, dr, dn, qk, start, t0;
  uint ql_off, q_off, k_off, k_dtype, sc_off, sc_stride, ol_off;
  float scale;
} p;

#define MAX_ROW 2048u
shared float qs[MAX_ROW];

void main() {
  const uint l = gl_LocalInvocationIndex, h = gl_WorkGroupID.x, tl = gl_WorkGroupID.y, t = p.t0 + tl;
  const uint row = p.c + p.dr, visible = p.start + t + 1u;
  const uint qlb = p.ql_off + (t * p.heads + h) * p.c, qb = p.q_off + (t * p.heads + h) * p.qk + p.dn;
  for (uint i = l; i < p.c; i += WG) qs[i] = QL[qlb + i];
  for (uint i = l; i < p.dr; i += WG) qs[p.c + i] = Q[qb + i];
  barrier();
  const uint sb = p.sc_off + (tl * p.heads + h) * p.sc_stride;
  float mx = -1.0 / 0.0;
  for (uint pos = l; pos < visible; pos += WG) {
    const uint kb = p.k_off + pos * row;
    float s = 0.0;
    for (uint i = 0u; i < row; ++i) s += qs[i] * LOAD_ELEM(K, p.k_dtype, kb + i);
    s *= p.scale;
    SC[sb + pos] = s;
    mx = max(mx, s);
  }
  mx = wg_max(mx);
  float sum = 0.0;
  for (uint pos = l; pos < visible; pos += WG) {
    const float e = exp(SC[sb + pos] - mx);
    SC[sb + pos] = e;
    sum += e;
  }
  sum = wg_sum(sum);
  memoryBarrierBuffer();
  barrier();
  const float inv = 1.0 / sum;
  for (uint j = l; j < p.c; j += WG) {
    float acc = 0.0;
    for (uint pos = 0u; pos < visible; ++pos) acc += SC[sb + pos] * LOAD_ELEM(K, p.k_dtype, p.k_off + pos * row + j);
    OL[p.ol_off + (t * p.heads + h) * p.c + j] = acc * inv;
  }
}
