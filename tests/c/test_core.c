/*
 * test_core.c: tests of the GreedyPrune C core through its public header only (C99, no Python).
 *
 * Built and run by tests/c/run.sh, under AddressSanitizer + UndefinedBehaviorSanitizer (+ LSan)
 * and in plain optimized / serial builds. Checks the rule of docs/spec.md: hand-computed
 * cases, the special cases (lambda 0 / 1, K = N, ties), an independent double-precision
 * reference (each pick within tolerance in gain of the best candidate at its step), independence
 * from thread count, batch composition and memory layout, float16 / bfloat16 input, and every
 * gp_status path. Robustness: sizes that overflow, calls from inside the caller's OpenMP region,
 * huge thread counts, fork after OpenMP, the caller's flush-to-zero mode, exact ties between
 * parallel rows, float32 accuracy on very long rows, and the interrupt callback.
 *
 * Prints one line per failed check and ends with exactly "N passed, M failed"; exit status is 1
 * on any failure.
 */
#if defined(__unix__) || defined(__APPLE__)
#define _POSIX_C_SOURCE 200809L /* fork, waitpid, alarm, pthread_self under -std=c99 */
#include <pthread.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#define HAVE_POSIX 1
#endif
#include "greedyprune.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __SSE2__
#include <xmmintrin.h>
#endif

/* ---------------------------------------------------------------- harness */

static int g_passed = 0, g_failed = 0;

static void check_at(int ok, int line, const char *fmt, ...)
{
    if (ok) {
        g_passed++;
        return;
    }
    g_failed++;
    {
        va_list ap;
        fprintf(stderr, "FAIL (line %d): ", line);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
    }
}
#define CHECK(cond, ...) check_at((cond) != 0, __LINE__, __VA_ARGS__)

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (p == NULL) {
        fprintf(stderr, "test_core: out of memory\n");
        exit(2);
    }
    return p;
}

