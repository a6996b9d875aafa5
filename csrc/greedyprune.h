/*
 * greedyprune.h: GreedyPrune visual-token selection, a C99 library with optional OpenMP.
 *
 * The rule (docs/spec.md §1): from N tokens with features x_i (rows of an N x D matrix) and an
 * optional saliency s_i, keep K tokens chosen greedily. With x̂ the unit rows (zero rows stay
 * zero), ŝ the min-max normalized saliency (0 when absent or constant),
 * d(i, j) = (1 - x̂_i . x̂_j) / 2 and m(i | S) = min_{j in S} d(i, j) with m(i | {}) = 1,
 * each step adds   argmax_{i not in S}  lam * ŝ_i + (1 - lam) * m(i | S),   lowest index on ties.
 * A cosine x̂_i . x̂_j within GP_COSINE_SNAP_F64 of +1 or -1 counts as exactly +1 or -1, so rows
 * pointing the same or the opposite way (exact and scaled duplicates, any D = 1 input) are at
 * distance exactly 0 or 1 and tie exactly, as the lowest-index rule intends; greedyprune.reference
 * does the same.
 *
 * Any C program can use this header: it includes no Python.h. Every public symbol starts with
 * gp_ / GP_. Functions that can fail return a gp_status; outputs are caller-owned buffers.
 * Extra memory is O(N + K*D) per image being processed (never N x N).
 *
 * Threads. num_threads is capped at the CPUs available to the process (omp_get_num_procs(), which
 * honours the affinity mask), so no argument can make the library create more threads than
 * that. Calls from several threads at once are safe. Called from inside an active OpenMP
 * parallel region (one image per caller thread, say), a call runs on its calling thread alone.
 * In a child process forked after the library was first called, every call runs on the calling
 * thread alone: OpenMP's thread pool does not survive fork(). None of this changes an answer.
 *
 * Floating point. Each call computes in the default floating-point mode (round to nearest, no
 * flush-to-zero, no denormals-are-zero, no traps), on every thread it uses, and restores the
 * caller's mode on return: the answer does not depend on the caller's mode.
 */
#ifndef GREEDYPRUNE_H
#define GREEDYPRUNE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GP_VERSION_MAJOR 0
#define GP_VERSION_MINOR 1
#define GP_VERSION_PATCH 0
/** MAJOR * 10000 + MINOR * 100 + PATCH, as a compile-time constant. */
#define GP_VERSION_NUMBER (GP_VERSION_MAJOR * 10000 + GP_VERSION_MINOR * 100 + GP_VERSION_PATCH)

/** @return GP_VERSION_NUMBER of the library actually linked (compare with the header's). */
unsigned gp_version_number(void);

/** Element types. float16 and bfloat16 are read as raw 16-bit patterns (IEEE binary16 and the
 *  top half of a binary32) and converted to float32 on the way in. */
typedef enum gp_dtype {
    GP_FLOAT32 = 0,
    GP_FLOAT64 = 1,
    GP_FLOAT16 = 2,
    GP_BFLOAT16 = 3
} gp_dtype;

typedef enum gp_status {
    GP_OK = 0,
    GP_EINVAL = 1,                 /**< an argument is outside its documented range */
    GP_ENONFINITE_FEATURES = 2,    /**< features hold NaN or infinity */
    GP_ENONFINITE_SALIENCY = 3,    /**< saliency holds NaN or infinity */
    GP_ENOMEM = 4,                 /**< a work buffer could not be allocated (or its size
                                        overflows size_t) */
    GP_EINTERRUPTED = 5            /**< gp_options.interrupt asked the call to stop */
} gp_status;

/** Cosines within this of +1 or -1 count as exactly +1 or -1 (float64 computation). Rounding
 *  leaves exactly parallel rows many orders of magnitude closer than this. */
#define GP_COSINE_SNAP_F64 0x1p-32
/** The same for float32 computation, far below its 1e-4 tolerance. */
#define GP_COSINE_SNAP_F32 0x1p-16

/** @return a static, human-readable description of a status (never NULL). */
const char *gp_strerror(gp_status status);

/**
 * A strided view of `batch` matrices of `rows` x `cols` elements. Element (b, i, c) lies at
 * data + (b * batch_stride + i * row_stride + c * col_stride) elements. Strides count elements,
 * not bytes, and may be zero or negative (a zero stride repeats elements: the view may hold far
 * more elements than memory does). Saliency uses the same view with cols == 1. A view whose
 * elements would lie more than PTRDIFF_MAX bytes apart is refused with GP_EINVAL.
 */
typedef struct gp_view {
    const void *data;
    gp_dtype dtype;
    int64_t batch, rows, cols;
    int64_t batch_stride, row_stride, col_stride;
} gp_view;

