/*
 * greedyprune.h: GreedyPrune visual-token selection, a C99 library with optional OpenMP.
 *
 * The rule (shared/SPEC.md §1): from N tokens with features x_i (rows of an N x D matrix) and an
 * optional saliency s_i, keep K tokens chosen greedily. With x̂ the unit rows (zero rows stay
 * zero), ŝ the min-max normalized saliency (0 when absent or constant),
 * d(i, j) = (1 - x̂_i . x̂_j) / 2 and m(i | S) = min_{j in S} d(i, j) with m(i | {}) = 1,
 * each step adds   argmax_{i not in S}  lam * ŝ_i + (1 - lam) * m(i | S),   lowest index on ties.
 *
 * Any C program can use this header: it includes no Python.h. Every public symbol starts with
 * gp_ / GP_. Functions that can fail return a gp_status; outputs are caller-owned buffers.
 * Extra memory is O(N + K*D) per image being processed (never N x N).
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
    GP_ENOMEM = 4                  /**< a work buffer could not be allocated */
} gp_status;

/** @return a static, human-readable description of a status (never NULL). */
const char *gp_strerror(gp_status status);

/**
 * A strided view of `batch` matrices of `rows` x `cols` elements. Element (b, i, c) lies at
 * data + (b * batch_stride + i * row_stride + c * col_stride) elements. Strides count elements,
 * not bytes, and may be zero or negative. Saliency uses the same view with cols == 1.
 */
typedef struct gp_view {
    const void *data;
    gp_dtype dtype;
    int64_t batch, rows, cols;
    int64_t batch_stride, row_stride, col_stride;
} gp_view;

/** @return a view of a C-contiguous (batch, rows, cols) array. */
gp_view gp_contiguous(const void *data, gp_dtype dtype, int64_t batch, int64_t rows, int64_t cols);

/**
 * Run the greedy rule on each of features->batch images.
 *
 * @param features    (B, N, D) view; B >= 0, N >= 1, D >= 1; every element finite.
 * @param saliency    NULL (diversity only) or a (B, N, 1) view; every element finite.
 * @param k           tokens to keep per image, 1 <= k <= N.
 * @param lam         weight of saliency against diversity, 0 <= lam <= 1.
 * @param num_threads threads to use; <= 0 means gp_default_num_threads(). The answer does not
 *                    depend on it. Several images run in parallel, one thread each; one
 *                    large image shares its pass over the features (norms, finiteness, the
 *                    distances to the first pick); small work runs on one thread.
 * @param order       caller-owned, B * k entries: image b's picks, in the order picked, at
 *                    order[b * k .. b * k + k - 1].
 * @param gains       NULL, or caller-owned B * k entries: the value each pick added.
 * @return GP_OK; GP_EINVAL for a NULL pointer, bad shape, dtype, k or lam; GP_ENONFINITE_* for
 *         NaN/infinity; GP_ENOMEM. On failure the outputs are unspecified and nothing leaks.
 *
 * float64 input is computed in float64, the other types in float32 (rows of extreme magnitude,
 * beyond 1e15 or below 1e-15 in norm, are first scaled by their largest entry, in float64).
 */
gp_status gp_greedy(const gp_view *features, const gp_view *saliency, int64_t k, double lam,
                    int num_threads, int64_t *order, double *gains);

/** As gp_greedy, but writes each image's kept indices sorted ascending into `indices` (B * k). */
gp_status gp_select(const gp_view *features, const gp_view *saliency, int64_t k, double lam,
                    int num_threads, int64_t *indices);

/** @return the thread count used for num_threads <= 0: OpenMP's default, or 1 without OpenMP. */
int gp_default_num_threads(void);

/** @return 1 if the library was built with OpenMP, else 0. */
int gp_has_openmp(void);

#ifdef __cplusplus
}
#endif

#endif /* GREEDYPRUNE_H */
