// y = x W^T. A workgroup computes R output rows (T invocations share a row, reading it in
// interleaved runs) for up to TT tokens, so a row is read once per TT tokens and a reduction
// costs two barriers per R rows; workgroups stride over the rows. z indexes independent
// problems (attention heads) through the *_zoff / w_zrows strides.
// mode 1: x rows gathered through IDX; mode 2: y rows scattered through IDX and added, scaled
// by ALPHA (the routed experts' weighted sum).
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
#define T 8u
#define R (WG / T)
shared float part[TT * WG];

float weight(uint R_, uint k) {
  float w = LOAD_ELEM(W, p.w_dtype, p.w_off + R_ * p.cols + k);
  if (p.w_dtype == DT_FP8) w *= S[p.s_off + (R_ / p.block) * p.s_cols + k / p.block];
  return w;
}

void main() {
  const uint l = gl_LocalInvocationIndex, z = gl_WorkGroupID.z, ri = l / T, ki = l % T;
  const uint t0 = gl_WorkGroupID.y * TT;
  const uint nt = min(TT, p.n - t0);
  uint xrow[TT];
  for (uint j = 0u; j < TT; ++j) {
    const uint t = t0 + min(j, nt - 1u);
    xrow[j] = p.x_off + z * p.x_zoff + ((p.mode & 1u) != 0u ? IDX[p.idx_off + t] : t) * p.x_stride;
  }
  for (uint r0 = gl_WorkGroupID.x * R; r0 < p.rows; r0 += gl_NumWorkGroups.x * R) {
    const uint r = r0 + ri;
    float acc[TT] = float[TT](0.0, 0.0, 0.0, 0.0);
    if (r < p.rows) {
      const uint R_ = p.w_row0 + z * p.w_zrows + r;
      if (nt == 1u) {
        for (uint k = ki; k < p.cols; k += T) acc[0] += weight(R_, k) * X[xrow[0] + k];
      } else {
        for (uint k = ki; k < p.cols; k += T) {
          const float w = weight(R_, k);
          for (uint j = 0u; j < TT; ++j) acc[j] += w * X[xrow[j] + k];
        }
      }
    }
    for (uint j = 0u; j < TT; ++j) part[j * WG + l] = acc[j];
    barrier();
    if (ki == 0u && r < p.rows) {
      for (uint j = 0u; j < nt; ++j) {
        float v = 0.0;
        for (uint i = 0u; i < T; ++i) v += part[j * WG + l + i];
        const uint t = t0 + j;
        if ((p.mode & 2u) != 0u) Y[p.y_off + IDX[p.idx_off + t] * p.y_stride + r] += ALPHA[p.alpha_off + t] * v;
        else Y[p.y_off + t * p.y_stride + z * p.y_zoff + r] = v;
      }
    }
    barrier();
  }
}
