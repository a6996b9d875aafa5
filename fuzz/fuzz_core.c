/*
 * fuzz_core.c: a fuzz target for the C API (csrc/greedyprune.h).
 *
 * Each input is decoded into one call: a (B, N, D) view of any dtype over a buffer this file
 * owns (sized to exactly the elements the view can reach, so AddressSanitizer sees any read
 * outside it), with strides that may be zero, negative, padded or overlapping; a saliency view
 * or none; k and lam, valid or not; 1 to 4 threads. Then it checks what the header promises:
 *
 *   - the status is the one the arguments call for (GP_EINVAL for a bad argument, GP_ENONFINITE_*
 *     exactly when a NaN or infinity is in the view, else GP_OK; views that repeat one element
 *     more than memory could hold may also give GP_ENOMEM);
 *   - on GP_OK every image keeps k distinct indices in [0, N), gp_select's sorted ascending, the
 *     gains are finite, within [0, 1] up to rounding and never increase;
 *   - the answer (status, picks and gains, bit for bit) does not depend on the thread count, on
 *     the layout (a contiguous copy of the same elements), on the batch (each image alone), on
 *     the caller's floating-point mode (flush-to-zero and denormals-are-zero set), nor on being
 *     called from inside the caller's own OpenMP parallel region;
 *   - an interrupt callback runs on the calling thread only, and stops the call with
 *     GP_EINTERRUPTED exactly when it asks to.
 * A broken promise aborts with a message; sanitizers catch memory errors, leaks and undefined
 * behaviour. Sizes are bounded (N <= 48, D <= 24, B <= 3) so that one call takes microseconds,
 * except two rare shapes: "large" views of 2^22 elements over a small buffer (zero strides), which
 * take the multi-threaded pass over one image, and "huge" views of 2^32 to 2^63 rows, which no
 * memory holds and must be refused (GP_ENOMEM / GP_EINVAL) without touching memory. Run them with
 * ASAN_OPTIONS=allocator_may_return_null=1:max_allocation_size_mb=1024 (fuzz/run.sh does), so that
 * an allocation beyond 1 GiB fails as it would on a small machine.
 *
 * An input is read byte by byte, a missing byte reading as 0: first the call (flags, more flags,
 * threads, the shape, the strides, saliency's dtype and strides, k, lam, which image to run
 * alone, when to interrupt; see fuzz_one), then the elements (fill). So a few bytes describe a
 * call and its elements repeat a fixed palette: fuzz/run.sh writes such seeds.
 *
 * Built with clang -fsanitize=fuzzer it is a libFuzzer target. Built with -DGP_FUZZ_MAIN (any C
 * compiler with AddressSanitizer, gcc included) it carries its own driver, see main() below.
 */
#define _POSIX_C_SOURCE 200809L

#include "greedyprune.h"

#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE2__)
#include <xmmintrin.h>
#define FUZZ_MXCSR 1
#endif

/* Bounds of the ordinary shapes. */
#define MAX_BATCH 3
#define MAX_ROWS 48
#define MAX_COLS 24
/* The "large" shapes hold this many elements per image: the size from which one image's pass
 * over the features is shared between threads (GP_PARALLEL_MIN_WORK in greedyprune.c). */
#define LARGE_ELEMENTS ((int64_t)1 << 22)

static void fail(const char *what);

/* The call being checked, in words, for failure messages. */
static char the_case[512];

/* ---------------------------------------------------------------- reading the input */

typedef struct input {
    const uint8_t *p;
    size_t left;
} input;

/* The next byte, 0 once the input is used up (so every input decodes to some call). */
static unsigned next_byte(input *in)
{
    if (in->left == 0) return 0;
    in->left--;
    return *in->p++;
}

static uint64_t next_bytes(input *in, int count)
{
    uint64_t v = 0;
    int i;
    for (i = 0; i < count; i++) v |= (uint64_t)next_byte(in) << (8 * i);
    return v;
}

/* ---------------------------------------------------------------- element values */

