/*
 * greedyprune.c: the GreedyPrune selection rule (docs/spec.md §1), the one C implementation.
 *
 * How it is fast without changing the answer: lazy greedy. Every candidate keeps m_i, its
 * minimum distance to the picks it has been compared with so far (a prefix of the picks), and
 * the gain computed from it. m only decreases as picks are added, so a stale gain is an upper
 * bound on the true one. A max-heap ordered by (gain desc, index asc) holds the candidates.
 * While its top is stale we refresh it against the picks it has not seen, stopping early once it
 * ranks below its best rival, and let it sink. When the top is fresh, its exact gain is at least
 * every other candidate's upper bound, and any candidate with an equal bound has a higher index,
 * so it is exactly the plain greedy's pick, tie rule included. Which candidates get refreshed,
 * and how far, never changes a computed number: each distance is computed by the same function
 * of the same two rows, and a minimum does not depend on the order it is taken in.
 *
 * The first pick needs no features (every m is 1), so the one pass over the features that finds
 * the norms and checks finiteness also computes every candidate's distance to the first pick.
 *
 * Memory per image: O(N) bookkeeping plus the K picked unit rows (K x D): never N x N.
 *
 * Rows are read in place when their elements are contiguous (float32/float64); otherwise one row
 * at a time is gathered (and float16/bfloat16 converted) into a per-thread scratch row, so every
 * layout reaches the same arithmetic on the same values. Dot products use a fixed set of
 * independent accumulators rather than a compiler-reassociated reduction, so their rounding does
 * not depend on a row's alignment in memory: equal rows give bit-equal distances. They sum blocks
 * of GP_BLOCK elements in those accumulators and the blocks in double, so the error of a float32
 * dot product is that of a GP_BLOCK-element sum whatever D is.
 *
 * Robustness: every size is computed with overflow checks; the caller's floating-point mode is
 * replaced by the default one on every thread for the duration of a call; the thread team is
 * capped at the CPUs available, and is not used inside the caller's parallel region or in a
 * forked child (greedyprune.h, "Threads").
 */
#if defined(__unix__) || defined(__APPLE__)
#define _POSIX_C_SOURCE 200809L /* pthread_atfork under -std=c99 */
#endif
#include "greedyprune.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(_OPENMP) && (defined(__unix__) || defined(__APPLE__))
#include <pthread.h>
#include <time.h>
#define GP_DETECT_FORK 1
#define GP_TEAM_WAIT 1
#endif
#if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
#include <xmmintrin.h>
#define GP_MXCSR 1
#else
#include <fenv.h>
#endif

/* Below this many elements a pass over one image stays on one thread: starting a team costs
 * microseconds on a quiet machine, and milliseconds when another job holds a core. */
#define GP_PARALLEL_MIN_WORK ((int64_t)1 << 22)
/* gp_options.interrupt is called about once per this many elements read (a few milliseconds),
 * and every this many nanoseconds while the calling thread waits for the rest of its team. */
#define GP_POLL_WORK ((int64_t)1 << 24)
#define GP_WAIT_POLL_NS 2000000L
/* ... after spinning this long (seconds) without sleeping. */
#define GP_WAIT_SPIN_SECONDS 2e-4
/* Rows whose norm lies in this range have their sum of squares accumulated in the compute type
 * and take part in dot products as they are: no square or product can overflow or fall into
 * the subnormal range where it would lose precision. Other rows are measured after scaling by
 * their largest entry, in double, and take part as unit copies. */
#define GP_NORM_MIN_F32 1e-15
#define GP_NORM_MAX_F32 1e15
#define GP_NORM_MIN_F64 1e-140
#define GP_NORM_MAX_F64 1e140
/* Independent accumulators in the dot products (a multiple of any SIMD width in use), and the
 * elements they sum before their total is added to a double (a multiple of both lane counts). */
#define GP_LANES_F32 32
#define GP_LANES_F64 16
#define GP_BLOCK 4096

/* The hot loops get an AVX2 and an AVX-512 clone, chosen at load time (GCC on x86-64 Linux). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(GP_NO_TARGET_CLONES) && !defined(__SANITIZE_ADDRESS__)
#define GP_TARGET_CLONES 1
#define GP_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GP_HOT
#endif

unsigned gp_version_number(void) { return GP_VERSION_NUMBER; }

const char *gp_strerror(gp_status status)
{
    switch (status) {
    case GP_OK: return "success";
    case GP_EINVAL: return "invalid argument (NULL pointer, shape, dtype, k or lam out of range)";
    case GP_ENONFINITE_FEATURES: return "features must be finite, but contains NaN or infinity";
    case GP_ENONFINITE_SALIENCY: return "saliency must be finite, but contains NaN or infinity";
    case GP_ENOMEM: return "out of memory";
    case GP_EINTERRUPTED: return "interrupted at the caller's request";
    }
    return "unknown status";
}

const char *gp_simd_variant(void)
{
#ifdef GP_TARGET_CLONES
    /* The same tests, in the same order, as the resolver GCC emits for GP_HOT's clones. */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4"))
        return "x86-64-v4 (AVX-512), chosen at load time among x86-64-v4, x86-64-v3, x86-64";
    if (__builtin_cpu_supports("x86-64-v3"))
        return "x86-64-v3 (AVX2), chosen at load time among x86-64-v4, x86-64-v3, x86-64";
    return "x86-64 (SSE2), chosen at load time among x86-64-v4, x86-64-v3, x86-64";
