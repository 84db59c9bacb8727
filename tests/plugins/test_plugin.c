/*
 * Deliberately broken (and one flaky) backend plugins for the loader's tests, one library per
 * PLUGIN_KIND. Each is what a real mistake looks like from the host's side.
 */
#include <stdio.h>
#include <string.h>

#include "coda_backend.h"

#define KIND_FUTURE 1     /* built for a newer ABI version */
#define KIND_ANCIENT 2    /* built for an older ABI version */
#define KIND_NOENTRY 3    /* exports a differently named entry point */
#define KIND_NULL 4       /* the entry point returns no table */
#define KIND_SMALL 5      /* a table smaller than the required functions */
#define KIND_PARTIAL 6    /* half of the buffer functions */
#define KIND_NOEXEC 7     /* a required function missing */
#define KIND_FAILCREATE 8 /* create() fails (no device) */
#define KIND_FLAKY 9      /* runs Add, but fails from layer 1 on: an error mid-graph */
#define KIND_WRONG 10     /* runs Add, slightly wrong: the conformance suite must notice */
#define KIND_NOTERM 11    /* create() fills the whole error buffer, no terminator */
#define KIND_DEVICES 12   /* device_count() claims four billion devices */
#define KIND_NODEVICE 13  /* create() says this machine has nothing to run on (UNSUPPORTED) */

#ifndef PLUGIN_KIND
#error "define PLUGIN_KIND"
#endif
#ifndef PLUGIN_NAME
#error "define PLUGIN_NAME"
#endif

static int instance_tag;

static coda_status_code plugin_create(const coda_host* host, const coda_backend_options* options, void** self,
                                      char* error, size_t error_size) {
  (void)host;
  (void)options;
#if PLUGIN_KIND == KIND_FAILCREATE
  (void)self;
  snprintf(error, error_size, "no compatible device found");
  return CODA_STATUS_DEVICE_ERROR;
#elif PLUGIN_KIND == KIND_NODEVICE
  (void)self;
  snprintf(error, error_size, "no GPU on this machine");
  return CODA_STATUS_UNSUPPORTED;
#elif PLUGIN_KIND == KIND_NOTERM
  (void)self;
  memset(error, 'x', error_size);
  return CODA_STATUS_DEVICE_ERROR;
#else
  (void)error;
  (void)error_size;
  *self = &instance_tag;
  return CODA_STATUS_OK;
#endif
}

static void plugin_destroy(void* self) { (void)(self == &instance_tag); }
static const char* plugin_describe(void* self) {
  (void)self;
  return "test plugin " PLUGIN_NAME;
}

static int plugin_supports_op(void* self, const coda_op* op) {
  (void)self;
  return op->type == CODA_OP_ADD;
}

#if PLUGIN_KIND != KIND_NOEXEC
static coda_status_code plugin_execute(void* self, const coda_op* op, char* error, size_t error_size) {
  uint64_t i, count;
  const float *a, *b;
  float* y;
  (void)self;
  if (op->type != CODA_OP_ADD || op->n_inputs != 2 || op->n_outputs != 1) {
    snprintf(error, error_size, "only Add is supported");
    return CODA_STATUS_UNSUPPORTED;
  }
  if (op->layer >= 1) {
    snprintf(error, error_size, "simulated device fault in layer %d", op->layer);
    return CODA_STATUS_DEVICE_ERROR;
  }
  a = (const float*)op->inputs[0].data;
  b = (const float*)op->inputs[1].data;
  y = (float*)op->outputs[0].data;
  count = op->inputs[0].shape[0] * op->inputs[0].shape[1];
#if PLUGIN_KIND == KIND_WRONG
  for (i = 0; i < count; ++i) y[i] = a[i] + b[i] * 1.001f;
#else
  for (i = 0; i < count; ++i) y[i] = a[i] + b[i];
#endif
  return CODA_STATUS_OK;
}
#endif

#if PLUGIN_KIND == KIND_DEVICES
static uint32_t plugin_device_count(void* self) {
  (void)self;
  return 0xffffffffu;
}
static coda_status_code plugin_device_info(void* self, uint32_t device, coda_device_info* info, char* error,
                                           size_t error_size) {
  (void)self;
  (void)error;
  (void)error_size;
  snprintf(info->name, sizeof info->name, "device %u", device);
  info->kind = CODA_DEVICE_GPU;
  return CODA_STATUS_OK;
}
#endif

#if PLUGIN_KIND == KIND_PARTIAL
static coda_status_code plugin_buffer_alloc(void* self, uint64_t size, coda_buffer* buffer, char* error,
                                            size_t error_size) {
  (void)self;
  (void)size;
  (void)buffer;
  snprintf(error, error_size, "never called");
  return CODA_STATUS_UNSUPPORTED;
}
#endif

static const coda_backend_api plugin_api = {
#if PLUGIN_KIND == KIND_SMALL
    16,
#else
    sizeof(coda_backend_api),
#endif
#if PLUGIN_KIND == KIND_FUTURE
    CODA_BACKEND_ABI_VERSION + 1,
#elif PLUGIN_KIND == KIND_ANCIENT
    0,
#else
    CODA_BACKEND_ABI_VERSION,
#endif
    PLUGIN_NAME,
    "0.0.1",
    plugin_create,
    plugin_destroy,
    plugin_describe,
    plugin_supports_op,
#if PLUGIN_KIND == KIND_NOEXEC
    NULL,
#else
    plugin_execute,
#endif
#if PLUGIN_KIND == KIND_DEVICES
    plugin_device_count, plugin_device_info,
#else
    NULL, NULL, /* devices */
#endif
    NULL, NULL, /* prepare, release */
    NULL,       /* synchronize */
#if PLUGIN_KIND == KIND_PARTIAL
    plugin_buffer_alloc,
#else
    NULL,
#endif
    NULL, NULL, NULL, NULL, /* the rest of the buffer functions */
    NULL, NULL, NULL, NULL, /* events */
    NULL, NULL              /* steps */
};

#if PLUGIN_KIND == KIND_NOENTRY
CODA_BACKEND_EXPORT const coda_backend_api* coda_backend_entry_v0(uint32_t host_abi_version) {
  (void)host_abi_version;
  return &plugin_api;
}
#else
CODA_BACKEND_EXPORT const coda_backend_api* coda_backend_entry(uint32_t host_abi_version) {
  (void)host_abi_version;
#if PLUGIN_KIND == KIND_NULL
  return host_abi_version == 12345 ? &plugin_api : NULL; /* never: the table exists but is withheld */
#else
  return &plugin_api;
#endif
}
#endif