static size_t element_size(gp_dtype dtype)
{
    return dtype == GP_FLOAT64 ? 8 : dtype == GP_FLOAT32 ? 4 : 2;
}

static uint32_t float_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* IEEE binary16 bits of f, rounded toward zero (any bit pattern is a valid input anyway). */
static uint16_t float_to_half(float f)
{
    uint32_t u = float_bits(f), sign = (u >> 16) & 0x8000u, mag = u & 0x7fffffffu;
    int exponent = (int)(mag >> 23) - 127 + 15;
    if (mag >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (mag > 0x7f800000u ? 0x200u : 0));
    if (exponent >= 31) return (uint16_t)(sign | 0x7c00u);
    if (exponent <= 0) { /* subnormal or zero */
        if (exponent < -10) return (uint16_t)sign;
        return (uint16_t)(sign | (((mag & 0x7fffffu) | 0x800000u) >> (14 - exponent)));
    }
    return (uint16_t)(sign | ((uint32_t)exponent << 10) | ((mag >> 13) & 0x3ffu));
}

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    if (exponent == 31) return bits_float(sign | 0x7f800000u | (mantissa << 13));
    if (exponent == 0) {
        float v = ldexpf((float)mantissa, -24);
        return sign ? -v : v;
    }
    return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

/* Element `index` of the buffer as a double, read the way the header defines each dtype. */
static double element(const void *data, gp_dtype dtype, int64_t index)
{
    switch (dtype) {
    case GP_FLOAT64: return ((const double *)data)[index];
    case GP_FLOAT32: return ((const float *)data)[index];
    case GP_FLOAT16: return half_to_float(((const uint16_t *)data)[index]);
    default: return bits_float((uint32_t)((const uint16_t *)data)[index] << 16);
    }
}

static void store(void *data, gp_dtype dtype, int64_t index, double v)
{
    switch (dtype) {
    case GP_FLOAT64: ((double *)data)[index] = v; break;
    case GP_FLOAT32: ((float *)data)[index] = (float)v; break;
    case GP_FLOAT16: ((uint16_t *)data)[index] = float_to_half((float)v); break;
    default: ((uint16_t *)data)[index] = (uint16_t)(float_bits((float)v) >> 16); break;
    }
}

/* Values that make ties, duplicates, parallel rows, zero rows and extreme norms likely. */
static const double palette[] = {
    0.0, 1.0, -1.0, 2.0, 0.5, 3.0, -0.25, 1e-3, 7.0, -5.0, 1e-20, 1e20, 1e-40, 1e-300, 1e300,
    65504.0, 3e38, 4.9e-324, 1.401298464324817e-45, 5.960464477539063e-08, -0.0,
};
#define PALETTE_SIZE (sizeof palette / sizeof palette[0])

enum fill { FILL_RAW, FILL_PALETTE, FILL_SMALL, FILL_COUNT };

/* Fill `count` elements from the input: raw bit patterns (NaN and infinity included), or the
 * palette with a rare NaN or infinity, or small multiples of 1/8 (many exact ties); with
 * finite_only, finite values only. Once the input is used up the palette repeats. */
static void fill(void *data, gp_dtype dtype, int64_t count, enum fill how, int finite_only,
                 input *in)
{
    int64_t i;
    for (i = 0; i < count; i++) {
        double v;
        if (in->left == 0) {
            v = palette[(size_t)i % 8];
        } else if (how == FILL_RAW && !finite_only) {
            size_t size = element_size(dtype);
            uint64_t bits = next_bytes(in, (int)size);
            memcpy((char *)data + (size_t)i * size, &bits, size); /* little-endian hosts */
            continue;
        } else if (how == FILL_SMALL) {
            v = ((int)next_byte(in) - 128) / 8.0;
        } else {
            unsigned b = next_byte(in);
            v = b == 255 && !finite_only ? NAN : b == 254 && !finite_only ? -INFINITY
                                                                        : palette[b % PALETTE_SIZE];
        }
        store(data, dtype, i, v);
        if (finite_only && !isfinite(element(data, dtype, i))) /* beyond float16's range */
            store(data, dtype, i, palette[(size_t)i % 8]);
    }
}

