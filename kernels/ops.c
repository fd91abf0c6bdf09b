/* ops.c - backend selection. The CPU backend is linked in; the CUDA backend
 * is a shared-object plugin (libnawal_cuda.so, built by kernels/cuda/ when a
 * CUDA compiler is present) opened with dlopen only when asked for, so one
 * binary runs on hosts with and without a CUDA driver. */
#include "ops.h"
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef int (*cuda_open_fn)(const nawal_ops **out, char *err, size_t errlen);

static int open_cuda(const nawal_ops **out, char *err, size_t errlen) {
    const char *path = "libnawal_cuda.so";
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(err, errlen, "CUDA backend unavailable: cannot load %s (%s)", path, dlerror());
        return -1;
    }
    cuda_open_fn fn = (cuda_open_fn)(uintptr_t)dlsym(h, "nawal_ops_cuda_open");
    if (!fn) {
        snprintf(err, errlen, "CUDA backend unavailable: %s has no nawal_ops_cuda_open", path);
        return -1;
    }
    return fn(out, err, errlen);
}

int nawal_ops_open(const nawal_ops **out, const char *device, char *err, size_t errlen) {
    if (!device || strcmp(device, "auto") == 0) {
        char cuda_err[256];
        if (open_cuda(out, cuda_err, sizeof cuda_err) == 0) return 0;
        *out = nawal_ops_cpu(0);
        return 0;
    }
    if (strcmp(device, "cpu") == 0) { *out = nawal_ops_cpu(0); return 0; }
    if (strcmp(device, "cuda") == 0) return open_cuda(out, err, errlen);
    snprintf(err, errlen, "unknown device '%s' (expected auto, cpu or cuda)", device);
    return -1;
}