#elif defined(__AVX512F__)
    return "AVX-512 (the compile-time target; no load-time choice in this build)";
#elif defined(__AVX2__)
    return "AVX2 (the compile-time target; no load-time choice in this build)";
#elif defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
    return "SSE2 (the compile-time target; no load-time choice in this build)";
#elif defined(__ARM_NEON) || defined(_M_ARM64)
    return "NEON (the compile-time target; no load-time choice in this build)";
#else
    return "portable C (the compile-time target; no load-time choice in this build)";
#endif
}

int gp_has_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* ---------------------------------------------------------------- threads */

#ifdef GP_DETECT_FORK
/* Set in a child process forked after the first call: libgomp's thread pool does not survive
 * fork() (its threads are gone, and a team start would wait for them forever). */
static volatile int g_forked_child = 0;
static pthread_once_t g_fork_once = PTHREAD_ONCE_INIT;
static void note_fork_in_child(void) { g_forked_child = 1; }
static void watch_forks(void) { pthread_atfork(NULL, NULL, note_fork_in_child); }
#endif

/* How many threads one call may use: the CPUs available to the process, or 1 where a team must
 * not be started (inside the caller's active parallel region, in a forked child). */
static int available_threads(void)
{
#ifdef _OPENMP
#ifdef GP_DETECT_FORK
    pthread_once(&g_fork_once, watch_forks); /* before this process can have a thread pool */
    if (g_forked_child) return 1;
#endif
    if (omp_in_parallel()) return 1;
    {
        int procs = omp_get_num_procs();
        return procs > 1 ? procs : 1;
    }
#else
    return 1;
#endif
}

/* The team one call uses: what it asks for, at most what is available. */
static int team_size(int num_threads)
{
    int available = available_threads();
    int wanted = num_threads > 0 ? num_threads : gp_default_num_threads();
    return wanted < available ? wanted : available;
}

int gp_default_num_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* This thread's index in the team of the parallel region it runs (0 outside one). Only called
 * inside regions this file opens: a call never opens one inside the caller's own. */
static int team_thread(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* ---------------------------------------------------------------- floating-point mode */

/* The caller's mode, saved while a call computes in the default one. */
typedef struct fp_mode {
#ifdef GP_MXCSR
    unsigned int mxcsr;
#else
    fenv_t env;
#endif
} fp_mode;

/* Save this thread's floating-point mode and switch to the default: round to nearest, subnormal
 * numbers read and produced as they are, every exception masked. */
static fp_mode enter_default_fp_mode(void)
{
    fp_mode saved;
#ifdef GP_MXCSR
    saved.mxcsr = _mm_getcsr();
    _mm_setcsr(0x1f80u); /* MXCSR's power-on value: all masked, nearest, no FTZ/DAZ */
#else
    fegetenv(&saved.env);
    fesetenv(FE_DFL_ENV);
#endif
    return saved;
}

static void restore_fp_mode(const fp_mode *saved)
{
#ifdef GP_MXCSR
    _mm_setcsr(saved->mxcsr);
#else
    fesetenv(&saved->env);
#endif
}

/* ---------------------------------------------------------------- sizes */

/* *out = a * b * unit, when a, b >= 0 and the product fits in size_t and in ptrdiff_t. */
static int checked_size(int64_t a, int64_t b, size_t unit, size_t *out)
{
    const uint64_t limit = (uint64_t)PTRDIFF_MAX < (uint64_t)SIZE_MAX ? (uint64_t)PTRDIFF_MAX
                                                                      : (uint64_t)SIZE_MAX;
    uint64_t p;
    if (a < 0 || b < 0) return 0;
    p = (uint64_t)a;
    if (b != 0 && p > limit / (uint64_t)b) return 0;
    p *= (uint64_t)b;
    if (unit != 0 && p > limit / unit) return 0;
    *out = (size_t)(p * unit);
    return 1;
}

/* *total += add, when the sum fits in ptrdiff_t. */
static int checked_add(size_t *total, size_t add)
{
    if (add > (size_t)PTRDIFF_MAX - *total) return 0;
    *total += add;
    return 1;
}

gp_view gp_contiguous(const void *data, gp_dtype dtype, int64_t batch, int64_t rows, int64_t cols)
{
    gp_view v;
    v.data = data;
    v.dtype = dtype;
    v.batch = batch;
    v.rows = rows;
    v.cols = cols;
    v.batch_stride = 0;
    v.row_stride = cols;
    v.col_stride = 1;
    if (rows >= 1 && cols >= 1) { /* other shapes are refused by gp_greedy */
        if (rows <= INT64_MAX / cols)
            v.batch_stride = rows * cols;
        else
            v.cols = 0; /* no such array: refused by gp_greedy */
    }
    return v;
}

/* ---------------------------------------------------------------- element access */

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    float f;
    if (exponent == 0) { /* zero or subnormal: mantissa * 2^-24, exact in float */
        f = (float)mantissa * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    if (exponent == 0x1f)
        bits = sign | 0x7f800000u | (mantissa << 13); /* infinity or NaN */
    else
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13); /* rebias 15 -> 127 */
    memcpy(&f, &bits, sizeof f);
    return f;
}