/* ---------------------------------------------------------------- views over owned buffers */

/* A view and the buffer it reads; `base` is what was allocated (the view's lowest element). */
typedef struct owned_view {
    gp_view view;
    void *base;
    int64_t span; /* elements in the buffer */
} owned_view;

/* A stride for an axis whose natural (packed) stride is `natural`. */
static int64_t pick_stride(unsigned choice, int64_t natural)
{
    switch (choice % 8) {
    case 0: case 1: case 2: return natural;
    case 3: return 0;
    case 4: return -natural;
    case 5: return natural * 2;
    case 6: return -natural * 3;
    default: return (int64_t)(choice / 8 % 11) - 5; /* small, overlapping */
    }
}

/* Allocate the buffer the view reaches, exactly, and point the view into it. */
static void place(owned_view *o, const int64_t length[3], const int64_t stride[3])
{
    int64_t low = 0, high = 0;
    int a;
    for (a = 0; a < 3; a++) {
        int64_t reach = length[a] > 0 ? (length[a] - 1) * stride[a] : 0;
        if (reach < 0) low += reach;
        else high += reach;
    }
    o->span = high - low + 1;
    o->base = malloc((size_t)o->span * element_size(o->view.dtype));
    if (o->base == NULL) fail("out of memory in the harness");
    o->view.data = (const char *)o->base - low * (int64_t)element_size(o->view.dtype);
    o->view.batch = length[0];
    o->view.rows = length[1];
    o->view.cols = length[2];
    o->view.batch_stride = stride[0];
    o->view.row_stride = stride[1];
    o->view.col_stride = stride[2];
}

static int64_t offset(const gp_view *v, int64_t b, int64_t i, int64_t c)
{
    return b * v->batch_stride + i * v->row_stride + c * v->col_stride;
}

/* 1 when every element of the view is finite. */
static int view_finite(const gp_view *v)
{
    int64_t b, i, c;
    for (b = 0; b < v->batch; b++)
        for (i = 0; i < v->rows; i++)
            for (c = 0; c < v->cols; c++)
                if (!isfinite(element(v->data, v->dtype, offset(v, b, i, c)))) return 0;
    return 1;
}

/* 1 when every element of the buffer is finite. */
static int buffer_finite(const void *data, gp_dtype dtype, int64_t count)
{
    int64_t i;
    for (i = 0; i < count; i++)
        if (!isfinite(element(data, dtype, i))) return 0;
    return 1;
}

/* A C-contiguous copy of the view's elements (same dtype, same bits). */
static owned_view contiguous_copy(const gp_view *v)
{
    owned_view o;
    size_t size = element_size(v->dtype);
    int64_t b, i, c, n = 0;
    char *out;
    memset(&o, 0, sizeof o);
    o.span = v->batch * v->rows * v->cols;
    o.base = malloc((size_t)(o.span > 0 ? o.span : 1) * size);
    if (o.base == NULL) fail("out of memory in the harness");
    out = (char *)o.base;
    for (b = 0; b < v->batch; b++)
        for (i = 0; i < v->rows; i++)
            for (c = 0; c < v->cols; c++)
                memcpy(out + (size_t)n++ * size,
                       (const char *)v->data + offset(v, b, i, c) * (int64_t)size, size);
    o.view = gp_contiguous(o.base, v->dtype, v->batch, v->rows, v->cols);
    return o;
}

/* The view of image b alone (a batch of one). */
static gp_view image_view(const gp_view *v, int64_t b)
{
    gp_view one = *v;
    one.data = (const char *)v->data + b * v->batch_stride * (int64_t)element_size(v->dtype);
    one.batch = 1;
    return one;
}

/* ---------------------------------------------------------------- one call and its result */

typedef struct result {
    gp_status status;
    int64_t *order;
    double *gains;
} result;

typedef struct interrupt_state {
    pthread_t caller;
    int calls, stop_after, asked_to_stop, wrong_thread;
} interrupt_state;

