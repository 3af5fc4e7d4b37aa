/* A stand-in for the NVIDIA driver's libcuda.so.1, for tests on machines without a GPU: the
 * driver API calls hwnas makes (and cuGetProcAddress, through which cuda-bindings finds them),
 * with fake devices, contexts, modules and functions, recording what each call receives.
 * cuLaunchKernel records the bytes each kernelParams[i] points at, as many as the kernel's
 * parameter i has (the layouts come from the PTX: standin_set_layout). A context is current per
 * thread, as in the real driver. Built by tests/test_cuda_launch.py with the system C compiler. */
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef struct Context* CUcontext;
typedef struct Module* CUmodule;
typedef struct Function* CUfunction;
typedef void* CUstream;

enum { SUCCESS = 0, INVALID_VALUE = 1, NOT_FOUND = 500, DEVICES = 4, MAX_PARAMS = 32 };

struct Context { int device; };
struct Module { int id; struct Context* context; };
struct Function { char name[128]; struct Module* module; };
struct Layout { char name[128]; int count; int sizes[MAX_PARAMS]; };

static struct Context contexts[DEVICES];
static struct Module modules[64];
static int module_count;
static struct Layout layouts[64];
static int layout_count;
static int driver_version = 13000;
static CUresult module_load_result = SUCCESS;
static __thread CUcontext current;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char* log_text;
static size_t log_size, log_capacity;

static void record(const char* format, ...) {
  char line[16384];
  va_list args;
  va_start(args, format);
  int n = vsnprintf(line, sizeof line - 1, format, args);
  va_end(args);
  if (n < 0) return;
  if (n > (int)sizeof line - 2) n = sizeof line - 2;
  line[n++] = '\n';
  pthread_mutex_lock(&lock);
  if (log_size + n + 1 > log_capacity) {
    log_capacity = 2 * (log_size + n + 1);
    log_text = realloc(log_text, log_capacity);
  }
  memcpy(log_text + log_size, line, n);
  log_size += n;
  log_text[log_size] = 0;
  pthread_mutex_unlock(&lock);
}

/* A context's name in the log: ctx<device>, or none. */
static const char* context_name(CUcontext c, char* buffer) {
  if (!c) return "none";
  snprintf(buffer, 16, "ctx%d", c->device);
  return buffer;
}

/* ---- the test's controls ---- */

const char* standin_log(void) { return log_text ? log_text : ""; }
void standin_set_driver_version(int version) { driver_version = version; }
void standin_set_module_load_result(int result) { module_load_result = result; }
void standin_set_layout(const char* function, int count, const int* sizes) {
  struct Layout* l = &layouts[layout_count++];
  snprintf(l->name, sizeof l->name, "%s", function);
  l->count = count < MAX_PARAMS ? count : MAX_PARAMS;
  memcpy(l->sizes, sizes, l->count * sizeof(int));
}

/* ---- the driver API ---- */

CUresult cuInit(unsigned flags) {
  record("cuInit flags=%u", flags);
  return SUCCESS;
}

CUresult cuDriverGetVersion(int* version) {
  *version = driver_version;
  record("cuDriverGetVersion -> %d", driver_version);
  return SUCCESS;
}

CUresult cuDeviceGetCount(int* count) {
  *count = DEVICES;
  return SUCCESS;
}

CUresult cuDeviceGet(CUdevice* device, int ordinal) {
  if (ordinal < 0 || ordinal >= DEVICES) return INVALID_VALUE;
  *device = ordinal;
  record("cuDeviceGet ordinal=%d", ordinal);
  return SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext* context, CUdevice device) {
  if (device < 0 || device >= DEVICES) return INVALID_VALUE;
  contexts[device].device = device;
  *context = &contexts[device];
  record("cuDevicePrimaryCtxRetain device=%d", device);
  return SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext* context) {
  char name[16];
  *context = current;
  record("cuCtxGetCurrent -> %s", context_name(current, name));
  return SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext context) {
  char name[16];
  current = context;
  record("cuCtxSetCurrent %s", context_name(context, name));
  return SUCCESS;
}