static float bfloat16_to_float(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static int valid_dtype(gp_dtype dtype)
{
    return dtype == GP_FLOAT32 || dtype == GP_FLOAT64 || dtype == GP_FLOAT16 ||
           dtype == GP_BFLOAT16;
}

static double load_scalar(const gp_view *v, int64_t b, int64_t i)
{
    int64_t off = b * v->batch_stride + i * v->row_stride;
    switch (v->dtype) {
    case GP_FLOAT32: return ((const float *)v->data)[off];
    case GP_FLOAT64: return ((const double *)v->data)[off];
    case GP_FLOAT16: return half_to_float(((const uint16_t *)v->data)[off]);
    case GP_BFLOAT16: return bfloat16_to_float(((const uint16_t *)v->data)[off]);
    }
    return NAN;
}

/* Row i of image b in the compute type (double for float64 input, float otherwise): a pointer
 * into the input when its elements are contiguous and already of that type, else `scratch`
 * (room for `cols` doubles) filled with the row's exact values. */
static const void *load_row(const gp_view *v, int64_t b, int64_t i, void *scratch)
{
    int64_t off = b * v->batch_stride + i * v->row_stride, cs = v->col_stride, c;
    switch (v->dtype) {
    case GP_FLOAT32: {
        const float *p = (const float *)v->data + off;
        float *out = (float *)scratch;
        if (cs == 1) return p;
        for (c = 0; c < v->cols; c++) out[c] = p[c * cs];
        return out;
    }
    case GP_FLOAT64: {
        const double *p = (const double *)v->data + off;
        double *out = (double *)scratch;
        if (cs == 1) return p;
        for (c = 0; c < v->cols; c++) out[c] = p[c * cs];
        return out;
    }
    case GP_FLOAT16: {
        const uint16_t *p = (const uint16_t *)v->data + off;
        float *out = (float *)scratch;
        for (c = 0; c < v->cols; c++) out[c] = half_to_float(p[c * cs]);
        return out;
    }
    case GP_BFLOAT16: {
        const uint16_t *p = (const uint16_t *)v->data + off;
        float *out = (float *)scratch;
        for (c = 0; c < v->cols; c++) out[c] = bfloat16_to_float(p[c * cs]);
        return out;
    }
    }
    return NULL;
}

/* ---------------------------------------------------------------- kernels */

/* Within a block, each lane sums at most GP_BLOCK / lanes products; the blocks add up in double.
 * For up to GP_BLOCK elements this is one pass of the lanes, as fast as an unblocked loop. */
GP_HOT static double dot_f32(const float *a, const float *b, int64_t n)
{
    double sum = 0.0;
    int64_t i = 0;
    int l;
    while (n - i >= GP_LANES_F32) {
        float acc[GP_LANES_F32] = {0};
        int64_t end = n - i > GP_BLOCK ? i + GP_BLOCK : n;
        for (; i + GP_LANES_F32 <= end; i += GP_LANES_F32)
            for (l = 0; l < GP_LANES_F32; l++) acc[l] += a[i + l] * b[i + l];
        for (l = 0; l < GP_LANES_F32; l++) sum += acc[l];
    }
    for (; i < n; i++) sum += (double)a[i] * b[i];
    return sum;
}

GP_HOT static double dot_f64(const double *a, const double *b, int64_t n)
{
    double sum = 0.0;
    int64_t i = 0;
    int l;
    while (n - i >= GP_LANES_F64) {
        double acc[GP_LANES_F64] = {0};
        int64_t end = n - i > GP_BLOCK ? i + GP_BLOCK : n;
        for (; i + GP_LANES_F64 <= end; i += GP_LANES_F64)
            for (l = 0; l < GP_LANES_F64; l++) acc[l] += a[i + l] * b[i + l];
        for (l = 0; l < GP_LANES_F64; l++) sum += acc[l];
    }
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

static double element(const void *row, int64_t c, int f64)
{
    return f64 ? ((const double *)row)[c] : ((const float *)row)[c];
}

/* How to normalize a row: x̂ = (x / *scale) * (returned inverse norm). *scale is 1 when the
 * norm lies in [GP_NORM_MIN, GP_NORM_MAX] of the compute type; beyond that the row is first
 * divided by its largest magnitude, so nothing overflows or underflows. Returns 0 for a zero
 * row (it stays zero) and NaN when the row holds NaN or infinity. */
static double inverse_norm(const void *row, int64_t n, int f64, double *scale)
{
    double sum = f64 ? dot_f64((const double *)row, (const double *)row, n)
                     : dot_f32((const float *)row, (const float *)row, n);
    double norm = sqrt(sum), largest = 0.0;
    int64_t c;
    *scale = 1.0;
    if (norm >= (f64 ? GP_NORM_MIN_F64 : GP_NORM_MIN_F32) &&
        norm <= (f64 ? GP_NORM_MAX_F64 : GP_NORM_MAX_F32))
        return 1.0 / norm;
    for (c = 0; c < n; c++) {
        double v = element(row, c, f64);
        if (!isfinite(v)) return NAN;
        if (fabs(v) > largest) largest = fabs(v);
    }
    if (largest == 0.0) return 0.0;
    sum = 0.0;
    for (c = 0; c < n; c++) {
        double v = element(row, c, f64) / largest;
        sum += v * v;
    }
    *scale = largest;
    return 1.0 / sqrt(sum);
}

/* ---------------------------------------------------------------- interrupts */

/* One thread's view of gp_options.interrupt. */
typedef struct poller {
    gp_interrupt_fn interrupt;  /* NULL when the caller gave none */
    void *context;
    int caller;                 /* nonzero on the thread that made the call, the only one that
                                   calls interrupt */
    int *stopped;               /* shared by the call's threads: set once, never cleared */
    int64_t work;               /* elements read since the last poll */
} poller;

static poller make_poller(const gp_options *options, int caller, int *stopped)
{
    poller p;
    p.interrupt = options != NULL ? options->interrupt : NULL;
    p.context = options != NULL ? options->interrupt_context : NULL;
    p.caller = caller;
    p.stopped = stopped;
    p.work = 0;
    return p;
}

static int stop_requested(const poller *p)
{
    int stopped;
#ifdef _OPENMP
#pragma omp atomic read
#endif
    stopped = *p->stopped;
    return stopped;
}

/* Ask the caller (on its own thread) whether to stop. Returns nonzero once the call must stop. */
static int poll_now(poller *p)
{
    p->work = 0;
    if (p->caller && p->interrupt != NULL && p->interrupt(p->context)) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
        *p->stopped = 1;
    }
    return stop_requested(p);
}

/* Count `elements` read; about every GP_POLL_WORK of them, poll. */
static int should_stop(poller *p, int64_t elements)
{
    if (elements < GP_POLL_WORK - p->work) {
        p->work += elements;
        return 0;
    }
    return poll_now(p);
}

/* Images in parallel: the calling thread may finish its share while other threads still work
 * on theirs. It then waits for them here, polling every GP_WAIT_POLL_NS, so that an interrupt
 * still stops the call promptly; without POSIX threads it goes straight to the team's barrier
 * (an interrupt then waits for the other threads' images). */
typedef struct team_wait {
    int active; /* the caller waits: it polls for interrupts, and the lock and signal exist */
#ifdef GP_TEAM_WAIT
    int64_t left; /* images not finished */
    pthread_mutex_t lock;
    pthread_cond_t done; /* signalled when left reaches 0 */
#endif
} team_wait;

static void team_wait_start(team_wait *t, const gp_options *options, int64_t images)
{
    t->active = 0;
#ifdef GP_TEAM_WAIT
    t->left = images;
    if (options == NULL || options->interrupt == NULL) return;
    if (pthread_mutex_init(&t->lock, NULL) != 0) return;
    if (pthread_cond_init(&t->done, NULL) != 0) {
        pthread_mutex_destroy(&t->lock);
        return;
    }
    t->active = 1;
#else
    (void)options;
    (void)images;
#endif
}

static void team_wait_end(team_wait *t)
{
#ifdef GP_TEAM_WAIT
    if (!t->active) return;
    pthread_cond_destroy(&t->done);
    pthread_mutex_destroy(&t->lock);
#else
    (void)t;
#endif
}

#ifdef GP_TEAM_WAIT
static int64_t images_left(team_wait *t)
{
    int64_t left;
#pragma omp atomic read
    left = t->left;
    return left;
}

static double seconds_now(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}
#endif

/* One image finished (or skipped), on whichever thread ran it. */
static void image_finished(team_wait *t)
{
#ifdef GP_TEAM_WAIT
    int64_t left;
    if (!t->active) return;
    pthread_mutex_lock(&t->lock);
#pragma omp atomic capture
    left = --t->left;
    if (left == 0) pthread_cond_signal(&t->done);
    pthread_mutex_unlock(&t->lock);
#else
    (void)t;
#endif
}

/* On the calling thread, its share done: poll until every image is finished or the call
 * stops. The interrupt is called without the lock held. */
static void wait_for_team(team_wait *t, poller *p)
{
#ifdef GP_TEAM_WAIT
    double spin_until;
    if (!t->active) return;
    /* Spin first: most batches end within microseconds of the caller's share, and a thread
     * woken from sleep may wait milliseconds for a core on a busy machine. */
    spin_until = seconds_now() + GP_WAIT_SPIN_SECONDS;
    while (images_left(t) > 0 && seconds_now() < spin_until) continue;
    pthread_mutex_lock(&t->lock);
    while (t->left > 0 && !stop_requested(p)) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += GP_WAIT_POLL_NS;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&t->done, &t->lock, &until);
        if (t->left == 0) break;
        pthread_mutex_unlock(&t->lock);
        if (poll_now(p)) return;
        pthread_mutex_lock(&t->lock);
    }
    pthread_mutex_unlock(&t->lock);