static int interrupt_callback(void *context)
{
    interrupt_state *st = (interrupt_state *)context;
    if (!pthread_equal(pthread_self(), st->caller)) st->wrong_thread = 1;
    if (st->calls++ >= st->stop_after) st->asked_to_stop = 1;
    return st->asked_to_stop;
}

typedef struct call {
    const gp_view *x, *s;
    int64_t k, slots; /* slots: output entries, batch * k (at least one) */
    double lam;
    int sorted;       /* gp_select rather than gp_greedy */
    int threads;
    interrupt_state *interrupt;
} call;

static result run(const call *c)
{
    result r;
    gp_options options;
    r.order = (int64_t *)malloc((size_t)c->slots * sizeof(int64_t));
    r.gains = c->sorted ? NULL : (double *)malloc((size_t)c->slots * sizeof(double));
    if (r.order == NULL || (!c->sorted && r.gains == NULL)) fail("out of memory in the harness");
    memset(&options, 0, sizeof options);
    options.num_threads = c->threads;
    if (c->interrupt != NULL) {
        options.interrupt = interrupt_callback;
        options.interrupt_context = c->interrupt;
    }
    if (c->sorted)
        r.status = c->interrupt != NULL
                       ? gp_select_with(c->x, c->s, c->k, c->lam, &options, r.order)
                       : gp_select(c->x, c->s, c->k, c->lam, c->threads, r.order);
    else
        r.status = c->interrupt != NULL
                       ? gp_greedy_with(c->x, c->s, c->k, c->lam, &options, r.order, r.gains)
                       : gp_greedy(c->x, c->s, c->k, c->lam, c->threads, r.order, r.gains);
    return r;
}

static void release(result *r)
{
    free(r->order);
    free(r->gains);
    r->order = NULL;
    r->gains = NULL;
}

/* Image b's picks and gains in `a` equal image c's in `b`, bit for bit. */
static int same_image(const result *a, int64_t ia, const result *b, int64_t ib, int64_t k)
{
    if (memcmp(a->order + ia * k, b->order + ib * k, (size_t)k * sizeof(int64_t)) != 0) return 0;
    return a->gains == NULL || b->gains == NULL ||
           memcmp(a->gains + ia * k, b->gains + ib * k, (size_t)k * sizeof(double)) == 0;
}

static void expect_same(const result *a, const result *b, int64_t batch, int64_t k,
                        const char *what)
{
    int64_t i;
    if (a->status != b->status) fail(what);
    if (a->status != GP_OK) return;
    for (i = 0; i < batch; i++)
        if (!same_image(a, i, b, i, k)) fail(what);
}

static void check_result(const call *c, const result *r)
{
    int64_t b, t, u, n = c->x->rows, k = c->k;
    if (r->status < GP_OK || r->status > GP_EINTERRUPTED) fail("status outside gp_status");
    if (strlen(gp_strerror(r->status)) == 0) fail("gp_strerror gave an empty text");
    if (r->status != GP_OK) return;
    for (b = 0; b < c->x->batch; b++) {
        const int64_t *order = r->order + b * k;
        for (t = 0; t < k; t++) {
            if (order[t] < 0 || order[t] >= n) fail("a kept index outside [0, N)");
            for (u = 0; u < t; u++)
                if (order[u] == order[t]) fail("an index kept twice");
            if (c->sorted && t > 0 && order[t - 1] > order[t]) fail("gp_select not sorted");
            if (r->gains != NULL) {
                double g = r->gains[b * k + t];
                /* m is unclamped: a cosine rounded beyond +-1 gives a gain a little outside. */
                if (!isfinite(g) || g < -1e-6 || g > 1.0 + 1e-6) fail("a gain outside [0, 1]");
                if (t > 0 && g > r->gains[b * k + t - 1]) fail("gains increase");
            }
        }
    }
}

/* ---------------------------------------------------------------- the target */

#ifdef FUZZ_MXCSR
#define MXCSR_FTZ_DAZ 0x8040u
#define MXCSR_FLAGS 0x3fu /* the exception flags, which any computation may raise */
#endif

