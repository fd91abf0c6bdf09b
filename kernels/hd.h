/* hd.h - the NAWAL_HD qualifier for per-element math shared by backends.
 *
 * Small inline functions that both the CPU backend (plain C) and the CUDA
 * backend (nvcc) evaluate are marked NAWAL_HD. Under nvcc it expands to
 * __host__ __device__, in C it is empty, so the CPU tests exercise exactly
 * the formulas the GPU runs. */
#ifndef NAWAL_HD_H
#define NAWAL_HD_H

#ifdef __CUDACC__
#define NAWAL_HD __host__ __device__ __forceinline__
#else
#define NAWAL_HD static inline
#endif

#endif
