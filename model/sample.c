/* sample.c - see sample.h. No KV cache: each new token reruns the forward
 * over the (cropped) context; fine for the small models sampled on CPU. */
#include "sample.h"
#include "philox.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

long nawal_gpt_sample(nawal_gpt *m, const int32_t *prompt, size_t n_prompt, int n_new, float temperature,
                      int top_k, uint64_t seed, int stop_token, int32_t *out, char *err, size_t errlen) {
    int V = m->cfg.vocab, Tmax = m->cfg.n_ctx;
    if (n_prompt < 1) { snprintf(err, errlen, "the prompt must hold at least one token"); return -1; }
    float *logits = malloc((size_t)V * sizeof(float));
    float *sorted = malloc((size_t)V * sizeof(float));
    if (!logits || !sorted) { free(logits); free(sorted); snprintf(err, errlen, "out of memory"); return -1; }
    memcpy(out, prompt, n_prompt * sizeof(int32_t));
    size_t n = n_prompt;
    long rc = -1;
    for (int i = 0; i < n_new; i++) {
        size_t T = n < (size_t)Tmax ? n : (size_t)Tmax;
        const int32_t *ctx = out + (n - T);
        if (isnan(nawal_gpt_forward(m, ctx, NULL, 1, (int)T, 0, NULL, err, errlen))) goto done;
        m->ops->download(m->ops, logits, nawal_gpt_logits(m) + (T - 1) * (size_t)V, (size_t)V * sizeof(float));
        int next = 0;
        if (temperature <= 0.0f) {
            for (int v = 1; v < V; v++) if (logits[v] > logits[next]) next = v;
        } else {
            float cutoff = -INFINITY;
            if (top_k > 0 && top_k < V) {
                memcpy(sorted, logits, (size_t)V * sizeof(float));
                /* partial selection of the k-th largest */
                for (int a = 0; a < top_k; a++) {
                    int best = a;
                    for (int b = a + 1; b < V; b++) if (sorted[b] > sorted[best]) best = b;
                    float t = sorted[a]; sorted[a] = sorted[best]; sorted[best] = t;
                }
                cutoff = sorted[top_k - 1];
            }
            float mx = -INFINITY;
            for (int v = 0; v < V; v++) if (logits[v] > mx) mx = logits[v];
            double sum = 0.0;
            for (int v = 0; v < V; v++) {
                double p = logits[v] >= cutoff ? exp((logits[v] - mx) / temperature) : 0.0;
                logits[v] = (float)p;
                sum += p;
            }
            nawal_philox_ctr r = nawal_philox4x32(seed, 0x73616d706c65ull, (uint64_t)i);
            double u = ((double)r.v[0] * 4294967296.0 + r.v[1]) / 18446744073709551616.0 * sum, acc = 0.0;
            next = V - 1;
            for (int v = 0; v < V; v++) {
                acc += logits[v];
                if (u < acc && logits[v] > 0) { next = v; break; }
            }
        }
        if (next == stop_token) break;
        out[n++] = next;
    }
    rc = (long)n;
done:
    free(logits);
    free(sorted);
    return rc;
}