/* Shapes beyond the bounded ones. */
enum size_mode { SIZE_SMALL, SIZE_LARGE, SIZE_HUGE };

/* Row counts that no memory can hold work for (the last ones wrap a size_t product). */
static const int64_t huge_rows[] = {
    (int64_t)1 << 32, (int64_t)1 << 40, ((int64_t)3 * ((int64_t)1 << 61) + 1) / 7,
    (int64_t)1 << 61, INT64_MAX / 56 + 1, INT64_MAX,
};

static void fuzz_one(input *in)
{
    unsigned flags = next_byte(in), more = next_byte(in);
    gp_dtype dtype = (gp_dtype)(flags & 3), s_dtype;
    int with_saliency = (flags >> 2) & 1, sorted = (flags >> 3) & 1;
    enum size_mode size = flags >> 4 == 15 ? (more & 1 ? SIZE_HUGE : SIZE_LARGE) : SIZE_SMALL;
    enum fill how = (enum fill)((flags >> 7 | (more & 2)) % FILL_COUNT);
    int try_interrupt = (more >> 2) & 1, try_fp_mode = (more >> 3) & 1;
    int try_nested = (more >> 4) & 1, bad_k = (more >> 5) % 8 == 7;
    int64_t length[3], stride[3], s_length[3], s_stride[3], k, slots;
    double lam;
    int threads = 1 + (int)(next_byte(in) % 4), other_threads = threads == 1 ? 4 : 1;
    int args_ok, x_finite = 1, s_finite = 1, a, stop_after;
    unsigned image;
    owned_view x, s;
    call c;
    result r, r2;
    unsigned lam_choice;

    memset(&x, 0, sizeof x);
    memset(&s, 0, sizeof s);
    x.view.dtype = dtype;
    /* Shape. */
    if (size == SIZE_SMALL) {
        length[0] = next_byte(in) % (MAX_BATCH + 1);
        length[1] = 1 + next_byte(in) % MAX_ROWS;
        length[2] = 1 + next_byte(in) % MAX_COLS;
    } else if (size == SIZE_LARGE) {
        int log_rows = 8 + (int)(next_byte(in) % 8); /* 2^8 .. 2^15 rows */
        length[0] = 1;
        length[1] = (int64_t)1 << log_rows;
        length[2] = LARGE_ELEMENTS >> log_rows;
    } else {
        length[0] = 1 + next_byte(in) % 2;
        length[1] = huge_rows[next_byte(in) % (sizeof huge_rows / sizeof huge_rows[0])];
        length[2] = 1 + next_byte(in) % 3;
    }
    /* Strides, innermost first, each from its axis's packed stride. Large and huge views repeat
     * elements: a zero stride on the rows (every row the same) or on the columns. */
    if (size == SIZE_SMALL) {
        int64_t natural = 1;
        for (a = 2; a >= 0; a--) {
            stride[a] = pick_stride(next_byte(in), natural);
            natural = (stride[a] < 0 ? -stride[a] : stride[a]) * (length[a] > 0 ? length[a] : 1);
            if (natural == 0) natural = 1;
        }
    } else {
        int zero_rows = next_byte(in) & 1 || size == SIZE_HUGE;
        stride[2] = zero_rows ? 1 : 0;
        stride[1] = zero_rows ? 0 : 1;
        stride[0] = next_byte(in) & 1 ? 0 : (zero_rows ? length[2] : length[1]);
    }
    /* Saliency: its own dtype and strides over its own buffer. */
    s_dtype = (gp_dtype)(next_byte(in) & 3);
    s_length[0] = length[0];
    s_length[1] = length[1];
    s_length[2] = 1;
    s_stride[2] = pick_stride(next_byte(in), 1);
    s_stride[1] = size == SIZE_SMALL ? pick_stride(next_byte(in), 1) : 0;
    s_stride[0] = size == SIZE_SMALL ? pick_stride(next_byte(in), length[1]) : 0;

    /* k and lam, sometimes outside their ranges. */
    if (size == SIZE_SMALL)
        k = 1 + (int64_t)(next_byte(in) % (unsigned)length[1]);
    else
        k = 1 + next_byte(in) % 4; /* the pass over the features is what matters */
    if (bad_k) {
        /* (INT64_MAX rows leave no k above N: then 0 and -2 stand in.) */
        const int above = length[1] < INT64_MAX;
        const int64_t bad[] = {0, -1, INT64_MIN, above ? length[1] + 1 : 0,
                               above ? INT64_MAX : -2};
        k = bad[next_byte(in) % 5];
    }
    lam_choice = next_byte(in);
    switch (lam_choice % 10) {
    case 0: lam = 0.0; break;
    case 1: lam = 1.0; break;
    case 2: lam = 0.5; break;
    case 3: lam = NAN; break;
    case 4: lam = lam_choice & 16 ? -1e-300 : nextafter(1.0, 2.0); break;
    case 5: { uint64_t bits = next_bytes(in, 8); memcpy(&lam, &bits, sizeof lam); } break;
    default: lam = (lam_choice / 10) / 25.0; break;
    }

    image = next_byte(in);
    stop_after = (int)(next_byte(in) % 4);

    /* The elements, from the rest of the input. */
    place(&x, length, stride);
    fill(x.base, dtype, x.span, how, size != SIZE_SMALL, in);
    if (with_saliency) {
        s.view.dtype = s_dtype;
        place(&s, s_length, s_stride);
        fill(s.base, s_dtype, s.span, how == FILL_RAW ? FILL_RAW : FILL_PALETTE,
             size != SIZE_SMALL, in);
    }

    args_ok = k >= 1 && k <= length[1] && lam >= 0.0 && lam <= 1.0;
    if (size == SIZE_SMALL) {
        x_finite = view_finite(&x.view);
        s_finite = !with_saliency || view_finite(&s.view);
    } else { /* these views reach every element of their buffers */
        x_finite = buffer_finite(x.base, dtype, x.span);
        s_finite = !with_saliency || buffer_finite(s.base, s_dtype, s.span);
    }
    snprintf(the_case, sizeof the_case,
             "dtype %d, shape (%lld, %lld, %lld), strides (%lld, %lld, %lld), saliency %s "
             "(dtype %d), k %lld, lam %.17g, %d threads, %s",
             (int)dtype, (long long)length[0], (long long)length[1], (long long)length[2],
             (long long)stride[0], (long long)stride[1], (long long)stride[2],
             with_saliency ? "yes" : "no", (int)s_dtype, (long long)k, lam, threads,
             sorted ? "gp_select" : "gp_greedy");
    slots = args_ok && length[0] > 0 ? length[0] * k : 1;

    c.x = &x.view;
    c.s = with_saliency ? &s.view : NULL;
    c.k = k;
    c.slots = slots;
    c.lam = lam;
    c.sorted = sorted;
    c.threads = threads;
    c.interrupt = NULL;
    r = run(&c);
    snprintf(the_case + strlen(the_case), sizeof the_case - strlen(the_case), ": status %d",
             (int)r.status);
    check_result(&c, &r);

    /* The status the arguments call for. */
    if (!args_ok) {
        if (r.status != GP_EINVAL) fail("a bad k or lam not refused with GP_EINVAL");
    } else if (size == SIZE_HUGE && (r.status == GP_ENOMEM || r.status == GP_EINVAL)) {
        /* refused: what a view too large for memory should get (if it gets anything else, it
         * is what the checks below expect) */
    } else if (length[0] == 0) {
        if (r.status != GP_OK) fail("an empty batch failed");
    } else if (!x_finite || !s_finite) {
        if (!(r.status == GP_ENONFINITE_FEATURES && !x_finite) &&
            !(r.status == GP_ENONFINITE_SALIENCY && !s_finite))
            fail("NaN or infinity not reported as GP_ENONFINITE_*");
    } else if (r.status != GP_OK) {
        fail("a valid call failed");
    }

    /* Invariance. Huge views only get the status checks above; large ones (a pass over 2^22
     * elements takes tens of milliseconds under the sanitizers) only the checks about threads. */
    if (args_ok && size != SIZE_HUGE) {
        int64_t b;
        call c2 = c;
        c2.threads = other_threads;
        r2 = run(&c2);
        check_result(&c2, &r2);
        expect_same(&r, &r2, length[0], k, "the thread count changed the answer");
        release(&r2);

        if (size == SIZE_SMALL) {
            owned_view copy_x = contiguous_copy(&x.view), copy_s;
            c2 = c;
            c2.x = &copy_x.view;
            if (with_saliency) {
                copy_s = contiguous_copy(&s.view);
                c2.s = &copy_s.view;
            }
            r2 = run(&c2);
            expect_same(&r, &r2, length[0], k, "the layout changed the answer");
            release(&r2);
            free(copy_x.base);
            if (with_saliency) free(copy_s.base);
        }

        if (r.status == GP_OK && length[0] > 1) { /* each image alone, as in the batch */
            gp_view one_x, one_s;
            b = image % length[0];
            one_x = image_view(&x.view, b);
            c2 = c;
            c2.x = &one_x;
            if (with_saliency) {
                one_s = image_view(&s.view, b);
                c2.s = &one_s;
            }
            c2.slots = k;
            r2 = run(&c2);
            if (r2.status != GP_OK || !same_image(&r, b, &r2, 0, k))
                fail("an image's answer depends on the rest of its batch");
            release(&r2);
        }

#ifdef FUZZ_MXCSR
        if (try_fp_mode && size == SIZE_SMALL) {
            /* flush-to-zero and denormals-are-zero on the calling thread */
            unsigned saved = _mm_getcsr();
            _mm_setcsr(saved | MXCSR_FTZ_DAZ);
            r2 = run(&c);
            if ((_mm_getcsr() & ~MXCSR_FLAGS) != ((saved | MXCSR_FTZ_DAZ) & ~MXCSR_FLAGS)) {
                _mm_setcsr(saved);
                fail("the caller's floating-point mode was not restored");
            }
            _mm_setcsr(saved);
            expect_same(&r, &r2, length[0], k,
                        "the caller's floating-point mode changed the answer");
            release(&r2);
        }
#else
        (void)try_fp_mode;
#endif

#ifdef _OPENMP
        if (try_nested) {
            /* From inside the caller's own parallel region, one call per thread; a team larger
             * than the thread count of the calls. */
            result nested[4];
            memset(nested, 0, sizeof nested);
#pragma omp parallel num_threads(4)
            nested[omp_get_thread_num()] = run(&c);
            for (a = 0; a < 4; a++) {
                if (nested[a].order == NULL) continue; /* the team had one thread */
                expect_same(&r, &nested[a], length[0], k,
                            "a call inside a parallel region changed the answer");
                release(&nested[a]);
            }
        }
#else
        (void)try_nested;
#endif

        if (try_interrupt && size == SIZE_SMALL) {
            interrupt_state st;
            memset(&st, 0, sizeof st);
            st.caller = pthread_self();
            st.stop_after = stop_after;
            c2 = c;
            c2.interrupt = &st;
            r2 = run(&c2);
            if (st.wrong_thread) fail("the interrupt callback ran on another thread");
            if (st.asked_to_stop) {
                if (r2.status != GP_EINTERRUPTED) fail("an interrupt did not stop the call");
            } else {
                expect_same(&r, &r2, length[0], k, "an unused interrupt changed the answer");
            }
            release(&r2);
        }
    }

    release(&r);
    free(x.base);
    free(s.base);
}

