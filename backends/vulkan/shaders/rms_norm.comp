// y = x * rsqrt(mean(x^2) + eps) * w, one row per workgroup; may run in place (y == x).
#version 450
#include "common.glsl"
layout(local_size_x = WG) in;
layout(std430, binding = 0) readonly buffer Xb { float X[]; };
layout(std430, binding = 1) readonly buffer Wb { uint W[]; };
layout(std430, binding = 2) buffer Yb { float Y[]; };
layout(push_constant) uniform P {
  uint n, d, x_off, x_stride, y_off, y_stride, w_off, w_dtype;
  float eps;
} p;

void main() {
  const uint l = gl_LocalInvocationIndex;
  for (uint t = gl_WorkGroupID.x; t < p.n; t += gl_NumWorkGroups.x) {
    const uint xb = p.x_off + t * p.x_stride, yb = p.y_off + t * p.y_stride;
    float ss = 0.0;
    for (uint i = l; i < p.d; i += WG) ss += X[xb + i] * X[xb + i];
    const float r = 1.0 / sqrt(wg_sum(ss) / float(p.d) + p.eps);
    for (uint i = l; i < p.d; i += WG) Y[yb + i] = X[xb + i] * r * LOAD_ELEM(W, p.w_dtype, p.w_off + i);
    barrier();
  }
}
