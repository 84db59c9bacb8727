// g = silu(g) * u, elementwise (grid-strided), in place.
#version 450
#include "common.glsl"
layout(local_size_x = WG) in;
layout(std430, binding = 0) buffer Gb { float G[]; };
layout(std430, binding = 1) readonly buffer Ub { float U[]; };
layout(push_constant) uniform P { uint count, g_off, u_off; } p;

void main() {
  for (uint i = gl_GlobalInvocationID.x; i < p.count; i += gl_NumWorkGroups.x * WG) {
    const float g = G[p.g_off + i];
    G[p.g_off + i] = g / (1.0 + exp(-g)) * U[p.u_off + i];
  }
}