/* ---------------------------------------------------------------- drivers */

/* The input being run, for the built-in driver's reproducer. */
static const uint8_t *current_data;
static size_t current_size;
#ifdef GP_FUZZ_MAIN
static const char *artifact_prefix = "./";
#endif

static void save_current(void)
{
#ifdef GP_FUZZ_MAIN
    char path[4096];
    FILE *f;
    uint64_t h = 1469598103934665603u; /* FNV-1a names the file after the input */
    size_t i;
    for (i = 0; i < current_size; i++) h = (h ^ current_data[i]) * 1099511628211u;
    snprintf(path, sizeof path, "%scrash-%016llx", artifact_prefix, (unsigned long long)h);
    f = fopen(path, "wb");
    if (f != NULL) {
        fwrite(current_data, 1, current_size, f);
        fclose(f);
        fprintf(stderr, "fuzz_core: reproducer written to %s\n", path);
    }
#endif
}

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_core: broken promise: %s\n  in the call: %s\n", what, the_case);
    save_current(); /* libFuzzer saves its own on abort() */
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input in;
    in.p = data;
    in.left = size;
    current_data = data;
    current_size = size;
    fuzz_one(&in);
    return 0;
}

#ifdef GP_FUZZ_MAIN
/*
 * The built-in driver, for compilers without libFuzzer: random inputs, no coverage guidance.
 *   fuzz_core [-seed=S] [-max_total_time=SECONDS] [-runs=N] [-artifact_prefix=DIR/] [FILE ...]
 * With files it runs each once (replaying reproducers); otherwise inputs of 0 to 256 bytes drawn
 * from the seed (1 unless given), until the time or the run count is reached. A broken promise
 * or a sanitizer report writes the input to DIR/crash-<hash> and exits non-zero; an input that
 * runs longer than 30 s is saved the same way.
 */