static int same_i64(const int64_t *a, const int64_t *b, int64_t n)
{
    int64_t i;
    for (i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* Bitwise equality of gains: "same input, same output". */
static int same_f64(const double *a, const double *b, int64_t n)
{
    return memcmp(a, b, (size_t)n * sizeof(double)) == 0;
}

static int close_f64(const double *a, const double *b, int64_t n, double tol)
{
    int64_t i;
    for (i = 0; i < n; i++)
        if (!(fabs(a[i] - b[i]) <= tol)) return 0;
    return 1;
}

/* Deterministic LCG (Knuth's MMIX constants); uniform in [-1, 1). */
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static void rng_seed(uint64_t s) { g_rng = s * 2862933555777941757ull + 3037000493ull; }
static double rng_uniform(void)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(g_rng >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}
static double *random_matrix(int64_t count)
{
    double *p = (double *)xmalloc((size_t)count * sizeof(double));
    int64_t i;
    for (i = 0; i < count; i++) p[i] = rng_uniform();
    return p;
}

/* ---------------------------------------------------------------- 16-bit formats */

/* binary16 -> float, written independently of the library (ldexp based). */
static float h2f(uint16_t h)
{
    int sign = (h >> 15) & 1, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    double v;
    if (exponent == 0x1f) v = mantissa ? NAN : INFINITY;
    else if (exponent == 0) v = ldexp((double)mantissa, -24);
    else v = ldexp((double)(mantissa | 0x400), exponent - 25);
    return (float)(sign ? -v : v);
}

/* float -> binary16, round to nearest even. */
static uint16_t f2h(float f)
{
    uint32_t x, sign, mant, h, rem, halfway;
    int32_t exponent, e;
    memcpy(&x, &f, sizeof x);
    sign = (x >> 16) & 0x8000u;
    exponent = (int32_t)((x >> 23) & 0xffu);
    mant = x & 0x7fffffu;
    if (exponent == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0u));
    e = exponent - 127 + 15;
    if (e >= 0x1f) return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        int shift;
        if (e < -10) return (uint16_t)sign;
        mant |= 0x800000u;
        shift = 14 - e;
        h = mant >> shift;
        rem = mant & ((1u << shift) - 1u);
        halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    h = ((uint32_t)e << 10) | (mant >> 13);
    rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

static float bf2f(uint16_t b)
{
    uint32_t x = (uint32_t)b << 16;
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

/* float -> bfloat16, round to nearest even (finite inputs). */
static uint16_t f2bf(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

/* ---------------------------------------------------------------- views of any layout */

/* Store value v as element `off` of a buffer of the given dtype. */
static void put(void *buf, gp_dtype dtype, int64_t off, double v)
{
    switch (dtype) {
    case GP_FLOAT32: ((float *)buf)[off] = (float)v; break;
    case GP_FLOAT64: ((double *)buf)[off] = v; break;
    case GP_FLOAT16: ((uint16_t *)buf)[off] = f2h((float)v); break;
    case GP_BFLOAT16: ((uint16_t *)buf)[off] = f2bf((float)v); break;
    }
}

static size_t dtype_size(gp_dtype dtype)
{
    return dtype == GP_FLOAT64 ? 8 : dtype == GP_FLOAT32 ? 4 : 2;
}

/* Fill `count` elements with NaN, so that a read outside the view shows up. */
static void fill_nan(void *buf, gp_dtype dtype, int64_t count)
{
    int64_t i;
    for (i = 0; i < count; i++) {
        if (dtype == GP_FLOAT16) ((uint16_t *)buf)[i] = 0x7e00u;
        else if (dtype == GP_BFLOAT16) ((uint16_t *)buf)[i] = 0x7fc0u;
        else put(buf, dtype, i, NAN);
    }
}

/* A (batch, rows, cols) view with the given element strides, holding src (C-contiguous
 * batch x rows x cols doubles; with batch_stride 0 only image 0 of src is used). Elements
 * outside the view are NaN. *alloc receives the buffer to free. */
static gp_view make_view(const double *src, gp_dtype dtype, int64_t batch, int64_t rows,
                         int64_t cols, int64_t bs, int64_t rs, int64_t cs, void **alloc)
{
    int64_t lo = 0, hi = 0, b, i, c, count;
    char *base;
    gp_view v;
    if (batch > 0) {
        lo += bs < 0 ? (batch - 1) * bs : 0;
        hi += bs > 0 ? (batch - 1) * bs : 0;
    }
    lo += rs < 0 ? (rows - 1) * rs : 0;
    hi += rs > 0 ? (rows - 1) * rs : 0;
    lo += cs < 0 ? (cols - 1) * cs : 0;
    hi += cs > 0 ? (cols - 1) * cs : 0;
    count = hi - lo + 1;
    base = (char *)xmalloc((size_t)count * dtype_size(dtype));
    fill_nan(base, dtype, count);
    for (b = 0; b < batch; b++)
        for (i = 0; i < rows; i++)
            for (c = 0; c < cols; c++)
                put(base, dtype, b * bs + i * rs + c * cs - lo,
                    src[((bs == 0 ? 0 : b) * rows + i) * cols + c]);
    *alloc = base;
    v.data = base + (size_t)(-lo) * dtype_size(dtype);
    v.dtype = dtype;
    v.batch = batch;
    v.rows = rows;
    v.cols = cols;
    v.batch_stride = bs;
    v.row_stride = rs;
    v.col_stride = cs;
    return v;
}

static gp_view contiguous_copy(const double *src, gp_dtype dtype, int64_t batch, int64_t rows,
                               int64_t cols, void **alloc)
{
    return make_view(src, dtype, batch, rows, cols, rows * cols, cols, 1, alloc);
}

/* ---------------------------------------------------------------- reference */

/*
 * Check `order` / `gains` (one image) against SPEC §1 evaluated independently in double:
 * every pick is a new valid index whose true gain is within `tol` of the best candidate's at
 * that step, and the reported gain is within `tol` of the true one. Returns 1 if all hold.
 */
static int reference_ok(const char *what, const double *x, const double *s, int64_t n, int64_t d,
                        int64_t k, double lam, const int64_t *order, const double *gains,
                        double tol)
{
    double *u = (double *)xmalloc((size_t)(n * d) * sizeof(double));
    double *shat = (double *)xmalloc((size_t)n * sizeof(double));
    double *m = (double *)xmalloc((size_t)n * sizeof(double));
    char *in = (char *)xmalloc((size_t)n);
    double lo = INFINITY, hi = -INFINITY;
    int64_t i, c, step;
    int ok = 1;
    for (i = 0; i < n; i++) {
        double sum = 0.0;
        for (c = 0; c < d; c++) sum += x[i * d + c] * x[i * d + c];
        sum = sqrt(sum);
        for (c = 0; c < d; c++) u[i * d + c] = sum > 0.0 ? x[i * d + c] / sum : 0.0;
        if (s != NULL) {
            if (s[i] < lo) lo = s[i];
            if (s[i] > hi) hi = s[i];
        }
        m[i] = 1.0;
        in[i] = 0;
    }
    for (i = 0; i < n; i++) shat[i] = (s != NULL && hi > lo) ? (s[i] - lo) / (hi - lo) : 0.0;
    for (step = 0; step < k && ok; step++) {
        double best = -INFINITY, got;
        int64_t p = order[step];
        for (i = 0; i < n; i++)
            if (!in[i] && lam * shat[i] + (1.0 - lam) * m[i] > best)
                best = lam * shat[i] + (1.0 - lam) * m[i];
        if (p < 0 || p >= n || in[p]) {
            fprintf(stderr, "  %s: step %ld picked invalid or repeated index %ld\n", what,
                    (long)step, (long)p);
            ok = 0;
            break;
        }
        got = lam * shat[p] + (1.0 - lam) * m[p];
        if (!(got >= best - tol)) {
            fprintf(stderr, "  %s: step %ld picked %ld with gain %.17g, best is %.17g\n", what,
                    (long)step, (long)p, got, best);
            ok = 0;
        }
        if (gains != NULL && !(fabs(gains[step] - got) <= tol)) {
            fprintf(stderr, "  %s: step %ld reports gain %.17g, true gain %.17g\n", what,
                    (long)step, gains[step], got);
            ok = 0;
        }
        in[p] = 1;
        for (i = 0; i < n; i++) {
            double dot = 0.0, dist;
            if (in[i]) continue;
            for (c = 0; c < d; c++) dot += u[i * d + c] * u[p * d + c];
            dist = (1.0 - dot) / 2.0;
            if (dist < m[i]) m[i] = dist;
        }
    }
    free(u);
    free(shat);
    free(m);
    free(in);
    return ok;
}

/* Run gp_greedy on contiguous doubles converted to dtype. */
static gp_status run_greedy(const double *x, const double *s, gp_dtype dtype, int64_t batch,
                            int64_t n, int64_t d, int64_t k, double lam, int threads,
                            int64_t *order, double *gains)
{
    void *xa = NULL, *sa = NULL;
    gp_view xv = contiguous_copy(x, dtype, batch, n, d, &xa), sv;
    gp_status st;
    if (s != NULL) sv = contiguous_copy(s, dtype, batch, n, 1, &sa);
    st = gp_greedy(&xv, s != NULL ? &sv : NULL, k, lam, threads, order, gains);
    free(xa);
    free(sa);
    return st;
}

/* ---------------------------------------------------------------- tests */

static void test_meta(void)
{
    int st;
    CHECK(gp_version_number() == GP_VERSION_NUMBER, "gp_version_number() %u != header %d",
          gp_version_number(), GP_VERSION_NUMBER);
    CHECK(GP_VERSION_NUMBER == GP_VERSION_MAJOR * 10000 + GP_VERSION_MINOR * 100 + GP_VERSION_PATCH,
          "GP_VERSION_NUMBER formula");
    for (st = GP_OK; st <= GP_EINTERRUPTED; st++) {
        const char *msg = gp_strerror((gp_status)st);
        CHECK(msg != NULL && msg[0] != '\0', "gp_strerror(%d) is NULL or empty", st);
        CHECK(msg != NULL && strcmp(msg, gp_strerror((gp_status)99)) != 0,
              "gp_strerror(%d) equals the unknown-status text", st);
    }
    CHECK(gp_strerror((gp_status)99) != NULL, "gp_strerror(99) is NULL");
    CHECK(gp_strerror((gp_status)-1) != NULL, "gp_strerror(-1) is NULL");
    CHECK(gp_default_num_threads() >= 1, "gp_default_num_threads() = %d", gp_default_num_threads());
#ifdef _OPENMP
    CHECK(gp_has_openmp() == 1, "built with OpenMP but gp_has_openmp() = %d", gp_has_openmp());
#else
    CHECK(gp_has_openmp() == 0, "built without OpenMP but gp_has_openmp() = %d", gp_has_openmp());
#endif
    CHECK(gp_simd_variant() != NULL && gp_simd_variant()[0] != '\0', "gp_simd_variant() empty");
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(GP_NO_TARGET_CLONES) && !defined(__SANITIZE_ADDRESS__)
    CHECK(strstr(gp_simd_variant(), "chosen at load time") != NULL,
          "target_clones build reports no load-time choice: %s", gp_simd_variant());
#else
    CHECK(strstr(gp_simd_variant(), "compile-time target") != NULL,
          "build without target_clones reports: %s", gp_simd_variant());
#endif
    {
        float dummy[6];
        gp_view v = gp_contiguous(dummy, GP_FLOAT32, 1, 2, 3);
        CHECK(v.data == (const void *)dummy && v.dtype == GP_FLOAT32 && v.batch == 1 &&
                  v.rows == 2 && v.cols == 3 && v.batch_stride == 6 && v.row_stride == 3 &&
                  v.col_stride == 1,
              "gp_contiguous fields");
    }
}

/* Six 2-D tokens: (1,0) (0,1) (-1,0) (1,1) (2,0) (0,0). */
static const double HAND_X[6 * 2] = {1, 0, 0, 1, -1, 0, 1, 1, 2, 0, 0, 0};
static const double HAND_S[6] = {0.1, 0.5, 0.5, 0.9, -0.2, 0.3};

static void test_hand(void)
{
    const double c45 = (1.0 - sqrt(0.5)) / 2.0; /* d((1,1), (1,0)) */
    const gp_dtype dtypes[4] = {GP_FLOAT64, GP_FLOAT32, GP_FLOAT16, GP_BFLOAT16};
    int t;
    for (t = 0; t < 4; t++) {
        gp_dtype dt = dtypes[t];
        double tol = dt == GP_FLOAT64 ? 1e-12 : 1e-6;
        int64_t order[6], sel[6];
        double gains[6];
        gp_status st;
        {
            /* lambda = 0: farthest point from token 0. d(.,0): t2 is 1 -> pick 2; then t1 and the
             * zero row t5 tie at 0.5 -> the lower index 1, then 5; then t3 (c45), then t4 (0). */
            static const int64_t want[6] = {0, 2, 1, 5, 3, 4};
            double want_g[6];
            want_g[0] = 1; want_g[1] = 1; want_g[2] = 0.5; want_g[3] = 0.5; want_g[4] = c45;
            want_g[5] = 0;
            st = run_greedy(HAND_X, NULL, dt, 1, 6, 2, 6, 0.0, 1, order, gains);
            CHECK(st == GP_OK, "hand lam=0 dtype %d: status %d", (int)dt, (int)st);
            CHECK(same_i64(order, want, 6),
                  "hand lam=0 dtype %d: order %ld %ld %ld %ld %ld %ld, want 0 2 1 5 3 4", (int)dt,
                  (long)order[0], (long)order[1], (long)order[2], (long)order[3], (long)order[4],
                  (long)order[5]);
            CHECK(close_f64(gains, want_g, 6, tol), "hand lam=0 dtype %d: gains", (int)dt);
            st = run_greedy(HAND_X, NULL, dt, 1, 6, 2, 3, 0.0, 1, order, gains);
            CHECK(st == GP_OK && same_i64(order, want, 3), "hand lam=0 k=3 dtype %d: prefix",
                  (int)dt);
        }
        {
            /* lambda = 1: top-K by saliency; t1 and t2 tie (0.5) -> 1 before 2. */
            static const int64_t want[6] = {3, 1, 2, 5, 0, 4};
            double want_g[6];
            int i;
            for (i = 0; i < 6; i++) want_g[i] = (HAND_S[want[i]] - -0.2) / 1.1;
            st = run_greedy(HAND_X, HAND_S, GP_FLOAT64, 1, 6, 2, 6, 1.0, 1, order, gains);
            CHECK(st == GP_OK && same_i64(order, want, 6),
                  "hand lam=1: order %ld %ld %ld %ld %ld %ld, want 3 1 2 5 0 4", (long)order[0],
                  (long)order[1], (long)order[2], (long)order[3], (long)order[4], (long)order[5]);
            CHECK(close_f64(gains, want_g, 6, 1e-12), "hand lam=1: gains");
        }
        {
            /* lambda = 0.5 with saliency (worked out by hand): 3 2 5 1 0 4. */
            static const int64_t want[6] = {3, 2, 5, 1, 0, 4};
            double sh[6], want_g[6];
            int i;
            for (i = 0; i < 6; i++) sh[i] = (HAND_S[i] + 0.2) / 1.1;
            want_g[0] = 1.0;
            want_g[1] = 0.5 * sh[2] + 0.5 * (1 + sqrt(0.5)) / 2;
            want_g[2] = 0.5 * sh[5] + 0.5 * 0.5;
            want_g[3] = 0.5 * sh[1] + 0.5 * c45;
            want_g[4] = 0.5 * sh[0] + 0.5 * c45;
            want_g[5] = 0.5 * sh[4] + 0.5 * 0.0;
            st = run_greedy(HAND_X, HAND_S, dt, 1, 6, 2, 6, 0.5, 1, order, gains);
            /* float16 / bfloat16 saliency is rounded: only the picks are compared then. */
            CHECK(st == GP_OK && same_i64(order, want, 6),
                  "hand lam=0.5 dtype %d: order %ld %ld %ld %ld %ld %ld, want 3 2 5 1 0 4",
                  (int)dt, (long)order[0], (long)order[1], (long)order[2], (long)order[3],
                  (long)order[4], (long)order[5]);
            if (dt == GP_FLOAT64 || dt == GP_FLOAT32)
                CHECK(close_f64(gains, want_g, 6, tol), "hand lam=0.5 dtype %d: gains", (int)dt);
            {
                void *xa, *sa;
                gp_view xv = contiguous_copy(HAND_X, dt, 1, 6, 2, &xa);
                gp_view sv = contiguous_copy(HAND_S, dt, 1, 6, 1, &sa);
                static const int64_t want_sel[4] = {1, 2, 3, 5};
                st = gp_select(&xv, &sv, 4, 0.5, 1, sel);
                CHECK(st == GP_OK && same_i64(sel, want_sel, 4),
                      "hand gp_select k=4 dtype %d: %ld %ld %ld %ld, want 1 2 3 5", (int)dt,
                      (long)sel[0], (long)sel[1], (long)sel[2], (long)sel[3]);
                free(xa);
                free(sa);
            }
        }
    }
}

static void test_special_cases(void)
{
    int64_t order[16], sel[16], i;
    double gains[16];
    gp_status st;
    {
        /* Ties on saliency with lambda = 1: s = i % 3 -> 2 5 8, 1 4 7, 0 3 6 9. */
        static const int64_t want[10] = {2, 5, 8, 1, 4, 7, 0, 3, 6, 9};
        double s[10], *x = random_matrix(10 * 3);
        for (i = 0; i < 10; i++) s[i] = (double)(i % 3);
        st = run_greedy(x, s, GP_FLOAT32, 1, 10, 3, 10, 1.0, 1, order, gains);
        CHECK(st == GP_OK && same_i64(order, want, 10), "lam=1 saliency ties: wrong order");
        free(x);
    }
    {
        /* Constant saliency: s_hat = 0, so lam = 1 keeps the first K and lam = 0.5 answers as
         * with no saliency (gains scaled alike). Saliency absent and lam = 1: first K too. */
        double s[12], *x = random_matrix(12 * 5);
        int64_t o2[12];
        double g2[12];
        for (i = 0; i < 12; i++) s[i] = 3.25;
        st = run_greedy(x, s, GP_FLOAT64, 1, 12, 5, 7, 1.0, 1, order, gains);
        for (i = 0; i < 7; i++)
            if (order[i] != i || gains[i] != 0.0) break;
        CHECK(st == GP_OK && i == 7, "constant saliency lam=1: not the first K, gains not 0");
        st = run_greedy(x, NULL, GP_FLOAT64, 1, 12, 5, 7, 1.0, 1, order, gains);
        for (i = 0; i < 7; i++)
            if (order[i] != i || gains[i] != 0.0) break;
        CHECK(st == GP_OK && i == 7, "no saliency lam=1: not the first K, gains not 0");
        st = run_greedy(x, s, GP_FLOAT64, 1, 12, 5, 12, 0.5, 1, order, gains);
        CHECK(st == GP_OK, "constant saliency lam=0.5: status");
        st = run_greedy(x, NULL, GP_FLOAT64, 1, 12, 5, 12, 0.5, 1, o2, g2);
        CHECK(st == GP_OK && same_i64(order, o2, 12) && same_f64(gains, g2, 12),
              "constant saliency differs from no saliency");
        CHECK(fabs(gains[0] - 0.5) <= 1e-15, "no saliency: first gain %.17g, want 1 - lam",
              gains[0]);
        free(x);
    }
    {
        /* Identical rows, lambda = 0: every distance ties -> 0 1 2 ...; distances are ~0. */
        double x[8 * 4];
        for (i = 0; i < 8 * 4; i++) x[i] = (double)((i % 4) + 1) * 0.3;
        st = run_greedy(x, NULL, GP_FLOAT32, 1, 8, 4, 8, 0.0, 1, order, gains);
        for (i = 0; i < 8; i++)
            if (order[i] != i || (i > 0 && fabs(gains[i]) > 1e-6)) break;
        CHECK(st == GP_OK && i == 8, "identical rows lam=0: want 0..7 with gains ~0 (at %ld)",
              (long)i);
    }
    {
        /* All-zero rows: x_hat = 0, so every distance is exactly 0.5. */
        double x[5 * 3] = {0};
        st = run_greedy(x, NULL, GP_FLOAT64, 1, 5, 3, 5, 0.0, 1, order, gains);
        for (i = 0; i < 5; i++)
            if (order[i] != i || gains[i] != (i == 0 ? 1.0 : 0.5)) break;
        CHECK(st == GP_OK && i == 5, "zero rows: want 0..4, gains 1, 0.5, ... (at %ld)", (long)i);
    }
    {
        /* An exact duplicate (row 3 = row 0) is picked last with lambda = 0. */
        double *x = random_matrix(7 * 6);
        memcpy(x + 3 * 6, x, 6 * sizeof(double));
        st = run_greedy(x, NULL, GP_FLOAT64, 1, 7, 6, 7, 0.0, 1, order, gains);
        CHECK(st == GP_OK && order[6] == 3 && fabs(gains[6]) <= 1e-12,
              "duplicate row not last / gain %.3g not ~0", gains[6]);
        st = run_greedy(x, NULL, GP_FLOAT32, 1, 7, 6, 6, 0.0, 1, sel, NULL);
        for (i = 0; i < 6; i++)
            if (sel[i] == 3) break;
        CHECK(st == GP_OK && i == 6, "duplicate row picked among the first 6");
        free(x);
    }
    {
        /* Positively scaled rows are the same direction: d = 0 (row norms in every range of
         * float32 squares: 1e20 overflows a float square, needs the rescaled norm). */
        double x[3 * 40];
        for (i = 0; i < 40; i++) {
            x[i] = 1.0 + (double)(i % 5);
            x[40 + i] = 1e20 * (1.0 + (double)(i % 5));
            x[80 + i] = (i % 2) ? -1.0 : 1.0;
        }
        st = run_greedy(x, NULL, GP_FLOAT32, 1, 3, 40, 3, 0.0, 1, order, gains);
        CHECK(st == GP_OK && order[0] == 0 && order[1] == 2 && order[2] == 1 &&
                  fabs(gains[2]) < 1e-6,
              "scaled row 1e20 (float32): order %ld %ld %ld gain %.3g", (long)order[0],
              (long)order[1], (long)order[2], gains[2]);
        st = run_greedy(x, NULL, GP_FLOAT64, 1, 3, 40, 3, 0.0, 1, order, gains);
        CHECK(st == GP_OK && order[1] == 2 && order[2] == 1 && fabs(gains[2]) < 1e-12,
              "scaled row 1e20 (float64)");
    }
    {
        /* Saliency whose range overflows a double. */
        double x[3 * 2] = {1, 0, 0, 1, 1, 1}, s[3] = {-1e308, 1.5e308, 0.0};
        st = run_greedy(x, s, GP_FLOAT64, 1, 3, 2, 3, 1.0, 1, order, gains);
        CHECK(st == GP_OK && order[0] == 1 && order[1] == 2 && order[2] == 0 &&
                  gains[0] == 1.0 && fabs(gains[1] - 0.4) < 1e-12 && gains[2] == 0.0,
              "saliency range overflow: order %ld %ld %ld gains %.17g %.17g %.17g",
              (long)order[0], (long)order[1], (long)order[2], gains[0], gains[1], gains[2]);
    }
    {
        /* N = 1, D = 1, K = 1. */
        double x[1] = {-2.0};
        st = run_greedy(x, x, GP_FLOAT32, 1, 1, 1, 1, 0.3, 1, order, gains);
        CHECK(st == GP_OK && order[0] == 0 && fabs(gains[0] - 0.7) < 1e-15,
              "N=1: order %ld gain %.17g", (long)order[0], gains[0]);
    }
}

/* Random cases against the reference, gp_select vs gp_greedy, K = N, first gains. */
static void test_random_reference(void)
{
    static const double lams[5] = {0.0, 0.25, 0.5, 0.9, 1.0};
    static const int64_t dims[4][3] = {{37, 5, 9}, {60, 33, 60}, {150, 70, 40}, {90, 16, 90}};
    static const gp_dtype dtypes[2] = {GP_FLOAT64, GP_FLOAT32};
    int di, li, ti, use_s;
    rng_seed(11);
    for (di = 0; di < 4; di++) {
        int64_t n = dims[di][0], d = dims[di][1], k = dims[di][2], i, b;
        double *x = random_matrix(n * d), *s = random_matrix(n);
        int64_t *order = (int64_t *)xmalloc((size_t)k * sizeof(int64_t));
        int64_t *sel = (int64_t *)xmalloc((size_t)k * sizeof(int64_t));
        double *gains = (double *)xmalloc((size_t)k * sizeof(double));
        for (ti = 0; ti < 2; ti++)
            for (li = 0; li < 5; li++)
                for (use_s = 0; use_s < 2; use_s++) {
                    double lam = lams[li], tol = dtypes[ti] == GP_FLOAT64 ? 1e-9 : 1e-4;
                    const double *sp = use_s ? s : NULL;
                    char what[96];
                    gp_status st;
                    void *xa, *sa = NULL;
                    gp_view xv = contiguous_copy(x, dtypes[ti], 1, n, d, &xa), sv;
                    if (use_s) sv = contiguous_copy(s, dtypes[ti], 1, n, 1, &sa);
                    sprintf(what, "random n=%ld d=%ld k=%ld dtype=%d lam=%g sal=%d", (long)n,
                            (long)d, (long)k, (int)dtypes[ti], lam, use_s);
                    st = gp_greedy(&xv, use_s ? &sv : NULL, k, lam, 1, order, gains);
                    CHECK(st == GP_OK, "%s: status %d", what, (int)st);
                    CHECK(reference_ok(what, x, sp, n, d, k, lam, order, gains, tol),
                          "%s: disagrees with the reference", what);
                    if (lam == 0.0) CHECK(order[0] == 0, "%s: lam=0 must start at 0", what);
                    CHECK(fabs(gains[0] - (use_s ? lam * 1.0 + (1.0 - lam) : 1.0 - lam)) <= 1e-15,
                          "%s: first gain %.17g", what, gains[0]);
                    /* gp_select = sorted gp_greedy order, ascending and distinct. */
                    st = gp_select(&xv, use_s ? &sv : NULL, k, lam, 1, sel);
                    {
                        int64_t *sorted = (int64_t *)xmalloc((size_t)k * sizeof(int64_t));
                        int64_t j;
                        memcpy(sorted, order, (size_t)k * sizeof(int64_t));
                        for (i = 1; i < k; i++) /* insertion sort */
                            for (j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
                                int64_t tmp = sorted[j];
                                sorted[j] = sorted[j - 1];
                                sorted[j - 1] = tmp;
                            }
                        for (i = 1; i < k; i++)
                            if (!(sel[i - 1] < sel[i])) break;
                        CHECK(st == GP_OK && i == k && same_i64(sel, sorted, k),
                              "%s: gp_select not the sorted greedy order", what);
                        free(sorted);
                    }
                    /* gains == NULL gives the same order. */
                    st = gp_greedy(&xv, use_s ? &sv : NULL, k, lam, 1, sel, NULL);
                    CHECK(st == GP_OK && same_i64(sel, order, k), "%s: gains=NULL changes order",
                          what);
                    if (k == n) {
                        st = gp_select(&xv, use_s ? &sv : NULL, k, lam, 1, sel);
                        for (b = 0; b < n; b++)
                            if (sel[b] != b) break;
                        CHECK(st == GP_OK && b == n, "%s: K = N must return every index", what);
                    }
                    free(xa);
                    free(sa);
                }
        free(x);
        free(s);
        free(order);
        free(sel);
        free(gains);
    }
}

/* Same answer for num_threads 1, 2, 4, 0, -1; batch vs each image alone. */
static void test_threads_and_batch(void)
{
    enum { B = 5, N = 300, D = 24, K = 40 };
    static const int threads[4] = {2, 4, 0, -3};
    double *x = random_matrix((int64_t)B * N * D), *s = random_matrix((int64_t)B * N);
    int64_t *o1 = (int64_t *)xmalloc(sizeof(int64_t) * B * K);
    int64_t *o2 = (int64_t *)xmalloc(sizeof(int64_t) * B * K);
    int64_t *sel = (int64_t *)xmalloc(sizeof(int64_t) * B * K);
    double *g1 = (double *)xmalloc(sizeof(double) * B * K);
    double *g2 = (double *)xmalloc(sizeof(double) * B * K);
    int t, b, di;
    static const gp_dtype dtypes[3] = {GP_FLOAT32, GP_FLOAT64, GP_BFLOAT16};
    for (di = 0; di < 3; di++) {
        void *xa, *sa;
        gp_view xv = contiguous_copy(x, dtypes[di], B, N, D, &xa);
        gp_view sv = contiguous_copy(s, dtypes[di], B, N, 1, &sa);
        gp_status st = gp_greedy(&xv, &sv, K, 0.4, 1, o1, g1);
        CHECK(st == GP_OK, "batch dtype %d: status %d", (int)dtypes[di], (int)st);
        for (t = 0; t < 4; t++) {
            st = gp_greedy(&xv, &sv, K, 0.4, threads[t], o2, g2);
            CHECK(st == GP_OK && same_i64(o1, o2, B * K) && same_f64(g1, g2, B * K),
                  "batch dtype %d: num_threads %d differs from 1", (int)dtypes[di], threads[t]);
        }
        for (b = 0; b < B; b++) {
            /* image b alone: a batch-1 view into the same buffer */
            gp_view xb = xv, sb = sv;
            xb.batch = 1;
            sb.batch = 1;
            xb.data = (const char *)xv.data + (size_t)b * N * D * dtype_size(dtypes[di]);
            sb.data = (const char *)sv.data + (size_t)b * N * dtype_size(dtypes[di]);
            for (t = 0; t < 2; t++) {
                st = gp_greedy(&xb, &sb, K, 0.4, t ? 2 : 1, o2, g2);
                CHECK(st == GP_OK && same_i64(o1 + b * K, o2, K) && same_f64(g1 + b * K, g2, K),
                      "batch dtype %d: image %d alone (threads %d) differs", (int)dtypes[di], b,
                      t ? 2 : 1);
            }
        }
        /* gp_select on the batch: each image sorted */
        st = gp_select(&xv, &sv, K, 0.4, 2, sel);
        for (b = 0; b < B * K; b++)
            if (b % K != 0 && !(sel[b - 1] < sel[b])) break;
        CHECK(st == GP_OK && b == B * K, "batch gp_select: image not sorted ascending");
        /* two images: the threads > 1 path with fewer images than threads */
        xv.batch = sv.batch = 2;
        st = gp_greedy(&xv, &sv, K, 0.4, 4, o2, g2);
        CHECK(st == GP_OK && same_i64(o1, o2, 2 * K) && same_f64(g1, g2, 2 * K),
              "batch of 2 with 4 threads differs");
        free(xa);
        free(sa);
    }
    free(x);
    free(s);
    free(o1);
    free(o2);
    free(sel);
    free(g1);
    free(g2);
}

/* Strided views give the answer of a contiguous copy. */
static void test_layouts(void)
{
    enum { B = 3, N = 50, D = 37, K = 20 };
    static const gp_dtype dtypes[4] = {GP_FLOAT32, GP_FLOAT64, GP_FLOAT16, GP_BFLOAT16};
    double *x = random_matrix((int64_t)B * N * D), *s = random_matrix((int64_t)B * N);
    int64_t o1[B * K], o2[B * K];
    double g1[B * K], g2[B * K];
    int di, li;
    for (di = 0; di < 4; di++) {
        gp_dtype dt = dtypes[di];
        void *xa, *sa, *xb, *sb;
        gp_view xv = contiguous_copy(x, dt, B, N, D, &xa), sv = contiguous_copy(s, dt, B, N, 1, &sa);
        gp_status st = gp_greedy(&xv, &sv, K, 0.3, 1, o1, g1);
        CHECK(st == GP_OK, "layout dtype %d: status", (int)dt);
        /* {batch_stride, row_stride, col_stride} of x, and {batch, row} strides of s */
        {
            static const int64_t layouts[6][5] = {
                /* padded columns (col_stride 3), rows and images padded too */
                {N * (D * 3 + 5) + 17, D * 3 + 5, 3, N * 2 + 1, 2},
                /* rows reversed in memory (negative row stride) */
                {N * D, -D, 1, N, -1},
                /* columns reversed and images reversed */
                {-N * D, D, -1, -N, 1},
                /* Fortran order within an image (transposed storage) */
                {N * D, 1, N, N, 1},
                /* everything negative and padded */
                {-(N * D * 2 + 3), -(D * 2), -2, -(3 * N + 7), -3},
                /* batch-major last: (N, D, B) storage */
                {1, D * B, B, 1, B},
            };
            for (li = 0; li < 6; li++) {
                gp_view xs = make_view(x, dt, B, N, D, layouts[li][0], layouts[li][1],
                                       layouts[li][2], &xb);
                gp_view ss = make_view(s, dt, B, N, 1, layouts[li][3], layouts[li][4], 7, &sb);
                st = gp_greedy(&xs, &ss, K, 0.3, li % 2 ? 2 : 1, o2, g2);
                CHECK(st == GP_OK && same_i64(o1, o2, B * K) && same_f64(g1, g2, B * K),
                      "layout %d dtype %d: differs from contiguous (status %d)", li, (int)dt,
                      (int)st);
                free(xb);
                free(sb);
            }
        }
        /* zero batch stride: image 0 broadcast over 3 images, saliency broadcast too */
        {
            gp_view xs = make_view(x, dt, B, N, D, 0, D, 1, &xb);
            gp_view ss = make_view(s, dt, B, N, 1, 0, 1, 1, &sb);
            int b;
            st = gp_greedy(&xs, &ss, K, 0.3, 2, o2, g2);
            for (b = 0; b < B; b++)
                if (!same_i64(o1, o2 + b * K, K) || !same_f64(g1, g2 + b * K, K)) break;
            CHECK(st == GP_OK && b == B, "broadcast (batch_stride 0) dtype %d differs", (int)dt);
            free(xb);
            free(sb);
        }
        /* zero row stride: every token the same row -> 0, 1, 2, ... with lam = 0 */
        {
            gp_view xs = make_view(x, dt, 1, N, D, N * D, 0, 1, &xb);
            int64_t i;
            st = gp_greedy(&xs, NULL, K, 0.0, 1, o2, g2);
            for (i = 0; i < K; i++)
                if (o2[i] != i) break;
            CHECK(st == GP_OK && i == K, "row_stride 0 dtype %d: want 0..K-1", (int)dt);
            free(xb);
        }
        free(xa);
        free(sa);
    }
    free(x);
    free(s);
}

/* float16 / bfloat16 input picks what float32 of the same values picks. */
static void test_half_types(void)
{
    enum { N = 120, D = 40, K = 30 };
    double *x = (double *)xmalloc(sizeof(double) * N * D), s[N];
    int64_t o32[K], o16[K], obf[K];
    double g32[K], g16[K], gbf[K];
    int64_t i;
    int exact = 1;
    /* values k/16, |k| <= 128: exact in float16 and bfloat16; a few float16 subnormals */
    for (i = 0; i < N * D; i++) {
        double v = floor(rng_uniform() * 128.0) / 16.0;
        if (i % 97 == 0) v = ldexp(1.0 + (double)(i % 7), -22); /* float16 subnormal */
        x[i] = v;
    }
    for (i = 0; i < N; i++) s[i] = floor(rng_uniform() * 100.0) / 8.0;
    for (i = 0; i < N * D; i++) {
        float f = (float)x[i];
        if (h2f(f2h(f)) != f) exact = 0;
        if (i % 97 != 0 && bf2f(f2bf(f)) != f) exact = 0;
    }
    CHECK(exact, "test values not exactly representable (converter bug)");
    {
        /* converter sanity against known bit patterns */
        CHECK(f2h(1.0f) == 0x3c00 && f2h(-2.0f) == 0xc000 && f2h(65504.0f) == 0x7bff &&
                  f2h(5.9604644775390625e-8f) == 0x0001 && h2f(0x3555) == 0.333251953125f,
              "float16 converter");
        CHECK(f2bf(1.0f) == 0x3f80 && f2bf(-2.0f) == 0xc000 && bf2f(0x3f80) == 1.0f,
              "bfloat16 converter");
    }
    {
        int li;
        static const double lams[3] = {0.0, 0.5, 1.0};
        for (li = 0; li < 3; li++) {
            double lam = lams[li];
            gp_status a = run_greedy(x, s, GP_FLOAT32, 1, N, D, K, lam, 1, o32, g32);
            gp_status b = run_greedy(x, s, GP_FLOAT16, 1, N, D, K, lam, 1, o16, g16);
            gp_status c;
            /* bfloat16: the subnormal float16 values are exact in bfloat16 too (2^-22 * small) */
            c = run_greedy(x, s, GP_BFLOAT16, 1, N, D, K, lam, 1, obf, gbf);
            CHECK(a == GP_OK && b == GP_OK && c == GP_OK, "half types lam=%g: status", lam);
            CHECK(same_i64(o32, o16, K) && close_f64(g32, g16, K, 1e-6),
                  "float16 lam=%g: picks differ from float32", lam);
            CHECK(same_i64(o32, obf, K) && close_f64(g32, gbf, K, 1e-6),
                  "bfloat16 lam=%g: picks differ from float32", lam);
            CHECK(reference_ok("half types", x, s, N, D, K, lam, o16, g16, 1e-4),
                  "float16 lam=%g: disagrees with the reference", lam);
        }
    }
    {
        /* mixed dtypes: float32 features with float16 / float64 saliency of the same values */
        void *xa, *sa;
        gp_view xv = contiguous_copy(x, GP_FLOAT32, 1, N, D, &xa);
        gp_view sv = contiguous_copy(s, GP_FLOAT16, 1, N, 1, &sa);
        gp_status st;
        run_greedy(x, s, GP_FLOAT32, 1, N, D, K, 0.6, 1, o32, g32);
        st = gp_greedy(&xv, &sv, K, 0.6, 1, o16, g16);
        CHECK(st == GP_OK && same_i64(o32, o16, K), "float16 saliency with float32 features");
        free(sa);
        sv = contiguous_copy(s, GP_FLOAT64, 1, N, 1, &sa);
        st = gp_greedy(&xv, &sv, K, 0.6, 1, o16, g16);
        CHECK(st == GP_OK && same_i64(o32, o16, K), "float64 saliency with float32 features");
        free(sa);
        free(xa);
    }
    free(x);
}

/* Every finite float16 / bfloat16 bit pattern as saliency with lam = 1: the gains are exactly
 * s_hat of the picks, which pins the conversion of every value (subnormals included). */
static void test_half_conversion_exhaustive(void)
{
    int kind;
    for (kind = 0; kind < 2; kind++) {
        uint16_t *bits = (uint16_t *)xmalloc(65536 * sizeof(uint16_t));
        double *val = (double *)xmalloc(65536 * sizeof(double));
        float one = 1.0f;
        int64_t n = 0, i, *order;
        double *gains, lo = INFINITY, hi = -INFINITY;
        uint32_t p;
        gp_view xv, sv;
        gp_status st;
        int ok = 1;
        for (p = 0; p < 65536; p++) {
            float f = kind == 0 ? h2f((uint16_t)p) : bf2f((uint16_t)p);
            if (!isfinite(f)) continue;
            bits[n] = (uint16_t)p;
            val[n] = f;
            if (f < lo) lo = f;
            if (f > hi) hi = f;
            n++;
        }
        order = (int64_t *)xmalloc((size_t)n * sizeof(int64_t));
        gains = (double *)xmalloc((size_t)n * sizeof(double));
        /* features: one float32 value broadcast to every token (row stride 0) */
        xv = gp_contiguous(&one, GP_FLOAT32, 1, n, 1);
        xv.row_stride = 0;
        sv = gp_contiguous(bits, kind == 0 ? GP_FLOAT16 : GP_BFLOAT16, 1, n, 1);
        st = gp_greedy(&xv, &sv, n, 1.0, 1, order, gains);
        CHECK(st == GP_OK, "exhaustive %s: status %d", kind ? "bfloat16" : "float16", (int)st);
        for (i = 0; i < n && ok && st == GP_OK; i++) {
            int64_t q = order[i];
            double want = (val[q] - lo) / (hi - lo);
            if (q < 0 || q >= n || gains[i] != want ||
                (i > 0 && (gains[i] > gains[i - 1] ||
                           (gains[i] == gains[i - 1] && val[q] == val[order[i - 1]] &&
                            q < order[i - 1])))) {
                fprintf(stderr, "  exhaustive %s: step %ld pick %ld (bits 0x%04x = %.9g) gain %.17g"
                        ", want %.17g\n", kind ? "bfloat16" : "float16", (long)i, (long)q,
                        (q >= 0 && q < n) ? bits[q] : 0, (q >= 0 && q < n) ? val[q] : 0.0,
                        gains[i], want);
                ok = 0;
            }
        }
        CHECK(ok, "exhaustive %s: gains are not s_hat of every value",
              kind ? "bfloat16" : "float16");
        free(bits);
        free(val);
        free(order);
        free(gains);
    }
}

static void test_errors(void)
{
    float x[4 * 3] = {1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1}, s[4] = {1, 2, 3, 4};
    float bad[4 * 3];
    uint16_t h[4 * 3], hs[4];
    int64_t out[8];
    double gains[8];
    gp_view xv = gp_contiguous(x, GP_FLOAT32, 1, 4, 3), sv = gp_contiguous(s, GP_FLOAT32, 1, 4, 1);
    gp_view v, w;
    int i;
    const double nan = NAN;

    CHECK(gp_greedy(&xv, &sv, 2, 0.5, 1, out, gains) == GP_OK, "baseline call fails");
    CHECK(gp_greedy(NULL, &sv, 2, 0.5, 1, out, gains) == GP_EINVAL, "NULL features");
    CHECK(gp_greedy(&xv, &sv, 2, 0.5, 1, NULL, gains) == GP_EINVAL, "NULL order");
    CHECK(gp_select(NULL, NULL, 2, 0.5, 1, out) == GP_EINVAL, "gp_select NULL features");
    CHECK(gp_select(&xv, NULL, 2, 0.5, 1, NULL) == GP_EINVAL, "gp_select NULL indices");
    v = xv; v.data = NULL;
    CHECK(gp_greedy(&v, NULL, 2, 0.5, 1, out, NULL) == GP_EINVAL, "NULL features data");
    w = sv; w.data = NULL;
    CHECK(gp_greedy(&xv, &w, 2, 0.5, 1, out, NULL) == GP_EINVAL, "NULL saliency data");
    v = xv; v.dtype = (gp_dtype)7;
    CHECK(gp_greedy(&v, NULL, 2, 0.5, 1, out, NULL) == GP_EINVAL, "bad features dtype 7");
    v = xv; v.dtype = (gp_dtype)-1;
    CHECK(gp_greedy(&v, NULL, 2, 0.5, 1, out, NULL) == GP_EINVAL, "bad features dtype -1");
    w = sv; w.dtype = (gp_dtype)4;
    CHECK(gp_greedy(&xv, &w, 2, 0.5, 1, out, NULL) == GP_EINVAL, "bad saliency dtype 4");
    v = xv; v.rows = 0;
    CHECK(gp_greedy(&v, NULL, 1, 0.5, 1, out, NULL) == GP_EINVAL, "rows 0");
    v = xv; v.rows = -1;
    CHECK(gp_greedy(&v, NULL, 1, 0.5, 1, out, NULL) == GP_EINVAL, "rows -1");
    v = xv; v.cols = 0;
    CHECK(gp_greedy(&v, NULL, 1, 0.5, 1, out, NULL) == GP_EINVAL, "cols 0");
    v = xv; v.batch = -1;
    CHECK(gp_greedy(&v, NULL, 1, 0.5, 1, out, NULL) == GP_EINVAL, "batch -1");
    CHECK(gp_greedy(&xv, NULL, 0, 0.5, 1, out, NULL) == GP_EINVAL, "k 0");
    CHECK(gp_greedy(&xv, NULL, -1, 0.5, 1, out, NULL) == GP_EINVAL, "k -1");
    CHECK(gp_greedy(&xv, NULL, 5, 0.5, 1, out, NULL) == GP_EINVAL, "k > N");
    CHECK(gp_select(&xv, NULL, 5, 0.5, 1, out) == GP_EINVAL, "gp_select k > N");
    CHECK(gp_greedy(&xv, NULL, 4, 0.5, 1, out, NULL) == GP_OK, "k = N");
    CHECK(gp_greedy(&xv, &sv, 2, -0.1, 1, out, NULL) == GP_EINVAL, "lam -0.1");
    CHECK(gp_greedy(&xv, &sv, 2, 1.1, 1, out, NULL) == GP_EINVAL, "lam 1.1");
    CHECK(gp_greedy(&xv, &sv, 2, nan, 1, out, NULL) == GP_EINVAL, "lam NaN");
    CHECK(gp_greedy(&xv, &sv, 2, INFINITY, 1, out, NULL) == GP_EINVAL, "lam inf");
    CHECK(gp_greedy(&xv, &sv, 2, 1.0000000000000002, 1, out, NULL) == GP_EINVAL,
          "lam just above 1");
    CHECK(gp_greedy(&xv, &sv, 2, 0.0, 1, out, NULL) == GP_OK, "lam 0");
    CHECK(gp_greedy(&xv, &sv, 2, -0.0, 1, out, NULL) == GP_OK, "lam -0.0");
    CHECK(gp_greedy(&xv, &sv, 2, 1.0, 1, out, NULL) == GP_OK, "lam 1");
    w = sv; w.batch = 2;
    CHECK(gp_greedy(&xv, &w, 2, 0.5, 1, out, NULL) == GP_EINVAL, "saliency batch 2 vs 1");
    w = sv; w.rows = 3;
    CHECK(gp_greedy(&xv, &w, 2, 0.5, 1, out, NULL) == GP_EINVAL, "saliency rows 3 vs 4");
    w = sv; w.cols = 2;
    CHECK(gp_greedy(&xv, &w, 2, 0.5, 1, out, NULL) == GP_EINVAL, "saliency cols 2");
    w = sv; w.cols = 0;
    CHECK(gp_greedy(&xv, &w, 2, 0.5, 1, out, NULL) == GP_EINVAL, "saliency cols 0");

    /* batch 0: nothing to do, GP_OK, nothing written */
    v = xv; v.batch = 0;
    w = sv; w.batch = 0;
    out[0] = -77;
    CHECK(gp_greedy(&v, &w, 2, 0.5, 1, out, gains) == GP_OK && out[0] == -77, "batch 0 greedy");
    CHECK(gp_select(&v, NULL, 2, 0.5, 4, out) == GP_OK && out[0] == -77, "batch 0 select");

    /* non-finite features, each dtype; non-finite saliency */
    for (i = 0; i < 4; i++) {
        float val = i == 0 ? NAN : i == 1 ? INFINITY : i == 2 ? -INFINITY : -(float)nan;
        memcpy(bad, x, sizeof bad);
        bad[(i * 5) % 12] = val;
        v = gp_contiguous(bad, GP_FLOAT32, 1, 4, 3);
        CHECK(gp_greedy(&v, &sv, 2, 0.5, 1, out, NULL) == GP_ENONFINITE_FEATURES,
              "float32 features with %g at %d", (double)val, (i * 5) % 12);
        CHECK(gp_select(&v, NULL, 2, 0.5, 1, out) == GP_ENONFINITE_FEATURES,
              "gp_select float32 features with %g", (double)val);
        memcpy(bad, s, sizeof s);
        bad[i] = val;
        w = gp_contiguous(bad, GP_FLOAT32, 1, 4, 1);
        CHECK(gp_greedy(&xv, &w, 2, 0.5, 1, out, NULL) == GP_ENONFINITE_SALIENCY,
              "float32 saliency with %g at %d", (double)val, i);
        /* lam = 0 or 1 does not make a bad input acceptable */
        CHECK(gp_greedy(&xv, &w, 2, 0.0, 1, out, NULL) == GP_ENONFINITE_SALIENCY,
              "float32 saliency with %g, lam 0", (double)val);
    }
    {
        double xd[4 * 3], sd[4];
        for (i = 0; i < 12; i++) xd[i] = x[i];
        for (i = 0; i < 4; i++) sd[i] = s[i];
        xd[11] = INFINITY;
        v = gp_contiguous(xd, GP_FLOAT64, 1, 4, 3);
        CHECK(gp_greedy(&v, NULL, 2, 0.5, 1, out, NULL) == GP_ENONFINITE_FEATURES,
              "float64 features with inf");
        xd[11] = 1e308; /* finite but its square overflows: fine */
        CHECK(gp_greedy(&v, NULL, 2, 0.5, 1, out, NULL) == GP_OK, "float64 features 1e308");
        sd[0] = NAN;
        w = gp_contiguous(sd, GP_FLOAT64, 1, 4, 1);
        CHECK(gp_greedy(&v, &w, 2, 0.5, 1, out, NULL) == GP_ENONFINITE_SALIENCY,
              "float64 saliency NaN");
    }
    {
        static const uint16_t h_bad[3] = {0x7e00u, 0x7c00u, 0xfc00u};   /* NaN, +inf, -inf */
        static const uint16_t bf_bad[3] = {0x7fc0u, 0x7f80u, 0xff80u};
        int j;
        for (j = 0; j < 3; j++) {
            for (i = 0; i < 12; i++) h[i] = f2h(x[i]);
            for (i = 0; i < 4; i++) hs[i] = f2h(s[i]);
            v = gp_contiguous(h, GP_FLOAT16, 1, 4, 3);
            w = gp_contiguous(hs, GP_FLOAT16, 1, 4, 1);
            CHECK(gp_greedy(&v, &w, 2, 0.5, 1, out, NULL) == GP_OK, "float16 baseline");
            h[7] = h_bad[j];
            CHECK(gp_greedy(&v, &w, 2, 0.5, 1, out, NULL) == GP_ENONFINITE_FEATURES,
                  "float16 features 0x%04x", h_bad[j]);
            h[7] = f2h(1.0f);
            hs[2] = h_bad[j];
            CHECK(gp_greedy(&v, &w, 2, 0.5, 1, out, NULL) == GP_ENONFINITE_SALIENCY,
                  "float16 saliency 0x%04x", h_bad[j]);
            for (i = 0; i < 12; i++) h[i] = f2bf(x[i]);
            for (i = 0; i < 4; i++) hs[i] = f2bf(s[i]);
            v.dtype = w.dtype = GP_BFLOAT16;
            CHECK(gp_greedy(&v, &w, 2, 0.5, 1, out, NULL) == GP_OK, "bfloat16 baseline");
            h[0] = bf_bad[j];
            CHECK(gp_greedy(&v, &w, 2, 0.5, 1, out, NULL) == GP_ENONFINITE_FEATURES,
                  "bfloat16 features 0x%04x", bf_bad[j]);
            h[0] = f2bf(1.0f);
            hs[3] = bf_bad[j];
            CHECK(gp_greedy(&v, &w, 2, 0.5, 1, out, NULL) == GP_ENONFINITE_SALIENCY,
                  "bfloat16 saliency 0x%04x", bf_bad[j]);
        }
    }
    {
        /* Batches: a bad value in a later image is found, at any thread count; the first bad
         * image (in image order) decides the status. A NaN outside the view is never read. */
        enum { B = 6, N = 20, D = 9 };
        double *xb = random_matrix(B * N * D), *sb = random_matrix(B * N);
        int64_t *ob = (int64_t *)xmalloc(sizeof(int64_t) * B * 3);
        int t;
        for (t = 1; t <= 4; t *= 2) {
            void *xa, *sa;
            gp_view bv, bs;
            xb[(3 * N + 4) * D + 2] = NAN;
            sb[4 * N + 7] = INFINITY;
            bv = contiguous_copy(xb, GP_FLOAT32, B, N, D, &xa);
            bs = contiguous_copy(sb, GP_FLOAT32, B, N, 1, &sa);
            CHECK(gp_greedy(&bv, &bs, 3, 0.5, t, ob, NULL) == GP_ENONFINITE_FEATURES,
                  "batch: NaN features in image 3, inf saliency in image 4, threads %d", t);
            free(xa);
            free(sa);
            xb[(3 * N + 4) * D + 2] = 0.5;
            bv = contiguous_copy(xb, GP_FLOAT32, B, N, D, &xa);
            bs = contiguous_copy(sb, GP_FLOAT32, B, N, 1, &sa);
            CHECK(gp_greedy(&bv, &bs, 3, 0.5, t, ob, NULL) == GP_ENONFINITE_SALIENCY,
                  "batch: inf saliency in image 4, threads %d", t);
            sb[4 * N + 7] = 0.25;
            free(sa);
            bs = contiguous_copy(sb, GP_FLOAT32, B, N, 1, &sa);
            CHECK(gp_greedy(&bv, &bs, 3, 0.5, t, ob, NULL) == GP_OK, "batch: clean, threads %d",
                  t);
            /* only 3 images in the view: image 4 (bad) lies beyond it */
            sb[4 * N + 7] = NAN;
            free(sa);
            bs = contiguous_copy(sb, GP_FLOAT32, B, N, 1, &sa);
            bv.batch = bs.batch = 3;
            CHECK(gp_greedy(&bv, &bs, 3, 0.5, t, ob, NULL) == GP_OK,
                  "batch: NaN outside the view was read, threads %d", t);
            sb[4 * N + 7] = 0.25;
            free(xa);
            free(sa);
        }
        free(xb);
        free(sb);
        free(ob);
    }
}

/* A larger case: one image big enough for the multi-threaded refresh path. */
static void test_large(void)
{
    /* N * D = 280000 >= 2^18, the library's threshold for sharing one image between threads */
    enum { N = 4000, D = 70, K = 300 };
    double *x, *s;
    int64_t *o1 = (int64_t *)xmalloc(sizeof(int64_t) * K), *o2 = (int64_t *)xmalloc(sizeof(int64_t) * K);
    double *g1 = (double *)xmalloc(sizeof(double) * K), *g2 = (double *)xmalloc(sizeof(double) * K);
    gp_status a, b;
    int di;
    static const gp_dtype dtypes[2] = {GP_FLOAT32, GP_FLOAT64};
    rng_seed(2024);
    x = random_matrix((int64_t)N * D);
    s = random_matrix(N);
    for (di = 0; di < 2; di++) {
        void *xa, *sa;
        gp_view xv = contiguous_copy(x, dtypes[di], 1, N, D, &xa);
        gp_view sv = contiguous_copy(s, dtypes[di], 1, N, 1, &sa);
        a = gp_greedy(&xv, NULL, K, 0.0, 1, o1, g1);
        b = gp_greedy(&xv, NULL, K, 0.0, 2, o2, g2);
        CHECK(a == GP_OK && b == GP_OK && same_i64(o1, o2, K) && same_f64(g1, g2, K),
              "large dtype %d lam=0: 1 vs 2 threads differ", (int)dtypes[di]);
        CHECK(reference_ok("large lam=0", x, NULL, N, D, K, 0.0, o1, g1,
                           dtypes[di] == GP_FLOAT64 ? 1e-9 : 1e-4),
              "large dtype %d lam=0: disagrees with the reference", (int)dtypes[di]);
        a = gp_greedy(&xv, &sv, K, 0.3, 1, o1, g1);
        b = gp_greedy(&xv, &sv, K, 0.3, 2, o2, g2);
        CHECK(a == GP_OK && b == GP_OK && same_i64(o1, o2, K) && same_f64(g1, g2, K),
              "large dtype %d lam=0.3: 1 vs 2 threads differ", (int)dtypes[di]);
        if (di == 0)
            CHECK(reference_ok("large lam=0.3", x, s, N, D, K, 0.3, o1, g1, 1e-4),
                  "large lam=0.3: disagrees with the reference");
        free(xa);
        free(sa);
    }
    free(x);
    free(s);
    free(o1);
    free(o2);
    free(g1);
    free(g2);
}

/* Rows of extreme magnitude: tiny float32 rows must not read as zero rows, and rows whose norm
 * overflows the compute type must keep their direction. */
static void test_extreme_magnitudes(void)
{
    int64_t order[3];
    double gains[3];
    gp_status st;
    int c;
    {
        /* float32 row of magnitude 1e-25 with D >= 32: its squares underflow float accumulators,
         * the row is taken as a zero row. Row 1 is parallel to row 0 (d = 0), row 2 orthogonal
         * (d = 0.5): with lam = 0 the second pick must be 2. */
        double x[3 * 32];
        for (c = 0; c < 32; c++) {
            x[c] = 1.0;
            x[32 + c] = 1e-25;
            x[64 + c] = (c % 2) ? -1.0 : 1.0;
        }
        st = run_greedy(x, NULL, GP_FLOAT32, 1, 3, 32, 2, 0.0, 1, order, gains);
        CHECK(st == GP_OK && order[1] == 2, "tiny float32 row: second pick %ld, want 2",
              (long)order[1]);
        st = run_greedy(x, NULL, GP_BFLOAT16, 1, 3, 32, 2, 0.0, 1, order, gains);
        CHECK(st == GP_OK && order[1] == 2, "tiny bfloat16 row: second pick %ld, want 2",
              (long)order[1]);
    }
    {
        /* Rows of norm above the type's maximum: float32 dot product lanes overflow (inf - inf
         * = NaN distance, ignored); a float64 norm overflows to inf (row taken as zero). Row 1 is
         * orthogonal to row 0 (d = 0.5), row 2 opposite (d = 1): second pick must be 2. */
        enum { E = 2048 };
        double *x = (double *)xmalloc(sizeof(double) * 3 * E);
        for (c = 0; c < E; c++) {
            x[c] = 3e38;
            x[E + c] = ((c % 32) % 2) ? -3e38 : 3e38;
            x[2 * E + c] = -1.0;
        }
        st = run_greedy(x, NULL, GP_FLOAT32, 1, 3, E, 2, 0.0, 1, order, gains);
        CHECK(st == GP_OK && order[1] == 2, "huge float32 rows: second pick %ld, want 2",
              (long)order[1]);
        for (c = 0; c < E; c++) {
            x[c] = 1e308;
            x[E + c] = ((c % 16) % 2) ? -1e308 : 1e308;
        }
        st = run_greedy(x, NULL, GP_FLOAT64, 1, 3, E, 2, 0.0, 1, order, gains);
        CHECK(st == GP_OK && order[1] == 2, "huge float64 rows: second pick %ld, want 2",
              (long)order[1]);
        free(x);
    }
}

/* ---------------------------------------------------------------- robustness */

/* Views that repeat elements through zero strides can describe more rows, or longer rows, than
 * any memory holds: every size must be refused, never wrap around. */
static void test_size_overflow(void)
{
    static const float one = 1.0f;
    int64_t out[4];
    gp_view v, w;
    /* Python's broadcast_to(zeros((1, 1)), ((3 * 2**61 + 1) // 7, 1)): N * 56 bytes wraps */
    v = gp_contiguous(&one, GP_FLOAT32, 1, 1, 1);
    v.rows = (3 * ((int64_t)1 << 61) + 1) / 7;
    v.row_stride = 0;
    CHECK(gp_greedy(&v, NULL, 1, 0.5, 1, out, NULL) == GP_ENOMEM, "broadcast rows (3*2^61+1)/7");
    CHECK(gp_select(&v, NULL, 1, 0.5, 4, out) == GP_ENOMEM, "gp_select broadcast rows, 4 threads");
    v.rows = INT64_MAX;
    CHECK(gp_greedy(&v, NULL, 1, 0.5, 1, out, NULL) == GP_ENOMEM, "broadcast rows INT64_MAX");
    /* K x D picked elements wrap: rows of 2^62 repeated elements */
    v.rows = 2;
    v.cols = (int64_t)1 << 62;
    v.col_stride = 0;
    CHECK(gp_greedy(&v, NULL, 2, 0.5, 1, out, NULL) == GP_ENOMEM, "broadcast cols 2^62");
    CHECK(gp_greedy(&v, NULL, 2, 0.5, 4, out, NULL) == GP_ENOMEM, "broadcast cols 2^62, 4 threads");
    /* elements farther apart than any address space: refused before anything is read */
    v = gp_contiguous(&one, GP_FLOAT32, 1, 3, 1);
    v.row_stride = INT64_MAX / 2;
    CHECK(gp_greedy(&v, NULL, 1, 0.5, 1, out, NULL) == GP_EINVAL, "row stride INT64_MAX / 2");
    v.row_stride = INT64_MIN;
    CHECK(gp_greedy(&v, NULL, 1, 0.5, 1, out, NULL) == GP_EINVAL, "row stride INT64_MIN");
    v = gp_contiguous(&one, GP_FLOAT64, 1, 1, 3);
    v.col_stride = (int64_t)1 << 61; /* 2^62 elements of 8 bytes apart */
    CHECK(gp_greedy(&v, NULL, 1, 0.5, 1, out, NULL) == GP_EINVAL, "col stride 2^61 (float64)");
    v = gp_contiguous(&one, GP_FLOAT32, 1, 3, 1);
    v.row_stride = 0;
    w = v;
    w.row_stride = -((int64_t)1 << 62);
    CHECK(gp_greedy(&v, &w, 1, 0.5, 1, out, NULL) == GP_EINVAL, "saliency row stride -2^62");
    /* B * K outputs of 8 bytes cannot exist */
    v = gp_contiguous(&one, GP_FLOAT32, (int64_t)1 << 61, 1, 1);
    v.batch_stride = 0;
    CHECK(gp_greedy(&v, NULL, 1, 0.5, 1, out, NULL) == GP_EINVAL, "batch 2^61: 2^64 output bytes");
    /* gp_contiguous of an array that cannot exist */
    v = gp_contiguous(&one, GP_FLOAT32, 1, (int64_t)1 << 40, (int64_t)1 << 40);
    CHECK(v.cols == 0 && gp_greedy(&v, NULL, 1, 0.5, 1, out, NULL) == GP_EINVAL,
          "gp_contiguous 2^40 x 2^40");
}

/* Rows pointing the same or the opposite way are at distance exactly 0 or 1, so they tie exactly
 * and the lowest index wins, in float64 and float32 alike. */
static void test_parallel_rows_tie_exactly(void)
{
    /* D = 1, lam = 0.5: after pick 0 every distance is 0, and index 1 wins the tie */
    static const double x1[3] = {1.4192704327512633, 0.11357618410652277, 0.16977419616931896};
    static const gp_dtype dtypes[2] = {GP_FLOAT64, GP_FLOAT32};
    int64_t order[24], want[24];
    double gains[24];
    int di, trial;
    gp_status st = run_greedy(x1, NULL, GP_FLOAT64, 1, 3, 1, 2, 0.5, 1, order, gains);
    CHECK(st == GP_OK && order[0] == 0 && order[1] == 1 && gains[0] == 0.5 && gains[1] == 0.0,
          "D=1 example: order %ld %ld gains %.17g %.17g, want 0 1, 0.5 0", (long)order[0],
          (long)order[1], gains[0], gains[1]);
    /* Scaled copies of one row, factors of both signs and many magnitudes, lam = 0: pick 0, then
     * the first row pointing the other way (distance 1), then the rest in index order (0). */
    rng_seed(77);
    for (di = 0; di < 2; di++)
        for (trial = 0; trial < 40; trial++) {
            enum { N = 24 };
            int64_t d = trial % 2 ? 7 : 1, i, c, opposite = -1, next = 1;
            double base[7], factor[N], x[N * 7];
            for (c = 0; c < d; c++) base[c] = rng_uniform();
            for (i = 0; i < N; i++) {
                double u = rng_uniform();
                factor[i] = (u < 0 ? u - 0.01 : u + 0.01) * exp(3.0 * rng_uniform());
                for (c = 0; c < d; c++) x[i * d + c] = factor[i] * base[c];
                if (opposite < 0 && (factor[i] < 0) != (factor[0] < 0)) opposite = i;
            }
            want[0] = 0;
            if (opposite > 0) want[next++] = opposite;
            for (i = 1; i < N; i++)
                if (i != opposite) want[next++] = i;
            st = run_greedy(x, NULL, dtypes[di], 1, N, d, N, 0.0, 1, order, gains);
            for (i = 0; i < N; i++)
                if (order[i] != want[i] ||
                    gains[i] != (i == 0 || (i == 1 && opposite > 0) ? 1.0 : 0.0))
                    break;
            CHECK(st == GP_OK && i == N,
                  "scaled copies dtype %d D=%ld trial %d: step %ld picked %ld (gain %.17g), want %ld",
                  (int)dtypes[di], (long)d, trial, (long)i, i < N ? (long)order[i] : -1L,
                  i < N ? gains[i] : 0.0, i < N ? (long)want[i] : -1L);
        }
}

/* float32 sums must not lose accuracy with D (docs/spec.md §2: each pick within 1e-4 in gain). Rows of
 * 32 large entries and 2^20 small ones: in one float accumulator per lane, the small products
 * would vanish next to the large ones and the norms come out 2e-4 short. */
static void test_long_rows_float32(void)
{
    enum { N = 5, K = 5 };
    const int64_t d = (int64_t)1 << 20;
    double *x = (double *)xmalloc((size_t)(N * d) * sizeof(double));
    int64_t order[K], i;
    double gains[K];
    gp_status st;
    rng_seed(5);
    for (i = 0; i < N * d; i++)
        x[i] = i % d < 32 ? 100.0 * (1.0 + 0.001 * rng_uniform()) : 0.02 * rng_uniform();
    st = run_greedy(x, NULL, GP_FLOAT32, 1, N, d, K, 0.0, 1, order, gains);
    CHECK(st == GP_OK && reference_ok("long float32 rows", x, NULL, N, d, K, 0.0, order, gains,
                                      1e-4),
          "float32 rows of 2^20 elements: not within 1e-4 of the reference");
    free(x);
}

#ifdef __SSE2__
/* The caller's flush-to-zero / denormals-are-zero mode (set on its thread only) must change
 * nothing: rows of subnormal floats are real directions, on every thread. */
static void test_caller_fp_mode(void)
{
    enum { B = 8, N = 40, D = 16, K = 12 };
    static const int threads[3] = {1, 2, 4};
    double *x = random_matrix((int64_t)B * N * D);
    int64_t *want = (int64_t *)xmalloc(sizeof(int64_t) * B * K);
    int64_t *order = (int64_t *)xmalloc(sizeof(int64_t) * B * K);
    double *want_g = (double *)xmalloc(sizeof(double) * B * K);
    double *gains = (double *)xmalloc(sizeof(double) * B * K);
    unsigned int mode = _mm_getcsr();
    void *xa;
    gp_view xv;
    int64_t i;
    int t;
    for (i = 0; i < (int64_t)B * N; i += 2) { /* every other row: subnormal in float32 */
        int64_t c;
        for (c = 0; c < D; c++) x[i * D + c] *= 1e-39;
    }
    xv = contiguous_copy(x, GP_FLOAT32, B, N, D, &xa);
    CHECK(gp_greedy(&xv, NULL, K, 0.3, 1, want, want_g) == GP_OK, "fp mode: baseline");
    for (t = 0; t < 3; t++) {
        gp_status st;
        unsigned int after;
        _mm_setcsr(mode | 0x8040u); /* flush-to-zero and denormals-are-zero, this thread only */
        st = gp_greedy(&xv, NULL, K, 0.3, threads[t], order, gains);
        after = _mm_getcsr();
        _mm_setcsr(mode);
        CHECK(st == GP_OK && same_i64(order, want, B * K) && same_f64(gains, want_g, B * K),
              "flush-to-zero on the caller's thread changes the answer at %d threads", threads[t]);
        CHECK((after & ~0x3fu) == ((mode | 0x8040u) & ~0x3fu),
              "the caller's floating-point mode was not restored (%#x)", after);
    }
    free(x);
    free(xa);
    free(want);
    free(order);
    free(want_g);
    free(gains);
}
#endif

/* gp_options.interrupt: called only from the calling thread; a nonzero answer stops the call. */
typedef struct interrupt_probe {
    int calls, stop_at, foreign_calls;
#ifdef HAVE_POSIX
    pthread_t caller;
#endif
} interrupt_probe;

static int probe_interrupt(void *context)
{
    interrupt_probe *p = (interrupt_probe *)context;
#ifdef HAVE_POSIX
    if (!pthread_equal(pthread_self(), p->caller)) {
        p->foreign_calls++;
        return 0;
    }
#endif
    return ++p->calls >= p->stop_at;
}

static gp_status run_probed(const gp_view *xv, int64_t k, double lam, int threads, int stop_at,
                            interrupt_probe *probe, int64_t *order, double *gains)
{
    gp_options options;
    memset(&options, 0, sizeof options);
    memset(probe, 0, sizeof *probe);
    probe->stop_at = stop_at;
#ifdef HAVE_POSIX
    probe->caller = pthread_self();
#endif
    options.num_threads = threads;
    options.interrupt = probe_interrupt;
    options.interrupt_context = probe;
    return gp_greedy_with(xv, NULL, k, lam, &options, order, gains);
}

static void test_interrupt(void)
{
    static const float row[16] = {1, -2, 3, 0, 5, 1, 1, 2, -1, 0, 0, 4, 2, 2, -3, 1};
    enum { B = 4, N = 3000, D = 64, K = 3000 };
    int64_t order[B * 4], want[B * 4], *o1 = (int64_t *)xmalloc(sizeof(int64_t) * K);
    int64_t *o2 = (int64_t *)xmalloc(sizeof(int64_t) * K);
    double gains[B * 4], want_g[B * 4];
    interrupt_probe probe;
    gp_view v = gp_contiguous(row, GP_FLOAT32, 1, (int64_t)1 << 20, 16), xv;
    double *x;
    void *xa;
    gp_status st;
    /* One image of 2^24 elements (a broadcast row): polled in the pass over the features. */
    v.row_stride = 0;
    CHECK(gp_greedy(&v, NULL, 4, 0.5, 2, want, want_g) == GP_OK, "interrupt: baseline");
    st = run_probed(&v, 4, 0.5, 2, INT_MAX, &probe, order, gains);
    CHECK(st == GP_OK && probe.calls >= 1 && probe.foreign_calls == 0 &&
              same_i64(order, want, 4) && same_f64(gains, want_g, 4),
          "interrupt never asked: status %d, %d calls, %d from other threads", (int)st,
          probe.calls, probe.foreign_calls);
    st = run_probed(&v, 4, 0.5, 2, 1, &probe, order, gains);
    CHECK(st == GP_EINTERRUPTED && probe.calls == 1, "interrupt in the first pass: %d, %d calls",
          (int)st, probe.calls);
    /* Images in parallel: only the calling thread asks, and every thread stops. */
    v.batch = B;
    v.batch_stride = 0;
    CHECK(gp_greedy(&v, NULL, 4, 0.5, 2, want, want_g) == GP_OK, "interrupt: batch baseline");
    st = run_probed(&v, 4, 0.5, 2, INT_MAX, &probe, order, gains);
    CHECK(st == GP_OK && probe.calls >= 1 && probe.foreign_calls == 0 &&
              same_i64(order, want, B * 4) && same_f64(gains, want_g, B * 4),
          "batch, interrupt never asked: status %d, %d calls, %d from other threads", (int)st,
          probe.calls, probe.foreign_calls);
    st = run_probed(&v, 4, 0.5, 2, 1, &probe, order, gains);
    CHECK(st == GP_EINTERRUPTED && probe.foreign_calls == 0, "batch interrupt: status %d", (int)st);
    /* Between greedy steps: farthest-point sampling of every token. */
    rng_seed(8);
    x = random_matrix((int64_t)N * D);
    xv = contiguous_copy(x, GP_FLOAT32, 1, N, D, &xa);
    st = run_probed(&xv, K, 0.0, 1, INT_MAX, &probe, o1, NULL);
    CHECK(st == GP_OK && probe.calls >= 3 && gp_greedy(&xv, NULL, K, 0.0, 1, o2, NULL) == GP_OK &&
              same_i64(o1, o2, K),
          "steps, interrupt never asked: status %d, %d calls", (int)st, probe.calls);
    st = run_probed(&xv, K, 0.0, 1, 3, &probe, o1, NULL);
    CHECK(st == GP_EINTERRUPTED && probe.calls == 3, "interrupt between steps: %d, %d calls",
          (int)st, probe.calls);
    CHECK(gp_select_with(&xv, NULL, 5, 0.5, NULL, o1) == GP_OK &&
              gp_select(&xv, NULL, 5, 0.5, 0, o2) == GP_OK && same_i64(o1, o2, 5),
          "gp_select_with(options NULL) differs from gp_select");
    free(x);
    free(xa);
    free(o1);
    free(o2);
}

#if defined(_OPENMP) && defined(HAVE_POSIX)
/* Images in parallel where the calling thread's share ends first: it keeps polling while the
 * other thread works, so an interrupt still stops the call. Image 0 holds a NaN and fails after
 * one slice of the pass (one poll); image 1 is a pass over 2^26 elements (four slices). */
static void test_interrupt_after_own_share(void)
{
    enum { N = 1 << 20, D = 64, K = 4 };
    float rows[2 * D];
    int64_t order[2 * K];
    double gains[2 * K];
    interrupt_probe probe;
    gp_view v;
    gp_status st;
    int c;
    if (omp_get_num_procs() < 2) {
        printf("interrupt after the caller's share: skipped (one CPU: no second thread)\n");
        return;
    }
    for (c = 0; c < 2 * D; c++) rows[c] = (float)(c % 7) - 3.0f;
    rows[0] = NAN;
    v = gp_contiguous(rows, GP_FLOAT32, 2, N, D);
    v.row_stride = 0; /* every row of an image the same */
    v.batch_stride = D;
    CHECK(gp_greedy(&v, NULL, K, 1.0, 1, order, gains) == GP_ENONFINITE_FEATURES,
          "waiting caller: serial baseline");
    /* Never asked to stop: the answer of one thread, and the caller polls while it waits (at
     * least 3 calls whichever image it took). */
    st = run_probed(&v, K, 1.0, 2, INT_MAX, &probe, order, gains);
    CHECK(st == GP_ENONFINITE_FEATURES && probe.calls >= 3 && probe.foreign_calls == 0,
          "waiting caller, never asked: status %d, %d calls, %d from other threads", (int)st,
          probe.calls, probe.foreign_calls);
    /* Asked at the second call: after the NaN image's only poll, while the other image runs. */
    st = run_probed(&v, K, 1.0, 2, 2, &probe, order, gains);
    CHECK(st == GP_EINTERRUPTED && probe.calls == 2 && probe.foreign_calls == 0,
          "waiting caller, asked at call 2: status %d, %d calls", (int)st, probe.calls);
}
#endif

#ifdef _OPENMP
/* One image per caller thread from inside the caller's own parallel region, on rows that go
 * through the scratch row (float16) and are large enough to share (N * D = 2^22). */
static void test_nested_parallel(void)
{
    enum { N = 4096, D = 1024, K = 6 };
    double *x = random_matrix((int64_t)N * D);
    void *xa;
    gp_view xv = contiguous_copy(x, GP_FLOAT16, 1, N, D, &xa);
    int64_t want[K];
    double want_g[K];
    int wrong = 0;
    CHECK(gp_greedy(&xv, NULL, K, 0.0, 2, want, want_g) == GP_OK, "nested: baseline");
#pragma omp parallel num_threads(3) reduction(+ : wrong)
    {
        int64_t order[K];
        double gains[K];
        gp_status st = gp_greedy(&xv, NULL, K, 0.0, 2, order, gains);
        wrong += st != GP_OK || !same_i64(order, want, K) || !same_f64(gains, want_g, K);
    }
    CHECK(wrong == 0, "nested: %d of 3 calls from inside a parallel region differ", wrong);
    free(x);
    free(xa);
}

#ifdef __linux__
static long process_threads(void)
{
    char line[256];
    long threads = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL) return -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "Threads:", 8) == 0) threads = strtol(line + 8, NULL, 10);
    fclose(f);
    return threads;
}
#endif

/* num_threads = INT_MAX is legal: the team is the CPUs available, no more. */
static void test_thread_cap(void)
{
    enum { B = 96, N = 5, D = 3, K = 2 };
    double *x = random_matrix((int64_t)B * N * D);
    int64_t want[B * K], order[B * K];
    double want_g[B * K], gains[B * K];
    int procs = omp_get_num_procs(), previous = omp_get_max_threads();
    void *xa;
    gp_view xv = contiguous_copy(x, GP_FLOAT32, B, N, D, &xa);
    gp_status st;
#ifdef __linux__
    long before = process_threads(), after;
#endif
    CHECK(gp_greedy(&xv, NULL, K, 0.5, 1, want, want_g) == GP_OK, "thread cap: baseline");
    st = gp_greedy(&xv, NULL, K, 0.5, INT_MAX, order, gains);
    CHECK(st == GP_OK && same_i64(order, want, B * K) && same_f64(gains, want_g, B * K),
          "num_threads INT_MAX: status %d or a different answer", (int)st);
#ifdef __linux__
    after = process_threads();
    CHECK(after - before <= procs - 1, "num_threads INT_MAX started %ld threads on %d CPUs",
          after - before, procs);
#endif
    omp_set_num_threads(100000); /* the default: OMP_NUM_THREADS=100000, say */
    st = gp_greedy(&xv, NULL, K, 0.5, 0, order, gains);
    omp_set_num_threads(previous);
    CHECK(st == GP_OK && same_i64(order, want, B * K), "default of 100000 threads: status %d",
          (int)st);
#ifdef __linux__
    after = process_threads();
    CHECK(after - before <= procs - 1, "a default of 100000 threads started %ld on %d CPUs",
          after - before, procs);
#endif
    free(x);
    free(xa);
}

#ifdef HAVE_POSIX
/* A child forked after the parent ran a team must not wait for the parent's threads. */
static void test_fork(void)
{
    enum { B = 4, N = 50, D = 8, K = 5 };
    double *x = random_matrix((int64_t)B * N * D);
    int64_t want[B * K];
    double want_g[B * K];
    void *xa;
    gp_view xv = contiguous_copy(x, GP_FLOAT32, B, N, D, &xa);
    pid_t pid;
    int status = 0;
    CHECK(gp_greedy(&xv, NULL, K, 0.5, 2, want, want_g) == GP_OK, "fork: parent");
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid == 0) {
        int64_t order[B * K];
        double gains[B * K];
        gp_status st;
        alarm(30); /* a hang ends the child with SIGALRM */
        st = gp_greedy(&xv, NULL, K, 0.5, 2, order, gains);
        _exit(st == GP_OK && same_i64(order, want, B * K) && same_f64(gains, want_g, B * K) ? 0
                                                                                          : 3);
    }
    if (pid > 0 && waitpid(pid, &status, 0) != pid) status = -1;
    CHECK(pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "fork: the child failed or hung (wait status %#x)", status);
    free(x);
    free(xa);
}
#endif
#endif /* _OPENMP */

int main(void)
{
    rng_seed(1);
    test_meta();
    test_hand();
    test_special_cases();
    test_random_reference();
    test_threads_and_batch();
    test_layouts();
    test_half_types();
    test_half_conversion_exhaustive();
    test_errors();
    test_large();
    test_extreme_magnitudes();
    test_size_overflow();
    test_parallel_rows_tie_exactly();
    test_long_rows_float32();
#ifdef __SSE2__
    test_caller_fp_mode();
#endif
    test_interrupt();
#if defined(_OPENMP) && defined(HAVE_POSIX)
    test_interrupt_after_own_share();
#endif
#ifdef _OPENMP
    test_thread_cap();
    test_nested_parallel();
#ifdef HAVE_POSIX
    test_fork();
#endif
#endif
    printf("%d passed, %d failed\n", g_passed, g_failed);
    fflush(stdout); /* LeakSanitizer reports at exit, before stdio would flush */
    return g_failed == 0 ? 0 : 1;
}
