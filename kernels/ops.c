/* ops.c - backend selection. The CPU backend is linked in; the CUDA backend
 * is a shared-object plugin (libnawal_cuda.so, built by kernels/cuda/ when a
 * CUDA compiler is present) opened with dlopen only when asked for, so one
 * binary runs on hosts with and without a CUDA driver.
 *
 * The plugin is looked for in $NAWAL_CUDA_PLUGIN (a path), then beside the
 * running executable, then in ../lib from it, then on the loader's path. */
#include "ops.h"
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*cuda_open_fn)(const nawal_ops **out, char *err, size_t errlen);
typedef int (*cuda_abi_fn)(void);

#define PLUGIN "libnawal_cuda.so"

static void *load_plugin(char *why, size_t whylen) {
    const char *env = getenv("NAWAL_CUDA_PLUGIN");
    if (env && *env) {
        void *h = dlopen(env, RTLD_NOW | RTLD_LOCAL);
        if (!h) snprintf(why, whylen, "%s", dlerror());
        return h;
    }
    char exe[PATH_MAX], path[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        const char *rel[] = { "/" PLUGIN, "/../lib/" PLUGIN };
        for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
            snprintf(path, sizeof path, "%s%s", exe, rel[i]);
            if (access(path, F_OK) != 0) continue;
            void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
            if (!h) snprintf(why, whylen, "%s", dlerror());
            return h; /* found but broken: report that, do not search on */
        }
    }
    void *h = dlopen(PLUGIN, RTLD_NOW | RTLD_LOCAL);
    if (!h) snprintf(why, whylen, "%s", dlerror());
    return h;
}

static int open_cuda(const nawal_ops **out, char *err, size_t errlen) {
    char why[512] = "";
    void *h = load_plugin(why, sizeof why);
    if (!h) {
        snprintf(err, errlen, "CUDA backend unavailable: cannot load %s (%s)", PLUGIN, why);
        return -1;
    }
    cuda_abi_fn abi = (cuda_abi_fn)(uintptr_t)dlsym(h, "nawal_ops_cuda_abi");
    int got = abi ? abi() : 1; /* plugins from before the ABI number had layout 1 */
    if (got != NAWAL_OPS_ABI) {
        snprintf(err, errlen, "CUDA backend unavailable: %s was built for ops ABI %d, this program uses %d (rebuild it)",
                 PLUGIN, got, NAWAL_OPS_ABI);
        return -1;
    }
    cuda_open_fn fn = (cuda_open_fn)(uintptr_t)dlsym(h, "nawal_ops_cuda_open");
    if (!fn) {
        snprintf(err, errlen, "CUDA backend unavailable: %s has no nawal_ops_cuda_open", PLUGIN);
        return -1;
    }
    return fn(out, err, errlen);
}

int nawal_ops_open(const nawal_ops **out, const char *device, char *err, size_t errlen) {
    if (!device || strcmp(device, "auto") == 0) {
        char cuda_err[512];
        if (open_cuda(out, cuda_err, sizeof cuda_err) == 0) return 0;
        *out = nawal_ops_cpu(0);
        return 0;
    }
    if (strcmp(device, "cpu") == 0) { *out = nawal_ops_cpu(0); return 0; }
    if (strcmp(device, "cuda") == 0) return open_cuda(out, err, errlen);
    snprintf(err, errlen, "unknown device '%s' (expected auto, cpu or cuda)", device);
    return -1;
}

static const char *const precision_names[] = { "fp32", "tf32", "bf16" };

int nawal_precision_parse(const char *s, nawal_precision *out) {
    for (int i = 0; i < 3; i++)
        if (s && strcmp(s, precision_names[i]) == 0) { *out = (nawal_precision)i; return 0; }
    return -1;
}

const char *nawal_precision_name(nawal_precision p) {
    return (unsigned)p < 3 ? precision_names[p] : "unknown";
}

int nawal_ops_set_precision_name(const nawal_ops *o, const char *name, char *err, size_t errlen) {
    nawal_precision p;
    if (nawal_precision_parse(name, &p)) {
        snprintf(err, errlen, "unknown precision '%s' (expected fp32, tf32 or bf16)", name ? name : "");
        return -1;
    }
    return o->set_precision(o, p, err, errlen);
}