#else
    (void)t;
    (void)p;
#endif
}

/* ---------------------------------------------------------------- one image */

typedef struct image_work {
    const gp_view *x;
    int64_t b, n, d;
    double lam, snap;                   /* snap: GP_COSINE_SNAP_* of the compute type */
    int f64, threads;
    double *shat, *m, *gain;            /* per candidate; gain is exact when seen == picks */
    double *scale, *inv_norm;           /* x̂_i = (x_i / scale_i) * inv_norm_i */
    int64_t *seen, *heap;               /* seen: how many picks (a prefix) m accounts for */
    int64_t heap_size;
    void *picked;                       /* unit rows of the picks so far, compute type */
    void *scratch;                      /* one row of d doubles per thread of the team */
    poller *poll;
} image_work;

static int ranks_before(const image_work *w, int64_t a, int64_t b)
{
    return w->gain[a] > w->gain[b] || (w->gain[a] == w->gain[b] && a < b);
}

static void sift_down(image_work *w, int64_t pos)
{
    int64_t *h = w->heap, size = w->heap_size, item = h[pos];
    for (;;) {
        int64_t child = 2 * pos + 1;
        if (child >= size) break;
        if (child + 1 < size && ranks_before(w, h[child + 1], h[child])) child++;
        if (!ranks_before(w, h[child], item)) break;
        h[pos] = h[child];
        pos = child;
    }
    h[pos] = item;
}