#include <signal.h>
#include <sanitizer/common_interface_defs.h>
#include <time.h>
#include <unistd.h>

static void on_alarm(int signal_number)
{
    (void)signal_number;
    fprintf(stderr, "fuzz_core: an input ran longer than 30 s\n");
    save_current();
    _exit(70);
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    long size;
    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
        fprintf(stderr, "fuzz_core: cannot read %s\n", path);
        return 1;
    }
    buf = (uint8_t *)malloc((size_t)size + 1);
    if (buf == NULL || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "fuzz_core: cannot read %s\n", path);
        return 1;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, (size_t)size);
    free(buf);
    fprintf(stderr, "fuzz_core: ran %s\n", path);
    return 0;
}

int main(int argc, char **argv)
{
    uint64_t seed = 1, state, runs = 0, max_runs = UINT64_MAX;
    double max_seconds = 60, start;
    int i, files = 0, status = 0;
    uint8_t buf[256];

    for (i = 1; i < argc; i++) {
        if (strncmp(argv[i], "-seed=", 6) == 0) seed = strtoull(argv[i] + 6, NULL, 10);
        else if (strncmp(argv[i], "-max_total_time=", 16) == 0) max_seconds = atof(argv[i] + 16);
        else if (strncmp(argv[i], "-runs=", 6) == 0) max_runs = strtoull(argv[i] + 6, NULL, 10);
        else if (strncmp(argv[i], "-artifact_prefix=", 17) == 0) artifact_prefix = argv[i] + 17;
        else if (argv[i][0] == '-') fprintf(stderr, "fuzz_core: ignoring %s\n", argv[i]);
        else files++;
    }
    __sanitizer_set_death_callback(save_current);
    signal(SIGALRM, on_alarm);
    if (files) {
        for (i = 1; i < argc; i++)
            if (argv[i][0] != '-') status |= run_file(argv[i]);
        return status;
    }
    state = seed * 0x9e3779b97f4a7c15u + 1;
    start = seconds_now();
    while (runs < max_runs && seconds_now() - start < max_seconds) {
        size_t size, j;
        state ^= state << 13; state ^= state >> 7; state ^= state << 17; /* xorshift64 */
        size = (size_t)(state % sizeof buf);
        for (j = 0; j < size; j++) {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            buf[j] = (uint8_t)(state >> 32);
        }
        alarm(30);
        LLVMFuzzerTestOneInput(buf, size);
        alarm(0);
        runs++;
    }
    printf("fuzz_core: Done %llu runs in %.0f second(s) (built-in random driver, seed %llu)\n",
           (unsigned long long)runs, seconds_now() - start, (unsigned long long)seed);
    return 0;
}
#endif
