// y[t] = table[ids[t]] (F32, BF16, or FP8 with block scales), one token per workgroup row.
#version 450
#include "common.glsl"
layout(local_size_x = WG) in;
layout(std430, binding = 0) readonly buffer Ib { uint IDS[]; };
layout(std430, binding = 1) readonly buffer Wb { uint W[]; };
layout(std430, binding = 2) readonly buffer Sb { float S[]; };
layout(std430, binding = 3) writeonly buffer Yb { float Y[]; };
layout(push_constant) uniform P { uint n, h, ids_off, y_off, w_off, w_dtype, s_off, s_cols, block; } p;

void main() {
  for (uint t = gl_WorkGroupID.x; t < p.n; t += gl_NumWorkGroups.x) {
    const uint id = IDS[p.ids_off + t];
    for (uint i = gl_LocalInvocationIndex; i < p.h; i += WG) {
      float v = LOAD_ELEM(W, p.w_dtype, p.w_off + id * p.h + i);
      if (p.w_dtype == DT_FP8) v *= S[p.s_off + (id / p.block) * p.s_cols + i / p.block];
      Y[p.y_off + t * p.h + i] = v;
    }
  }
}
