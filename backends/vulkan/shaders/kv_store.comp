// Appends n rows of the F32 latent (+ rope key) to the cache, in the cache's dtype. BF16: each
// invocation owns one 32-bit word, so rows that start mid-word never race.
#version 450
#include "common.glsl"
layout(local_size_x = WG) in;
layout(std430, binding = 0) readonly buffer Xb { float X[]; };
layout(std430, binding = 1) buffer Kb { uint K[]; };
layout(push_constant) uniform P { uint count, x_off, k_off, first, dtype; } p;
// count values go to cache elements [first, first + count) (relative to k_off).

void main() {
  const uint stride = gl_NumWorkGroups.x * WG;
  if (p.dtype == DT_F32) {
    for (uint i = gl_GlobalInvocationID.x; i < p.count; i += stride) K[p.k_off + p.first + i] = floatBitsToUint(X[p.x_off + i]);
    return;
  }
  const uint w0 = p.first / 2u, w1 = (p.first + p.count + 1u) / 2u;
  for (uint w = w0 + gl_GlobalInvocationID.x; w < w1; w += stride) {
    uint word = K[p.k_off / 2u + w];
    for (uint h = 0u; h < 2u; ++h) {
      const uint e = 2u * w + h;
      if (e >= p.first && e < p.first + p.count) {
        const uint b = f32_to_bf16(X[p.x_off + e - p.first]);
        word = h == 0u ? (word & 0xffff0000u) | b : (word & 0xffffu) | (b << 16);
      }
    }
    K[p.k_off / 2u + w] = word;
  }
}
