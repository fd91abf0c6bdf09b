/* graph.cu - CUDA graphs: capture and replay of the backend's stream
 * (ops.h capture_begin / capture_end / graph_launch / graph_free).
 *
 * The model (nawal_gpt_forward_backward) captures a training step's
 * forward and backward once the same shapes have run uncaptured, so every
 * matmul plan, scratch size and attention pointer array already exists and
 * the captured ops call none of cudaMalloc, the plan tuner's event syncs
 * or a stream sync; it then replays the step with one launch instead of
 * one per kernel, which is what bounds a small model's step. A graph holds
 * the raw pointers it was captured with, into the backend's scratch and
 * pointer-array buffers too: whenever either is reallocated the state's
 * generation moves on and graph_launch refuses older graphs, so the caller
 * captures again instead of replaying into freed memory. Kernel arguments
 * are baked in: the model keys a graph on what its ops take by value
 * (shapes, the loss scale 1 / valid targets, the precision).
 * One stream and a process-wide capturing flag: only the thread that drives
 * the backend may call ops during a capture (as everywhere in this backend). */
#include "cuda_common.h"
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    cudaGraphExec_t exec;
    unsigned long long generation; /* cuda_state's at capture */
} cuda_graph;

int cuda_capture_begin(const nawal_ops *o) {
    cuda_state *s = CUDA_STATE(o);
    /* thread-local: only this thread's unsafe calls (cudaMalloc, syncs) are refused */
    cudaError_t e = cudaStreamBeginCapture(s->stream, cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) {
        fprintf(stderr, "nawal cuda: graph capture not started (%s): running the ops one by one\n", cudaGetErrorString(e));
        cudaGetLastError();
        return -1;
    }
    s->capturing = 1;
    return 0;
}

void *cuda_capture_end(const nawal_ops *o) {
    cuda_state *s = CUDA_STATE(o);
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(s->stream, &g);
    s->capturing = 0;
    cuda_graph *h = NULL;
    if (e == cudaSuccess && g) {
        h = (cuda_graph *)calloc(1, sizeof *h);
        if (h) {
            e = cudaGraphInstantiate(&h->exec, g, 0);
            if (e != cudaSuccess) { free(h); h = NULL; }
        }
    }
    if (g) cudaGraphDestroy(g);
    if (!h) {
        fprintf(stderr, "nawal cuda: graph capture failed (%s): running the ops one by one\n",
                e == cudaSuccess ? "out of host memory" : cudaGetErrorString(e));
        cudaGetLastError();
        return NULL;
    }
    h->generation = s->generation;
    return h;
}

int cuda_graph_launch(const nawal_ops *o, void *graph) {
    cuda_state *s = CUDA_STATE(o);
    cuda_graph *h = (cuda_graph *)graph;
    if (!h || h->generation != s->generation) return -1; /* its buffers moved: capture again */
    CUDA_CHECK("graph_launch", cudaGraphLaunch(h->exec, s->stream));
    return 0;
}

void cuda_graph_free(const nawal_ops *o, void *graph) {
    (void)o;
    cuda_graph *h = (cuda_graph *)graph;
    if (!h) return;
    cudaGraphExecDestroy(h->exec);
    free(h);
}