/** @return a view of a C-contiguous (batch, rows, cols) array. If rows * cols overflows int64 (no
 *  such array exists), the view has cols = 0, which gp_greedy refuses with GP_EINVAL. */
gp_view gp_contiguous(const void *data, gp_dtype dtype, int64_t batch, int64_t rows, int64_t cols);

/**
 * Run the greedy rule on each of features->batch images.
 *
 * @param features    (B, N, D) view; B >= 0, N >= 1, D >= 1; every element finite.
 * @param saliency    NULL (diversity only) or a (B, N, 1) view; every element finite.
 * @param k           tokens to keep per image, 1 <= k <= N.
 * @param lam         weight of saliency against diversity, 0 <= lam <= 1.
 * @param num_threads threads to use; <= 0 means gp_default_num_threads(); at most the CPUs
 *                    available (see "Threads" above). The answer does not depend on it.
 *                    Several images run in parallel, one thread each; one large image shares
 *                    its pass over the features (norms, finiteness, the distances to the first
 *                    pick); small work runs on one thread.
 * @param order       caller-owned, B * k entries: image b's picks, in the order picked, at
 *                    order[b * k .. b * k + k - 1].
 * @param gains       NULL, or caller-owned B * k entries: the value each pick added.
 * @return GP_OK; GP_EINVAL for a NULL pointer, bad shape, dtype, k or lam, or a view or output
 *         too large to address; GP_ENONFINITE_* for NaN/infinity; GP_ENOMEM (work buffers for a
 *         view that repeats elements through zero strides can exceed any memory). On failure
 *         the outputs are unspecified and nothing leaks.
 *
 * float64 input is computed in float64, the other types in float32 (rows of extreme magnitude,
 * beyond 1e15 or below 1e-15 in norm, are first scaled by their largest entry, in float64).
 * Dot products accumulate blocks of 4096 elements in the compute type and add the blocks in
 * float64, so their rounding error does not grow with D: float32 picks stay within 1e-4 in gain
 * of the best candidate (docs/spec.md §2) for every D. Gains that differ by less than rounding
 * (about 1e-16 relative in float64), such as those of scaled copies of a row measured against a
 * third row, may be ordered either way.
 */
gp_status gp_greedy(const gp_view *features, const gp_view *saliency, int64_t k, double lam,
                    int num_threads, int64_t *order, double *gains);

/** As gp_greedy, but writes each image's kept indices sorted ascending into `indices` (B * k). */
gp_status gp_select(const gp_view *features, const gp_view *saliency, int64_t k, double lam,
                    int num_threads, int64_t *indices);

/** A callback that says whether to stop: nonzero stops the call, which returns GP_EINTERRUPTED. */
typedef int (*gp_interrupt_fn)(void *context);

/** Settings of gp_greedy_with / gp_select_with. Zero-initialize, then set what you need. */
typedef struct gp_options {
    int num_threads;             /**< as gp_greedy's num_threads (0: the default) */
    /** NULL, or called with interrupt_context between greedy steps and between slices of the
     *  pass over the features, about every 2^24 elements read (a few milliseconds), always from
     *  the thread that made the call, never from another: it may take that thread's locks
     *  (a language runtime's global lock, say). In a batch that runs images in parallel it is
     *  called while the calling thread works on its share of the images, then every 2 ms
     *  while it waits for the other threads' images (where POSIX threads exist), so that a
     *  stop is prompt whatever the batch and thread count. */
    gp_interrupt_fn interrupt;
    void *interrupt_context;
} gp_options;

/** gp_greedy with options (NULL: the defaults). @return as gp_greedy, or GP_EINTERRUPTED. */
gp_status gp_greedy_with(const gp_view *features, const gp_view *saliency, int64_t k, double lam,
                         const gp_options *options, int64_t *order, double *gains);

/** gp_select with options (NULL: the defaults). @return as gp_select, or GP_EINTERRUPTED. */
gp_status gp_select_with(const gp_view *features, const gp_view *saliency, int64_t k, double lam,
                         const gp_options *options, int64_t *indices);

/** @return the thread count asked for by num_threads <= 0: OpenMP's current setting for the
 *  calling thread (omp_get_max_threads(), which follows OMP_NUM_THREADS and omp_set_num_threads,
 *  so threadpoolctl's limits too), or 1 without OpenMP. It is read at each call, and, like any
 *  num_threads, then capped (see "Threads"). */
int gp_default_num_threads(void);

/** @return 1 if the library was built with OpenMP, else 0. */
int gp_has_openmp(void);

/** @return a static description of the instruction set the dot products run with (never NULL).
 *  GCC builds for x86-64 Linux carry an AVX-512, an AVX2 and a baseline copy of them, one of
 *  which is chosen when the library is loaded; other builds run the compile-time target. */
const char *gp_simd_variant(void);

#ifdef __cplusplus
}
#endif

#endif /* GREEDYPRUNE_H */
