// Rotary embedding on interleaved pairs, in place, for n tokens x nvec vectors of dr values.
// CS holds cos and sin per token and pair, computed on the host in double precision (GPU
// sin/cos are allowed large errors).
#version 450
#include "common.glsl"
layout(local_size_x = WG) in;
layout(std430, binding = 0) buffer Xb { float X[]; };
layout(std430, binding = 1) readonly buffer Cb { float CS[]; };
layout(push_constant) uniform P { uint n, nvec, dr, x_off, t_stride, v_stride, cs_off; } p;

void main() {
  const uint half_ = p.dr / 2u;
  for (uint t = gl_WorkGroupID.x; t < p.n; t += gl_NumWorkGroups.x)
    for (uint v = gl_WorkGroupID.y; v < p.nvec; v += gl_NumWorkGroups.y)
      for (uint i = gl_LocalInvocationIndex; i < half_; i += WG) {
        const uint b = p.x_off + t * p.t_stride + v * p.v_stride + 2u * i;
        const float c = CS[p.cs_off + (t * half_ + i) * 2u], s = CS[p.cs_off + (t * half_ + i) * 2u + 1u];
        const float x0 = X[b], x1 = X[b + 1u];
        X[b] = x0 * c - x1 * s;
        X[b + 1u] = x0 * s + x1 * c;
      }
}