static int64_t heap_pop(image_work *w)
{
    int64_t top = w->heap[0];
    w->heap[0] = w->heap[--w->heap_size];
    if (w->heap_size > 0) sift_down(w, 0);
    return top;
}

/* The scratch row of thread `thread` of this image's team (0 outside a parallel region: the
 * caller's own thread number inside its own region says nothing about this team). */
static void *scratch_row(const image_work *w, int thread)
{
    return (double *)w->scratch + (int64_t)thread * w->d;
}

/* Write row i's unit vector (x / scale) * inv_norm, in the compute type, to `out` (which may be
 * `row` itself when the row already sits in scratch). */
static void unit_row(const image_work *w, const void *row, int64_t i, void *out)
{
    double scale = w->scale[i], inv = w->inv_norm[i];
    int64_t c;
    if (w->f64)
        for (c = 0; c < w->d; c++) ((double *)out)[c] = (((const double *)row)[c] / scale) * inv;
    else
        for (c = 0; c < w->d; c++)
            ((float *)out)[c] = (float)((((const float *)row)[c] / scale) * inv);
}

/* Row i ready for dot products with unit rows: *factor times its dot product with a unit row is
 * the cosine. Rows of ordinary magnitude are used in place; others as unit copies in scratch. */
static const void *dot_ready_row(const image_work *w, int64_t i, void *scratch, double *factor)
{
    const void *row = load_row(w->x, w->b, i, scratch);
    if (w->scale[i] == 1.0) {
        *factor = w->inv_norm[i];
        return row;
    }
    unit_row(w, row, i, scratch);
    *factor = 1.0;
    return scratch;
}

/* d(i, pick t) from row i made dot-ready. A cosine within w->snap of +-1 is taken as +-1: rows
 * pointing the same (or the opposite) way are at distance exactly 0 (or 1), whatever rounding
 * did to their norms, so they tie exactly. */
static double distance_to_pick(const image_work *w, const void *row, double factor, int64_t t)
{
    double dot = w->f64 ? dot_f64((const double *)row, (const double *)w->picked + t * w->d, w->d)
                        : dot_f32((const float *)row, (const float *)w->picked + t * w->d, w->d);
    double cosine = dot * factor;
    if (cosine >= 1.0 - w->snap)
        cosine = 1.0;
    else if (cosine <= w->snap - 1.0)
        cosine = -1.0;
    return (1.0 - cosine) / 2.0;
}

static void lower_m(image_work *w, int64_t i, double dist)
{
    if (dist < w->m[i]) {
        w->m[i] = dist;
        w->gain[i] = w->lam * w->shat[i] + (1.0 - w->lam) * dist;
    }
}

/* Compare candidate i with the picks it has not seen yet, oldest first, making its gain exact.
 * With rival >= 0, stop as soon as i ranks below rival: i's gain is then still an upper bound
 * (m is a minimum over a prefix of the picks), and i sinks without paying for the rest.
 * Returns how many distances it computed. */