CUresult cuModuleLoadData(CUmodule* module, const void* image) {
  char name[16], head[41];
  snprintf(head, sizeof head, "%s", (const char*)image);  /* the tests pass text images */
  record("cuModuleLoadData current=%s image=%s -> %d", context_name(current, name), head,
         module_load_result == SUCCESS ? module_count : -1);
  if (module_load_result != SUCCESS) return module_load_result;
  if (module_count == 64) return INVALID_VALUE;
  struct Module* m = &modules[module_count];
  m->id = module_count++;
  m->context = current;
  *module = m;
  return SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction* function, CUmodule module, const char* name) {
  struct Function* f = calloc(1, sizeof *f);
  snprintf(f->name, sizeof f->name, "%s", name);
  f->module = module;
  *function = f;
  record("cuModuleGetFunction module=%d name=%s", module->id, name);
  return SUCCESS;
}

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, CUstream stream, void** params, void** extra) {
  char current_name[16], module_name[16];
  char values[12000] = "";
  size_t at = 0;
  const struct Layout* layout = NULL;
  for (int i = 0; i < layout_count; ++i)
    if (strcmp(layouts[i].name, f->name) == 0) layout = &layouts[i];
  if (!layout) {
    snprintf(values, sizeof values, "unknown");
  } else if (!params) {
    snprintf(values, sizeof values, "null");
  } else {
    for (int i = 0; i < layout->count; ++i) {
      const unsigned char* p = params[i];
      if (i) values[at++] = ',';
      for (int b = 0; b < layout->sizes[i] && at + 3 < sizeof values; ++b) at += sprintf(values + at, "%02x", p[b]);
    }
  }
  record("cuLaunchKernel function=%s module_context=%s current=%s grid=%u,%u,%u block=%u,%u,%u shared=%u "
         "stream=%llu extra=%llu params=%s",
         f->name, context_name(f->module->context, module_name), context_name(current, current_name), gx, gy, gz,
         bx, by, bz, shared, (unsigned long long)(uintptr_t)stream, (unsigned long long)(uintptr_t)extra, values);
  return SUCCESS;
}

CUresult cuGetErrorName(CUresult error, const char** text) {
  *text = error == SUCCESS ? "CUDA_SUCCESS" : "CUDA_ERROR_STANDIN";
  return SUCCESS;
}

CUresult cuGetErrorString(CUresult error, const char** text) { return cuGetErrorName(error, text); }

/* ---- how cuda-bindings finds the functions above ---- */

#define ENTRY(f) { #f, (void*)f }
static const struct { const char* name; void* function; } ENTRIES[] = {
    ENTRY(cuInit), ENTRY(cuDriverGetVersion), ENTRY(cuDeviceGetCount), ENTRY(cuDeviceGet),
    ENTRY(cuDevicePrimaryCtxRetain), ENTRY(cuCtxGetCurrent), ENTRY(cuCtxSetCurrent), ENTRY(cuModuleLoadData),
    ENTRY(cuModuleGetFunction), ENTRY(cuLaunchKernel), ENTRY(cuGetErrorName), ENTRY(cuGetErrorString),
};

CUresult cuGetProcAddress_v2(const char* symbol, void** function, int version, uint64_t flags, int* status) {
  for (size_t i = 0; i < sizeof ENTRIES / sizeof ENTRIES[0]; ++i) {
    if (strcmp(ENTRIES[i].name, symbol) == 0) {
      *function = ENTRIES[i].function;
      if (status) *status = 0; /* CU_GET_PROC_ADDRESS_SUCCESS */
      record("cuGetProcAddress %s version=%d flags=%llu", symbol, version, (unsigned long long)flags);
      return SUCCESS;
    }
  }
  *function = NULL;
  if (status) *status = 1; /* CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND */
  return NOT_FOUND;
}

CUresult cuGetProcAddress(const char* symbol, void** function, int version, uint64_t flags) {
  return cuGetProcAddress_v2(symbol, function, version, flags, NULL);
}
