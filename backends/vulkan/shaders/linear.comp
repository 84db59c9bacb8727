// y = x W^T for up to 4 tokens per workgroup and one output row at a time (grid-strided over
// rows); z indexes independent problems (attention heads) through the *_zoff / w_zrows strides.
// mode 1: x rows gathered through IDX; mode 2: also y rows scattered through IDX and added,
// scaled by ALPHA (the routed experts' weighted sum).
#version 450
#include "common.glsl"
layout(local_size_x = WG) in;
layout(std430, binding = 0) readonly buffer Xb { float X[]; };
layout(std430, binding = 1) readonly buffer Wb { uint W[]; };
layout(std430, binding = 2) readonly buffer Sb { float S[]; };
layout(std430, binding = 3) buffer Yb { float Y[]; };
layout(std430, binding = 4) readonly buffer Ib { uint IDX[]; };
layout(std430, binding = 5) readonly buffer Ab { float ALPHA[]; };
layout(push_constant) uniform P {
  uint n, rows, cols;
  uint x_off, x_stride, x_zoff;
  uint y_off, y_stride, y_zoff;
  uint w_off, w_row0, w_zrows, w_dtype;
  uint s_off, s_cols, block;
  uint mode, idx_off, alpha_off;
} p;

#define TT 4u

void main() {
  const uint l = gl_LocalInvocationIndex, z = gl_WorkGroupID.z;
  const uint t0 = gl_WorkGroupID.y * TT;
  const uint nt = min(TT, p.n - t0);
  uint xrow[TT];
  for (uint j = 0u; j < TT; ++j) {
    const uint t = t0 + min(j, nt - 1u);
    xrow[j] = p.x_off + z * p.x_zoff + ((p.mode & 1u) != 0u ? IDX[p.idx_off + t] : t) * p.x_stride;
  }
  for (uint r = gl_WorkGroupID.x; r < p.rows; r += gl_NumWorkGroups.x) {
    const uint R = p.w_row0 + z * p.w_zrows + r;
    const uint wbase = p.w_off + R * p.cols;
    float acc[TT] = float[TT](0.0, 0.0, 0.0, 0.0);
    if (p.w_dtype == DT_FP8) {
      const uint sbase = p.s_off + (R / p.block) * p.s_cols;
      for (uint k = l; k < p.cols; k += WG) {
        const float w = LOAD_ELEM(W, DT_FP8, wbase + k) * S[sbase + k / p.block];
        for (uint j = 0u; j < TT; ++j) acc[j] += w * X[xrow[j] + k];
      }
    } else {
      for (uint k = l; k < p.cols; k += WG) {
        const float w = LOAD_ELEM(W, p.w_dtype, wbase + k);
        for (uint j = 0u; j < TT; ++j) acc[j] += w * X[xrow[j] + k];
      }
    }
    for (uint j = 0u; j < TT; ++j) {
      const float v = wg_sum(acc[j]);
      if (l == 0u && j < nt) {
        const uint t = t0 + j;
        if ((p.mode & 2u) != 0u) Y[p.y_off + IDX[p.idx_off + t] * p.y_stride + r] += ALPHA[p.alpha_off + t] * v;
        else Y[p.y_off + t * p.y_stride + z * p.y_zoff + r] = v;
      }
    }
  }
}