static int64_t refresh(image_work *w, int64_t i, int64_t picks, int64_t rival)
{
    double factor;
    const void *row = dot_ready_row(w, i, scratch_row(w, 0), &factor);
    int64_t t = w->seen[i], first = t;
    while (t < picks) {
        lower_m(w, i, distance_to_pick(w, row, factor, t++));
        if (rival >= 0 && ranks_before(w, rival, i)) break;
    }
    w->seen[i] = t;
    return t - first;
}

/* Refresh the stale top of the heap against its best rival (a child of the root) and let it sink.
 * This stays on one thread: each refresh is a few dot products, too little to share.
 * Returns how many elements it read. */
static int64_t refresh_top(image_work *w, int64_t picks)
{
    int64_t rival = w->heap_size > 1 ? w->heap[1] : -1, distances;
    if (w->heap_size > 2 && ranks_before(w, w->heap[2], w->heap[1])) rival = w->heap[2];
    distances = refresh(w, w->heap[0], picks, rival);
    sift_down(w, 0);
    return (distances + 1) * w->d;
}

static void store_pick(image_work *w, int64_t j, int64_t t)
{
    const void *row = load_row(w->x, w->b, j, scratch_row(w, 0));
    unit_row(w, row, j, (char *)w->picked + (size_t)(t * w->d) * (w->f64 ? sizeof(double) : sizeof(float)));
}

static gp_status normalize_saliency(image_work *w, const gp_view *s)
{
    double lo = INFINITY, hi = -INFINITY, span;
    int64_t i;
    if (s == NULL) {
        for (i = 0; i < w->n; i++) w->shat[i] = 0.0;
        return GP_OK;
    }
    for (i = 0; i < w->n; i++) {
        double v = load_scalar(s, w->b, i);
        if (!isfinite(v)) return GP_ENONFINITE_SALIENCY;
        w->shat[i] = v;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
    }
    span = hi - lo;
    for (i = 0; i < w->n; i++) {
        double v = w->shat[i];
        if (lo == hi)
            w->shat[i] = 0.0;
        else if (isfinite(span))
            w->shat[i] = (v - lo) / span;
        else /* the range overflows double: halve before subtracting */
            w->shat[i] = (v / 2 - lo / 2) / (hi / 2 - lo / 2);
    }
    return GP_OK;
}

/* Row i's inverse norm, and, when `with_first_pick`, its distance to pick 0. Returns nonzero when
 * the row holds NaN or infinity. */
static int measure_row(image_work *w, int64_t i, int with_first_pick, void *scratch)
{
    const void *row = load_row(w->x, w->b, i, scratch);
    double factor;
    w->inv_norm[i] = inverse_norm(row, w->d, w->f64, &w->scale[i]);
    if (isnan(w->inv_norm[i])) return 1;
    if (with_first_pick) {
        factor = w->inv_norm[i];
        if (w->scale[i] != 1.0) {
            unit_row(w, row, i, scratch);
            row = scratch;
            factor = 1.0;
        }
        lower_m(w, i, distance_to_pick(w, row, factor, 0));
        w->seen[i] = 1;
    }
    return 0;
}

/* One pass over every row: its inverse norm, the check that every feature is finite and, when
 * `with_first_pick`, its distance to pick 0, so that every candidate starts step 1 fresh. It goes
 * in slices of about GP_POLL_WORK elements, polling for an interrupt between them. */
static gp_status first_pass(image_work *w, int with_first_pick)
{
    int64_t slice = w->d >= GP_POLL_WORK ? 1 : GP_POLL_WORK / w->d, lo, i;
    int bad = 0;
    for (lo = 0; lo < w->n && !bad; lo += slice) {
        int64_t hi = w->n - lo > slice ? lo + slice : w->n;
        if (w->threads > 1) {
#ifdef _OPENMP
#pragma omp parallel num_threads(w->threads) reduction(| : bad)
#endif
            {
                fp_mode saved = enter_default_fp_mode();
                void *scratch = scratch_row(w, team_thread());
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
                for (i = lo; i < hi; i++) bad |= measure_row(w, i, with_first_pick, scratch);
                restore_fp_mode(&saved);
            }
        } else {
            for (i = lo; i < hi; i++) bad |= measure_row(w, i, with_first_pick, scratch_row(w, 0));
        }
        if (should_stop(w->poll, (hi - lo) * w->d)) return GP_EINTERRUPTED;
    }
    return bad ? GP_ENONFINITE_FEATURES : GP_OK;
}

/* 1 when an image of n x d elements is too small to share between threads. */
static int small_work(int64_t n, int64_t d)
{
    return d < GP_PARALLEL_MIN_WORK && n < (GP_PARALLEL_MIN_WORK - 1) / d + 1;
}

