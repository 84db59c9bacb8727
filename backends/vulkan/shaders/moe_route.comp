// MoE routing, one token per invocation (grid-strided), exactly as the CPU backend: softmax or sigmoid scores,
// optional selection bias, group-limited selection (topk_group groups by their best score, or
// the sum of their best two with a bias), top-k with ties to the lower index, optional
// normalization, routed scaling. SC and SEL are per-token scratch rows of E values.
#version 450
#include "common.glsl"
layout(local_size_x = WG) in;
layout(std430, binding = 0) readonly buffer Lb { float L[]; };
layout(std430, binding = 1) readonly buffer Bb { uint BIAS[]; };
layout(std430, binding = 2) buffer Sb { float SC[]; };
layout(std430, binding = 3) buffer Eb { float SEL[]; };
layout(std430, binding = 4) buffer Ib { uint IDS[]; };
layout(std430, binding = 5) writeonly buffer Wb { float WTS[]; };
layout(push_constant) uniform P {
  uint n, E, K, G, topk_group, softmax, has_bias, bias_dtype, norm;
  uint l_off, ids_off, w_off, bias_off;
  float scaling;
} p;

const float NEG_INF = -1.0 / 0.0;

void route(uint t) {
  const uint lb = p.l_off + t * p.E, sb = t * p.E;
  if (p.softmax != 0u) {
    float mx = L[lb];
    for (uint i = 1u; i < p.E; ++i) mx = max(mx, L[lb + i]);
    float sum = 0.0;
    for (uint i = 0u; i < p.E; ++i) {
      SC[sb + i] = exp(L[lb + i] - mx);
      sum += SC[sb + i];
    }
    for (uint i = 0u; i < p.E; ++i) SC[sb + i] /= sum;
  } else {
    for (uint i = 0u; i < p.E; ++i) SC[sb + i] = 1.0 / (1.0 + exp(-L[lb + i]));
  }
  for (uint i = 0u; i < p.E; ++i)
    SEL[sb + i] = SC[sb + i] + (p.has_bias != 0u ? LOAD_ELEM(BIAS, p.bias_dtype, p.bias_off + i) : 0.0);
  if (p.G > 1u) {
    const uint per = p.E / p.G;
    uint kept = 0u;  // bit mask of the chosen groups (G <= 32, checked on the host)
    for (uint r = 0u; r < p.topk_group; ++r) {
      uint best = 0xffffffffu;
      float best_v = NEG_INF;
      for (uint g = 0u; g < p.G; ++g) {
        if ((kept & (1u << g)) != 0u) continue;
        float a = NEG_INF, b = NEG_INF;
        for (uint i = 0u; i < per; ++i) {
          const float s = SEL[sb + g * per + i];
          if (s > a) { b = a; a = s; } else if (s > b) { b = s; }
        }
        const float gv = p.has_bias != 0u && per > 1u ? a + b : a;
        if (best == 0xffffffffu || gv > best_v) { best = g; best_v = gv; }
      }
      kept |= 1u << best;
    }
    for (uint g = 0u; g < p.G; ++g)
      if ((kept & (1u << g)) == 0u)
        for (uint i = 0u; i < per; ++i) SEL[sb + g * per + i] = NEG_INF;
  }
  // Top-k by repeated arg-max; a chosen expert is marked by its index in IDS.
  float sum = 0.0;
  for (uint j = 0u; j < p.K; ++j) {
    uint best = 0xffffffffu;
    float best_v = NEG_INF;
    for (uint i = 0u; i < p.E; ++i) {
      bool taken = false;
      for (uint q = 0u; q < j; ++q) taken = taken || IDS[p.ids_off + t * p.K + q] == i;
      if (taken) continue;
      if (best == 0xffffffffu || SEL[sb + i] > best_v) { best = i; best_v = SEL[sb + i]; }
    }
    IDS[p.ids_off + t * p.K + j] = best;
    sum += SC[sb + best];
  }
  for (uint j = 0u; j < p.K; ++j) {
    const float s = SC[sb + IDS[p.ids_off + t * p.K + j]];
    WTS[p.w_off + t * p.K + j] = (p.norm != 0u ? s / sum : s) * p.scaling;
  }
}

void main() {
  for (uint t = gl_GlobalInvocationID.x; t < p.n; t += gl_NumWorkGroups.x * WG) route(t);
}
