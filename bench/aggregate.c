/* aggregate.c - nawal-bench aggregate: how fast the coordinator's FedAvg
 * (coordinator/aggregate.h) turns dense deltas on disk into a new model,
 * next to the same machine's memcpy measured in the same run.
 *
 * Writes --clients random deltas of --params floats (K/M/G suffixes are
 * powers of ten: 124M = 124e6 floats, 496 MB per delta) and a base model as
 * safetensors files into a fresh directory under --dir, checking free
 * space first (fewer clients, then fewer parameters, with a message, when
 * they do not fit). The files are read back through the page cache as
 * written (warm: the deltas a coordinator aggregates have just arrived), or
 * with --cold after asking the kernel to drop them (posix_fadvise
 * DONTNEED), so the disk is read too. The aggregator views the files'
 * mappings in place (its default) or, with --copy, reads them with pread.
 *
 * Each repeat measures memcpy (512 MiB buffers, on 1 thread and on the
 * aggregator's threads, median of 3; this machine's memory speed drifts,
 * so it is measured next to every FedAvg run), then runs the FedAvg
 * aggregator exactly as a round does (header checks, one pass reading
 * every delta, checking and combining it) and writes the new model into a
 * blob store (hashing and fsync'ing it). Reported, medians over --repeats:
 *   fedavg_gbps     delta bytes / time from begin to the end of finish
 *                   (every delta read, checked and combined)
 *   end_to_end_gbps delta bytes / time including the new model written
 *   memcpy_gbps     bytes copied / time
 *   fedavg_vs_memcpy against the faster of the two memcpy figures.
 * With --codec RATIO the same deltas are also encoded as codec frames
 * (proto/delta_codec.h: top-k at RATIO, fp16, error feedback off; RATIO 1
 * = dense fp16 frames) and each repeat also times FedAvg over the frames,
 * reported as codec_fedavg_gbps in dense-equivalent bytes (clients x
 * params x 4 per second, the figure to set against fedavg_gbps). */
#include "timing.h"
#include "aggregate_bench.h"
#include "aggregate.h"
#include "cli.h"
#include "delta_codec.h"
#include "error.h"
#include "ops.h"
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define TENSOR_FLOATS ((size_t)1 << 22) /* the generated models' tensors: 4 Mi floats (16 MiB) each */
#define MEMCPY_BYTES ((size_t)512 << 20)
#define MAX_REPEATS 16

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

/* buf[0..count) = the next values of stream x, scale sc */
static void fill_random(float *buf, size_t count, uint64_t *x, float sc) {
    for (size_t i = 0; i < count; i++) {
        *x ^= *x << 13; *x ^= *x >> 7; *x ^= *x << 17;
        buf[i] = sc * ((float)(int32_t)(uint32_t)(*x >> 32) * (1.0f / 2147483648.0f));
    }
}

/* A model of n floats as safetensors: tensors "t0", "t1", … of TENSOR_FLOATS
 * (the last shorter), values small pseudo-random (scale sc, stream seed). */
static int write_model(const char *path, uint64_t n, uint64_t seed, float sc, float *buf, char *err, size_t errlen) {
    size_t nt = (size_t)((n + TENSOR_FLOATS - 1) / TENSOR_FLOATS);
    nawal_st_tensor *ts = calloc(nt, sizeof *ts);
    char (*names)[16] = calloc(nt, sizeof *names);
    uint8_t *head = NULL;
    size_t head_len = 0;
    int rc = !ts || !names ? nawal_fail(err, errlen, "out of memory") : 0;
    for (size_t t = 0; rc == 0 && t < nt; t++) {
        uint64_t numel = t + 1 < nt ? TENSOR_FLOATS : n - (uint64_t)t * TENSOR_FLOATS;
        snprintf(names[t], sizeof names[t], "t%zu", t);
        ts[t] = (nawal_st_tensor){.name = names[t], .dtype = NAWAL_ST_F32, .ndim = 1, .shape = {(int64_t)numel},
                                  .nbytes = (size_t)numel * sizeof(float)};
    }
    if (rc == 0) rc = nawal_st_encode_header(ts, nt, NULL, &head, &head_len, err, errlen);
    int fd = rc == 0 ? open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
    if (rc == 0 && fd < 0) rc = nawal_fail(err, errlen, "%s: %s", path, strerror(errno));
    if (rc == 0 && write(fd, head, head_len) != (ssize_t)head_len) rc = nawal_fail(err, errlen, "%s: write failed", path);
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t t = 0; rc == 0 && t < nt; t++) {
        fill_random(buf, ts[t].nbytes / sizeof(float), &x, sc);
        const uint8_t *p = (const uint8_t *)buf;
        size_t left = ts[t].nbytes;
        while (rc == 0 && left) {
            ssize_t w = write(fd, p, left);
            if (w <= 0) rc = nawal_fail(err, errlen, "%s: write failed: %s", path, strerror(errno));
            else { p += w; left -= (size_t)w; }
        }
    }
    if (fd >= 0 && rc == 0 && fsync(fd)) rc = nawal_fail(err, errlen, "%s: fsync failed", path);
    if (fd >= 0) close(fd);
    free(head);
    free(names);
    free(ts);
    return rc;
}