static gp_status greedy_image(const gp_view *x, const gp_view *s, int64_t b, int64_t k,
                              double lam, int threads, poller *poll, int64_t *order,
                              double *gains)
{
    image_work w;
    gp_status status = GP_OK;
    int64_t n = x->rows, d = x->cols, i, step, first;
    int diverse;
    size_t elem = x->dtype == GP_FLOAT64 ? sizeof(double) : sizeof(float);
    void *block = NULL;
    char *p;
    size_t per_candidate = 5 * sizeof(double) + 2 * sizeof(int64_t), bytes, part;

    if (n < 1 || k < 1 || k > n) return GP_EINVAL; /* checked by the caller; tells the compiler */
    if (stop_requested(poll)) return GP_EINTERRUPTED;
    memset(&w, 0, sizeof w);
    w.x = x;
    w.b = b;
    w.n = n;
    w.d = d;
    w.lam = lam;
    w.f64 = x->dtype == GP_FLOAT64;
    w.snap = w.f64 ? GP_COSINE_SNAP_F64 : GP_COSINE_SNAP_F32;
    w.threads = (threads > 1 && !small_work(n, d)) ? threads : 1;
    w.poll = poll;

    /* One allocation for everything. A view with zero strides can have more rows, or longer
     * ones, than memory holds, so every size is checked. */
    if (!checked_size(n, 1, per_candidate, &bytes) || !checked_size(k, d, elem, &part) ||
        !checked_add(&bytes, part) || !checked_size(w.threads, d, sizeof(double), &part) ||
        !checked_add(&bytes, part))
        return GP_ENOMEM;
    block = malloc(bytes);
    if (block == NULL) return GP_ENOMEM;
    p = (char *)block;
    w.shat = (double *)p;     p += (size_t)n * sizeof(double);
    w.m = (double *)p;        p += (size_t)n * sizeof(double);
    w.gain = (double *)p;     p += (size_t)n * sizeof(double);
    w.inv_norm = (double *)p; p += (size_t)n * sizeof(double);
    w.scale = (double *)p;    p += (size_t)n * sizeof(double);
    w.scratch = p;            p += (size_t)w.threads * (size_t)d * sizeof(double);
    w.seen = (int64_t *)p;    p += (size_t)n * sizeof(int64_t);
    w.heap = (int64_t *)p;    p += (size_t)n * sizeof(int64_t);
    w.picked = p;

    status = normalize_saliency(&w, s);
    if (status != GP_OK) goto done;
    for (i = 0; i < n; i++) {
        w.m[i] = 1.0; /* m(i | {}) = 1 */
        w.seen[i] = 0;
        w.gain[i] = lam * w.shat[i] + (1.0 - lam) * 1.0;
        w.heap[i] = i;
    }
    w.heap_size = n;
    for (i = n / 2 - 1; i >= 0; i--) sift_down(&w, i);

    /* The first pick needs no features (every m is 1). Its distance to every candidate is then
     * computed in the same pass over the features that finds the norms. */
    first = heap_pop(&w);
    order[0] = first;
    if (gains != NULL) gains[0] = w.gain[first];
    diverse = lam < 1.0 && k > 1;
    if (diverse) {
        const void *row = load_row(x, b, first, scratch_row(&w, 0));
        w.inv_norm[first] = inverse_norm(row, d, w.f64, &w.scale[first]);
        if (isnan(w.inv_norm[first])) {
            status = GP_ENONFINITE_FEATURES;
            goto done;
        }
        store_pick(&w, first, 0);
    }
    status = first_pass(&w, diverse);
    if (status != GP_OK) goto done;
    if (diverse)
        for (i = w.heap_size / 2 - 1; i >= 0; i--) sift_down(&w, i);

    for (step = 1; step < k; step++) {
        int64_t pick;
        /* With lam == 1 the diversity term has weight 0: every gain is already exact. */
        while (lam < 1.0 && w.seen[w.heap[0]] < step)
            if (should_stop(poll, refresh_top(&w, step))) {
                status = GP_EINTERRUPTED;
                goto done;
            }
        pick = heap_pop(&w);
        order[step] = pick;
        if (gains != NULL) gains[step] = w.gain[pick];
        if (lam < 1.0 && step + 1 < k) store_pick(&w, pick, step);
        if (should_stop(poll, d)) {
            status = GP_EINTERRUPTED;
            goto done;
        }
    }

done:
    free(block);
    return status;
}

/* ---------------------------------------------------------------- public entry points */

static size_t element_size(gp_dtype dtype)
{
    return dtype == GP_FLOAT64 ? 8 : dtype == GP_FLOAT32 ? 4 : 2;
}

/* 1 if every element of the view lies within PTRDIFF_MAX bytes of data (then no offset
 * computation overflows). @pre the shape is valid. */
static int addressable(const gp_view *v)
{
    const int64_t length[3] = {v->batch, v->rows, v->cols};
    const int64_t stride[3] = {v->batch_stride, v->row_stride, v->col_stride};
    uint64_t reach = 0, limit = (uint64_t)PTRDIFF_MAX / element_size(v->dtype);
    int a;
    if (v->batch == 0) return 1;
    for (a = 0; a < 3; a++) {
        uint64_t steps = (uint64_t)(length[a] - 1);
        uint64_t size = stride[a] < 0 ? 0 - (uint64_t)stride[a] : (uint64_t)stride[a];
        if (size != 0 && steps > (limit - reach) / size) return 0;
        reach += steps * size;
    }
    return 1;
}

