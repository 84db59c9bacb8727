// Shared by every kernel: element loads for each weight dtype, and workgroup reductions.
// Kernels run 64 invocations per workgroup. USE_SUBGROUP (set by the build, one SPIR-V module
// per value) picks subgroup arithmetic for the reductions on devices that support it.
#extension GL_GOOGLE_include_directive : require
#if USE_SUBGROUP
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif

#define WG 64
#define DT_F32 0u
#define DT_BF16 1u
#define DT_FP8 3u

float bf16_to_f32(uint h) { return uintBitsToFloat(h << 16); }

// Round to nearest even, NaN kept quiet (as the CPU backend and the reference do).
uint f32_to_bf16(float f) {
  uint u = floatBitsToUint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

// E4M3 "fn": no infinities, S.1111.111 is NaN, subnormals are m * 2^-9.
float fp8_to_f32(uint b) {
  uint e = (b >> 3) & 15u, m = b & 7u;
  float v;
  if (e == 0u) v = float(m) * (1.0 / 512.0);
  else if (e == 15u && m == 7u) v = uintBitsToFloat(0x7fc00000u);
  else v = uintBitsToFloat(((e + 120u) << 23) | (m << 20));
  return (b & 0x80u) != 0u ? -v : v;
}

// Element `i` of a tensor stored as 32-bit words (dtype-packed).
#define LOAD_ELEM(BUF, dtype, i) \
  ((dtype) == DT_F32 ? uintBitsToFloat(BUF[(i)]) \
   : (dtype) == DT_BF16 ? bf16_to_f32(((i) & 1u) != 0u ? BUF[(i) >> 1] >> 16 : BUF[(i) >> 1] & 0xffffu) \
   : fp8_to_f32((BUF[(i) >> 2] >> (((i) & 3u) * 8u)) & 0xffu))

shared float sh_red[WG];

float combine(float a, float b, bool is_max) { return is_max ? max(a, b) : a + b; }

// The sum or the maximum of v over the workgroup, returned to every invocation.
float wg_reduce(float v, bool is_max) {
#if USE_SUBGROUP
  float s = is_max ? subgroupMax(v) : subgroupAdd(v);
  if (subgroupElect()) sh_red[gl_SubgroupID] = s;
  barrier();
  float t = sh_red[0];
  for (uint i = 1u; i < gl_NumSubgroups; ++i) t = combine(t, sh_red[i], is_max);
  barrier();
  return t;
#else
  uint l = gl_LocalInvocationIndex;
  sh_red[l] = v;
  barrier();
  for (uint s = WG / 2u; s > 0u; s >>= 1) {
    if (l < s) sh_red[l] = combine(sh_red[l], sh_red[l + s], is_max);
    barrier();
  }
  float t = sh_red[0];
  barrier();
  return t;
#endif
}

float wg_sum(float v) { return wg_reduce(v, false); }
float wg_max(float v) { return wg_reduce(v, true); }