/* The same delta as write_model(n, seed, sc) (its flat vector: flat[] holds n
 * floats) as a codec frame at ratio, fp16. */
static int write_frame(const char *path, uint64_t n, uint64_t seed, float sc, float ratio, float *flat, size_t *bytes,
                       char *err, size_t errlen) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    fill_random(flat, (size_t)n, &x, sc);
    nawal_delta_params p;
    nawal_delta_params_default(&p);
    p.ratio = ratio;
    uint8_t *fr = NULL;
    size_t len = 0;
    if (nawal_delta_encode(nawal_ops_cpu(0), &p, flat, NULL, (size_t)n, &fr, &len, err, errlen)) return -1;
    FILE *f = fopen(path, "wb");
    int rc = f && fwrite(fr, 1, len, f) == len ? 0 : nawal_fail(err, errlen, "%s: write failed", path);
    if (f && fclose(f)) rc = nawal_fail(err, errlen, "%s: write failed", path);
    free(fr);
    *bytes = len;
    return rc;
}

static void drop_cache(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

/* GB/s of memcpy over MEMCPY_BYTES on `threads` threads (each its slice), median of reps
 * after one untimed copy. */
static double bench_memcpy(uint8_t *dst, const uint8_t *src, int threads, int reps) {
    double t[MAX_REPEATS];
    for (int r = -1; r < reps; r++) {
        double t0 = bench_now_s();
        #pragma omp parallel num_threads(threads)
        {
            int k = omp_get_thread_num(), n = omp_get_num_threads();
            size_t lo = MEMCPY_BYTES / (size_t)n * (size_t)k, hi = k == n - 1 ? MEMCPY_BYTES : MEMCPY_BYTES / (size_t)n * (size_t)(k + 1);
            memcpy(dst + lo, src + lo, hi - lo);
        }
        if (r >= 0) t[r] = bench_now_s() - t0;
    }
    return MEMCPY_BYTES / bench_median(t, reps) * 1e-9;
}

static int sink_fn(void *ctx, const void *buf, size_t len, char *err, size_t errlen) {
    return nawal_blobstore_writer_write(ctx, buf, len, err, errlen);
}

/* One aggregation of all deltas: *agg_s from begin to the end of finish
 * (every delta read, checked and combined), *total_s also writing the new
 * model into the blob store. */
static int run_once(nawal_store *s, const char *base_path, char (*paths)[4200], int clients, const nawal_fedavg_options *o,
                    const char *strategy, const char *spill_dir, double *agg_s, double *total_s, char *err,
                    size_t errlen) {
    nawal_aggregator *a = NULL;
    nawal_tensor_source *base = NULL;
    nawal_blob_writer *w = NULL;
    double t0 = bench_now_s(), t1 = 0;
    int rc = strategy ? nawal_aggregator_create(&a, strategy, o->threads, spill_dir, err, errlen)
                      : nawal_fedavg_create(&a, o, err, errlen);
    if (rc == 0) rc = nawal_tensor_source_open_file(&base, base_path, err, errlen);
    if (rc == 0) rc = a->begin(a, base, err, errlen);
    for (int i = 0; rc == 0 && i < clients; i++) {
        nawal_tensor_source *d;
        nawal_delta_frame *fr;
        if ((rc = nawal_update_open_file(&d, &fr, paths[i], err, errlen))) break;
        rc = fr ? a->add_frame(a, fr, 1000 + (uint64_t)i * 37, err, errlen) : a->add(a, d, 1000 + (uint64_t)i * 37, err, errlen);
    }
    if (rc == 0) rc = a->finish(a, err, errlen);
    t1 = bench_now_s();
    for (int i = 0; rc == 0 && !strategy && i < clients; i++) /* FedAvg uses every delta; Krum drops some */
        if (a->verdict(a, (size_t)i, err, errlen)) rc = -1;
    if (rc == 0) rc = nawal_blobstore_writer_open(s, &w, err, errlen);
    if (rc == 0) rc = a->write(a, sink_fn, w, err, errlen);
    uint8_t cid[32];
    if (rc == 0) {
        rc = nawal_blobstore_writer_commit(w, cid, NULL, err, errlen);
        w = NULL;
    }
    double t2 = bench_now_s();
    nawal_blobstore_writer_abort(w);
    nawal_aggregator_destroy(a);
    nawal_tensor_source_close(base);
    *agg_s = t1 - t0;
    *total_s = t2 - t0;
    return rc ? -1 : 0;
}

int bench_aggregate(int argc, char **argv) {
    const char *params_s = "124M", *device = "cpu", *tmp = getenv("TMPDIR"), *strategy = "fedavg";
    int clients = 16, threads = 0, repeats = 3, cold = 0, keep = 0, copy = 0;
    float codec = 0;
    char err0[512];
    if (!tmp || !*tmp) tmp = "/tmp";
    nawal_flag flags[] = {
        {"params", NAWAL_FLAG_STR, &params_s, "floats per delta (K/M/G = 1e3/1e6/1e9)", 1, 0, 0, 0},
        {"clients", NAWAL_FLAG_INT, &clients, "deltas to aggregate", 1, 100000, 0, 0},
        {"device", NAWAL_FLAG_STR, &device, "cpu (GPU aggregation comes later)", 1, 0, 0, 0},
        {"threads", NAWAL_FLAG_INT, &threads, "threads (0 = all cores)", 0, 4096, 0, 0},
        {"repeats", NAWAL_FLAG_INT, &repeats, "timed repeats (median reported)", 1, MAX_REPEATS, 0, 0},
        {"dir", NAWAL_FLAG_STR, &tmp, "where to write the delta files (default $TMPDIR or /tmp)", 1, 0, 0, 0},
        {"cold", NAWAL_FLAG_BOOL, &cold, "drop the files from the page cache before each repeat (read the disk)", 1, 0, 0, 0},
        {"keep", NAWAL_FLAG_BOOL, &keep, "keep the generated files", 1, 0, 0, 0},
        {"copy", NAWAL_FLAG_BOOL, &copy, "read the deltas with pread (a copy) instead of viewing their mappings", 1, 0, 0, 0},
        {"codec", NAWAL_FLAG_FLOAT, &codec, "also time FedAvg over codec frames of the deltas, top-k at this ratio (1 = dense fp16)", 1e-9, 1, 0, 0},
        {"strategy", NAWAL_FLAG_STR, &strategy, "also time this rule (median, trimmed-mean[:T], krum[:F[:M]]) after FedAvg in every repeat (dense deltas, mapped views)", 1, 0, 0, 0},
    };
    int pr = nawal_flags_parse(argc, argv, flags, sizeof flags / sizeof *flags,
                               "usage: nawal-bench aggregate [--params 124M] [--clients 16] [--device cpu] [--threads N] "
                               "[--codec RATIO] [--strategy RULE]");
    if (pr) return pr == 1 ? 0 : 2;
    if (nawal_aggregator_known(strategy, err0, sizeof err0)) {
        fprintf(stderr, "error: --strategy: %s\n", err0);
        return 2;
    }
    const char *rule = strcmp(strategy, "fedavg") ? strategy : NULL; /* timed besides FedAvg */
    uint64_t n;
    if (bench_parse_count(params_s, &n)) {
        fprintf(stderr, "error: --params: '%s' is not a count like 124M (1 .. 4G floats)\n", params_s);
        return 2;
    }
    if (strcmp(device, "cpu")) {
        fprintf(stderr, "error: --device %s: aggregation runs on the CPU for now (GPU reductions come in a later issue)\n", device);
        return 2;
    }
    int nthreads = threads > 0 ? threads : omp_get_max_threads();

    /* room for the deltas, the base and the new model, with 5% to spare */
    struct statvfs vfs;
    if (statvfs(tmp, &vfs)) {
        fprintf(stderr, "error: %s: %s\n", tmp, strerror(errno));
        return 1;
    }
    double avail = (double)vfs.f_bavail * vfs.f_frsize, need;
    int want_clients = clients;
    uint64_t want_n = n;
    while ((need = 1.05 * (clients + 2) * (double)n * 4) > avail) {
        if (clients > 2) clients--;
        else if (n > 1000000) n /= 2;
        else break;
    }
    if (need > avail) {
        fprintf(stderr, "error: %s has %.1f GB free, not enough for even 2 deltas of %llu floats\n", tmp, avail * 1e-9,
                (unsigned long long)n);
        return 1;
    }
    if (clients != want_clients || n != want_n)
        printf("note: %s has %.1f GB free: running %d clients x %llu floats instead of %d x %llu\n", tmp, avail * 1e-9,
               clients, (unsigned long long)n, want_clients, (unsigned long long)want_n);

    char root[4096], store_dir[4200], base_path[4200], err[512];
    snprintf(root, sizeof root, "%s/nawal-bench-agg.XXXXXX", tmp);
    if (!mkdtemp(root)) {
        fprintf(stderr, "error: %s: cannot create a directory: %s\n", tmp, strerror(errno));
        return 1;
    }
    snprintf(store_dir, sizeof store_dir, "%s/store", root);
    snprintf(base_path, sizeof base_path, "%s/base.safetensors", root);
    char (*paths)[4200] = calloc((size_t)clients, sizeof *paths), (*fpaths)[4200] = calloc((size_t)clients, sizeof *fpaths);
    float *buf = malloc(TENSOR_FLOATS * sizeof(float));
    uint8_t *m1 = NULL, *m2 = NULL;
    nawal_store *s = NULL;
    int rc = !paths || !fpaths || !buf ? nawal_fail(err, sizeof err, "out of memory") : 0;
    double delta_bytes = (double)clients * (double)n * 4;
    printf("aggregate: %d deltas x %llu floats (%.1f MB each, %.2f GB in all) in %s, %d threads, %s page cache, %s\n",
           clients, (unsigned long long)n, n * 4e-6, delta_bytes * 1e-9, root, nthreads, cold ? "cold (dropped)" : "warm",
           copy ? "pread copies" : "mapped views");
    fflush(stdout);
    double tw = bench_now_s();
    if (rc == 0) rc = write_model(base_path, n, 999, 1.0f, buf, err, sizeof err);
    for (int i = 0; rc == 0 && i < clients; i++) {
        snprintf(paths[i], sizeof paths[i], "%s/delta%03d.safetensors", root, i);
        rc = write_model(paths[i], n, (uint64_t)i + 1, 1e-3f, buf, err, sizeof err);
    }
    if (rc == 0) printf("wrote the files in %.1f s\n", bench_now_s() - tw);
    double frame_bytes = 0;
    if (rc == 0 && codec > 0) {
        tw = bench_now_s();
        float *flat = malloc((size_t)n * sizeof(float));
        if (!flat) rc = nawal_fail(err, sizeof err, "out of memory for a %llu-float delta", (unsigned long long)n);
        for (int i = 0; rc == 0 && i < clients; i++) {
            size_t len = 0;
            snprintf(fpaths[i], sizeof fpaths[i], "%s/delta%03d.nwdc", root, i);
            rc = write_frame(fpaths[i], n, (uint64_t)i + 1, 1e-3f, codec, flat, &len, err, sizeof err);
            frame_bytes += (double)len;
        }
        free(flat);
        if (rc == 0)
            printf("codec frames: ratio %g fp16, %.1f MB in all (%.1fx smaller than dense fp32), encoded in %.1f s\n",
                   (double)codec, frame_bytes * 1e-6, delta_bytes / frame_bytes, bench_now_s() - tw);
    }
    if (rc == 0) rc = nawal_store_init(store_dir, err, sizeof err);
    if (rc == 0) rc = nawal_store_open(&s, store_dir, 0, err, sizeof err);

    /* memcpy baseline in the same run: measured right before each FedAvg repeat (this machine's
     * memory speed drifts), on 1 thread and on the aggregator's threads */
    if (rc == 0) {
        m1 = malloc(MEMCPY_BYTES);
        m2 = malloc(MEMCPY_BYTES);
        if (!m1 || !m2) rc = nawal_fail(err, sizeof err, "out of memory for the memcpy buffers");
        else {
            memset(m1, 1, MEMCPY_BYTES);
            memset(m2, 2, MEMCPY_BYTES);
        }
    }
    nawal_fedavg_options o = {threads, 0, copy, 0};
    double agg[MAX_REPEATS], tot[MAX_REPEATS], mc1[MAX_REPEATS], mcn[MAX_REPEATS], cagg[MAX_REPEATS], ctot[MAX_REPEATS];
    double ragg[MAX_REPEATS], rtot[MAX_REPEATS];
    for (int r = 0; rc == 0 && r < repeats; r++) {
        mc1[r] = bench_memcpy(m2, m1, 1, 3);
        mcn[r] = bench_memcpy(m2, m1, nthreads, 3);
        if (cold) {
            drop_cache(base_path);
            for (int i = 0; i < clients; i++) drop_cache(paths[i]);
        }
        if ((rc = run_once(s, base_path, paths, clients, &o, NULL, NULL, &agg[r], &tot[r], err, sizeof err))) break;
        printf("repeat %d: memcpy %.2f GB/s (1 thread) %.2f GB/s (%d); fedavg %.2f GB/s (%.2f s), with the new model "
               "written %.2f GB/s (%.2f s)\n", r + 1, mc1[r], mcn[r], nthreads, delta_bytes / agg[r] * 1e-9, agg[r],
               delta_bytes / tot[r] * 1e-9, tot[r]);
        if (codec > 0) {
            if (cold)
                for (int i = 0; i < clients; i++) drop_cache(fpaths[i]);
            if ((rc = run_once(s, base_path, fpaths, clients, &o, NULL, NULL, &cagg[r], &ctot[r], err, sizeof err))) break;
            printf("repeat %d: codec fedavg %.2f GB/s dense-equivalent (%.3f s), with the new model written %.2f GB/s "
                   "(%.2f s)\n", r + 1, delta_bytes / cagg[r] * 1e-9, cagg[r], delta_bytes / ctot[r] * 1e-9, ctot[r]);
        }
        if (rule) {
            if (cold) {
                drop_cache(base_path);
                for (int i = 0; i < clients; i++) drop_cache(paths[i]);
            }
            if ((rc = run_once(s, base_path, paths, clients, &o, rule, root, &ragg[r], &rtot[r], err, sizeof err))) break;
            printf("repeat %d: %s %.2f GB/s (%.2f s, %.2fx FedAvg's time)\n", r + 1, rule, delta_bytes / ragg[r] * 1e-9,
                   ragg[r], ragg[r] / agg[r]);
        }
        fflush(stdout);
    }
    free(m1);
    free(m2);
    if (rc == 0 && rule) {
        double ratio[MAX_REPEATS];
        for (int r = 0; r < repeats; r++) ratio[r] = ragg[r] / agg[r];
        printf("%s_gbps %.2f  %s_vs_fedavg_time %.2f  (median of %d; the rule's time over FedAvg's, same repeat)\n", rule,
               delta_bytes / bench_median(ragg, repeats) * 1e-9, rule, bench_median(ratio, repeats), repeats);
    }
    if (rc == 0) {
        double a = delta_bytes / bench_median(agg, repeats) * 1e-9, t = delta_bytes / bench_median(tot, repeats) * 1e-9;
        double c1 = bench_median(mc1, repeats), cn = bench_median(mcn, repeats), mc = nthreads > 1 && cn > c1 ? cn : c1;
        if (nthreads > 1)
            printf("memcpy_gbps_1t %.2f  memcpy_gbps_%dt %.2f  (512 MiB buffers, median over the repeats)\n", c1, nthreads, cn);
        else printf("memcpy_gbps_1t %.2f  (512 MiB buffers, median over the repeats)\n", c1);
        printf("fedavg_gbps %.2f  end_to_end_gbps %.2f  (median of %d; delta bytes read per second)\n", a, t, repeats);
        printf("fedavg_vs_memcpy %.2f  end_to_end_vs_memcpy %.2f  (goal >= 0.7; against the faster memcpy, %.2f GB/s)\n",
               a / mc, t / mc, mc);
        if (codec > 0) {
            double ca = delta_bytes / bench_median(cagg, repeats) * 1e-9, ct = delta_bytes / bench_median(ctot, repeats) * 1e-9;
            printf("codec_fedavg_gbps %.2f  codec_end_to_end_gbps %.2f  (median of %d; dense-equivalent bytes per second, "
                   "ratio %g; %.2f GB/s of frame bytes; %.2fx dense fedavg)\n", ca, ct, repeats, (double)codec,
                   frame_bytes / bench_median(cagg, repeats) * 1e-9, ca / a);
        }
    }
    nawal_store_close(s);
    free(buf);
    free(paths);
    free(fpaths);
    if (!keep) nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    else printf("kept %s\n", root);
    if (rc) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    return 0;
}