static gp_status check_args(const gp_view *x, const gp_view *s, int64_t k, double lam,
                            const int64_t *out)
{
    size_t out_bytes;
    if (x == NULL || out == NULL || !valid_dtype(x->dtype)) return GP_EINVAL;
    if (x->batch < 0 || x->rows < 1 || x->cols < 1) return GP_EINVAL;
    if (x->batch > 0 && x->data == NULL) return GP_EINVAL;
    if (k < 1 || k > x->rows) return GP_EINVAL;
    if (!(lam >= 0.0 && lam <= 1.0)) return GP_EINVAL; /* also refuses NaN */
    if (!addressable(x) || !checked_size(x->batch, k, sizeof(int64_t), &out_bytes))
        return GP_EINVAL;
    if (s != NULL) {
        if (!valid_dtype(s->dtype) || s->batch != x->batch || s->rows != x->rows || s->cols != 1)
            return GP_EINVAL;
        if (s->batch > 0 && s->data == NULL) return GP_EINVAL;
        if (!addressable(s)) return GP_EINVAL;
    }
    return GP_OK;
}

/* Images in parallel, one thread each; thread 0 of the team is the caller's. The first failure
 * in image order is reported, an interrupt before any. */
static gp_status greedy_images_in_parallel(const gp_view *x, const gp_view *s, int64_t k,
                                           double lam, int threads, const gp_options *options,
                                           int *stopped, int64_t *order, double *gains)
{
    int64_t first_bad = x->batch, b;
    gp_status bad_status = GP_OK;
    int outer = (int64_t)threads < x->batch ? threads : (int)x->batch;
    team_wait wait;
    team_wait_start(&wait, options, x->batch);
#ifdef _OPENMP
#pragma omp parallel num_threads(outer)
#endif
    {
        fp_mode saved = enter_default_fp_mode();
        poller poll = make_poller(options, team_thread() == 0, stopped);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1) nowait
#endif
        for (b = 0; b < x->batch; b++) {
            gp_status st = greedy_image(x, s, b, k, lam, 1, &poll, order + b * k,
                                        gains ? gains + b * k : NULL);
            if (st != GP_OK) {
#ifdef _OPENMP
#pragma omp critical(gp_first_failure)
#endif
                if (b < first_bad) {
                    first_bad = b;
                    bad_status = st;
                }
            }
            image_finished(&wait);
        }
        if (poll.caller) wait_for_team(&wait, &poll);
        restore_fp_mode(&saved);
    }
    team_wait_end(&wait);
    (void)outer;
    return *stopped ? GP_EINTERRUPTED : bad_status;
}

gp_status gp_greedy_with(const gp_view *features, const gp_view *saliency, int64_t k, double lam,
                         const gp_options *options, int64_t *order, double *gains)
{
    int64_t b;
    int threads, stopped = 0;
    fp_mode saved;
    gp_status status = check_args(features, saliency, k, lam, order);
    if (status != GP_OK) return status;
    threads = team_size(options != NULL ? options->num_threads : 0);
    saved = enter_default_fp_mode();
    if (features->batch > 1 && threads > 1) {
        status = greedy_images_in_parallel(features, saliency, k, lam, threads, options,
                                           &stopped, order, gains);
    } else {
        poller poll = make_poller(options, 1, &stopped);
        for (b = 0; b < features->batch && status == GP_OK; b++)
            status = greedy_image(features, saliency, b, k, lam, threads, &poll, order + b * k,
                                  gains ? gains + b * k : NULL);
    }
    restore_fp_mode(&saved);
    return status;
}

gp_status gp_greedy(const gp_view *features, const gp_view *saliency, int64_t k, double lam,
                    int num_threads, int64_t *order, double *gains)
{
    gp_options options;
    memset(&options, 0, sizeof options);
    options.num_threads = num_threads;
    return gp_greedy_with(features, saliency, k, lam, &options, order, gains);
}

static int compare_int64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

gp_status gp_select_with(const gp_view *features, const gp_view *saliency, int64_t k, double lam,
                         const gp_options *options, int64_t *indices)
{
    int64_t b;
    gp_status status = gp_greedy_with(features, saliency, k, lam, options, indices, NULL);
    if (status != GP_OK) return status;
    for (b = 0; b < features->batch; b++)
        qsort(indices + b * k, (size_t)k, sizeof(int64_t), compare_int64);
    return GP_OK;
}

gp_status gp_select(const gp_view *features, const gp_view *saliency, int64_t k, double lam,
                    int num_threads, int64_t *indices)
{
    gp_options options;
    memset(&options, 0, sizeof options);
    options.num_threads = num_threads;
    return gp_select_with(features, saliency, k, lam, &options, indices);
}
