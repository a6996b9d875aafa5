/*
 * _core.c: the CPython + NumPy C-API binding of csrc/greedyprune.c.
 *
 * Private: greedyprune/_api.py validates every argument (docs/spec.md §4) and hands over aligned,
 * native-byte-order NumPy arrays of a supported dtype, so this file only maps arrays to gp_view
 * descriptions, releases the GIL around the C core, and turns a gp_status into an exception.
 * On the main thread it lets Python's signal handlers run every few milliseconds of the call,
 * so that Ctrl-C raises KeyboardInterrupt promptly.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <numpy/arrayobject.h>

#include "greedyprune.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(_OPENMP) && (defined(__linux__) || defined(__APPLE__))
#include <dlfcn.h> /* dladdr: Python.h has defined _GNU_SOURCE on Linux */
#define GP_FIND_OPENMP_LIBRARY 1
#endif

/* The compiler that built the extension, for greedyprune.show_config(). */
#if defined(__clang__)
#define GP_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define GP_COMPILER "gcc " __VERSION__
#elif defined(_MSC_VER)
#define GP_STRINGIFY_(x) #x
#define GP_STRINGIFY(x) GP_STRINGIFY_(x)
#define GP_COMPILER "MSVC " GP_STRINGIFY(_MSC_FULL_VER)
#else
#define GP_COMPILER "unknown"
#endif
/* Defined by setup.py: the flags it compiled with, and why OpenMP is off when it is. */
#ifndef GREEDYPRUNE_BUILD_FLAGS
#define GREEDYPRUNE_BUILD_FLAGS ""
#endif
#ifndef GREEDYPRUNE_NO_OPENMP_REASON
#define GREEDYPRUNE_NO_OPENMP_REASON ""
#endif

/* "threading", interned at import: the module that knows which thread is the main one. */
static PyObject *threading_name = NULL;

/* Describe `array` (ndim 2 or 3 for features, 1 or 2 for saliency) as a gp_view. A uint16 array
 * is read as bfloat16 (PyTorch's bfloat16 tensors arrive viewed as uint16). */
static int view_of(PyArrayObject *array, int is_saliency, gp_view *view, const char *name)
{
    int ndim = PyArray_NDIM(array), i, nd_min = is_saliency ? 1 : 2;
    npy_intp itemsize = PyArray_ITEMSIZE(array);
    int64_t shape[3] = {1, 1, 1}, strides[3] = {0, 0, 0};
    switch (PyArray_TYPE(array)) {
    case NPY_FLOAT32: view->dtype = GP_FLOAT32; break;
    case NPY_FLOAT64: view->dtype = GP_FLOAT64; break;
    case NPY_FLOAT16: view->dtype = GP_FLOAT16; break;
    case NPY_UINT16: view->dtype = GP_BFLOAT16; break;
    default:
        PyErr_Format(PyExc_TypeError, "%s: unsupported dtype for the C core", name);
        return -1;
    }
    if (ndim < nd_min || ndim > nd_min + 1 || !PyArray_ISALIGNED(array) ||
        !PyArray_ISNOTSWAPPED(array)) {
        PyErr_Format(PyExc_ValueError, "%s: expected an aligned, native-order array", name);
        return -1;
    }
    /* Right-align the array's axes into (batch, rows, cols); saliency has cols == 1. */
    for (i = 0; i < ndim; i++) {
        int axis = 3 - ndim - is_saliency + i;
        shape[axis] = PyArray_DIM(array, i);
        strides[axis] = PyArray_STRIDE(array, i) / itemsize; /* aligned: an exact division */
    }
    view->data = PyArray_DATA(array);
    view->batch = shape[0];
    view->rows = shape[1];
    view->cols = shape[2];
    view->batch_stride = strides[0];
    view->row_stride = strides[1];
    view->col_stride = strides[2];
    return 0;
}

static PyObject *raise_status(gp_status status)
{
    PyObject *type = status == GP_ENOMEM ? PyExc_MemoryError : PyExc_ValueError;
    PyErr_SetString(type, gp_strerror(status));
    return NULL;
}

/* A thread count as a C int: beyond INT_MAX it is INT_MAX (the C core caps the team at the CPUs
 * available anyway), below INT_MIN it is INT_MIN. */
static int as_thread_count(PyObject *obj, int *out)
{
    int overflow;
    long long value;
    PyObject *index = PyNumber_Index(obj);
    if (index == NULL) return -1;
    value = PyLong_AsLongLongAndOverflow(index, &overflow);
    Py_DECREF(index);
    if (value == -1 && PyErr_Occurred()) return -1;
    if (overflow > 0 || value > INT_MAX)
        *out = INT_MAX;
    else if (overflow < 0 || value < INT_MIN)
        *out = INT_MIN;
    else
        *out = (int)value;
    return 0;
}

/* 1 if this is Python's main thread, the only one that runs signal handlers (and 1 when that
 * cannot be told: checking costs a moment, skipping a Ctrl-C would not be prompt). */
static int on_main_thread(void)
{
    PyObject *threading = PyImport_GetModule(threading_name), *main = NULL, *ident = NULL;
    int result = 1;
    if (threading != NULL) main = PyObject_CallMethod(threading, "main_thread", NULL);
    if (main != NULL) ident = PyObject_GetAttrString(main, "ident");
    if (ident != NULL) {
        unsigned long main_ident = PyLong_AsUnsignedLong(ident);
        if (!(main_ident == (unsigned long)-1 && PyErr_Occurred()))
            result = main_ident == PyThread_get_thread_ident();
    }
    PyErr_Clear();
    Py_XDECREF(ident);
    Py_XDECREF(main);
    Py_XDECREF(threading);
    return result;
}

/* The calling thread's state while the C core runs without the GIL. */
typedef struct released_gil {
    PyThreadState *thread_state;
} released_gil;

/* gp_options.interrupt: take the GIL back for a moment and run Python's signal handlers. The C
 * core calls it only from the thread that released the GIL. Nonzero when a handler raised (the
 * exception, KeyboardInterrupt for Ctrl-C, stays set for the caller to return). */
static int check_signals(void *context)
{
    released_gil *released = (released_gil *)context;
    int raised;
    PyEval_RestoreThread(released->thread_state);
    raised = PyErr_CheckSignals() < 0;
    released->thread_state = PyEval_SaveThread();
    return raised;
}

PyDoc_STRVAR(greedy_doc,
             "greedy(features, saliency, k, lam, num_threads, sort) -> (indices, gains or None)\n\n"
             "Private: call greedyprune.select / greedyprune.greedy, which validate arguments.");

static PyObject *core_greedy(PyObject *self, PyObject *args)
{
    PyArrayObject *features = NULL, *saliency = NULL, *indices = NULL, *gains = NULL;
    PyObject *saliency_obj, *num_threads_obj;
    Py_ssize_t k;
    double lam;
    int sort;
    gp_view x, s;
    gp_options options;
    released_gil released;
    gp_status status;
    npy_intp out_shape[2];
    int out_ndim;
    (void)self;

    memset(&options, 0, sizeof options);
    if (!PyArg_ParseTuple(args, "O!OndOp", &PyArray_Type, &features, &saliency_obj, &k, &lam,
                          &num_threads_obj, &sort))
        return NULL;
    if (as_thread_count(num_threads_obj, &options.num_threads) < 0) return NULL;
    if (view_of(features, 0, &x, "features") < 0) return NULL;
    if (saliency_obj != Py_None) {
        if (!PyArray_Check(saliency_obj)) {
            PyErr_SetString(PyExc_TypeError, "saliency: expected a NumPy array or None");
            return NULL;
        }
        saliency = (PyArrayObject *)saliency_obj;
        if (view_of(saliency, 1, &s, "saliency") < 0) return NULL;
    }

    out_ndim = PyArray_NDIM(features) - 1;
    out_shape[0] = out_ndim == 2 ? (npy_intp)x.batch : (npy_intp)k;
    out_shape[1] = (npy_intp)k;
    indices = (PyArrayObject *)PyArray_SimpleNew(out_ndim, out_shape, NPY_INT64);
    if (indices == NULL) goto error;
    if (!sort) {
        gains = (PyArrayObject *)PyArray_SimpleNew(out_ndim, out_shape, NPY_FLOAT64);
        if (gains == NULL) goto error;
    }

    if (on_main_thread()) {
        options.interrupt = check_signals;
        options.interrupt_context = &released;
    }
    released.thread_state = PyEval_SaveThread();
    if (sort)
        status = gp_select_with(&x, saliency ? &s : NULL, (int64_t)k, lam, &options,
                                (int64_t *)PyArray_DATA(indices));
    else
        status = gp_greedy_with(&x, saliency ? &s : NULL, (int64_t)k, lam, &options,
                                (int64_t *)PyArray_DATA(indices), (double *)PyArray_DATA(gains));
    PyEval_RestoreThread(released.thread_state);

    if (status != GP_OK) {
        if (!(status == GP_EINTERRUPTED && PyErr_Occurred())) raise_status(status);
        goto error;
    }
    if (gains == NULL) return Py_BuildValue("NO", (PyObject *)indices, Py_None);
    return Py_BuildValue("NN", (PyObject *)indices, (PyObject *)gains);

error:
    Py_XDECREF(indices);
    Py_XDECREF(gains);
    return NULL;
}

static PyObject *core_default_num_threads(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromLong(gp_default_num_threads());
}

/* The file of the OpenMP runtime this extension calls (several can be loaded in one process:
 * PyTorch ships its own), or None where that cannot be told or there is no OpenMP. */
static PyObject *openmp_library(void)
{
#ifdef GP_FIND_OPENMP_LIBRARY
    Dl_info info;
    if (dladdr((void *)omp_get_max_threads, &info) && info.dli_fname != NULL)
        return PyUnicode_DecodeFSDefault(info.dli_fname);
#endif
    Py_RETURN_NONE;
}

static PyObject *core_build_info(PyObject *self, PyObject *unused)
{
#ifdef _OPENMP
    long openmp_version = _OPENMP;
#else
    long openmp_version = 0;
#endif
    PyObject *library = openmp_library();
    (void)self;
    (void)unused;
    if (library == NULL) return NULL;
    return Py_BuildValue("{s:s,s:s,s:l,s:s,s:N,s:s}", "compiler", GP_COMPILER, "flags",
                         GREEDYPRUNE_BUILD_FLAGS, "openmp_version", openmp_version,
                         "no_openmp_reason", GREEDYPRUNE_NO_OPENMP_REASON, "openmp_library",
                         library, "simd", gp_simd_variant());
}

static PyMethodDef core_methods[] = {
    {"greedy", core_greedy, METH_VARARGS, greedy_doc},
    {"default_num_threads", core_default_num_threads, METH_NOARGS,
     "Threads the C core is asked for by num_threads <= 0: OpenMP's default (1 without OpenMP);\n"
     "a call uses at most the CPUs available to the process."},
    {"build_info", core_build_info, METH_NOARGS,
     "How the extension was built and runs: compiler, flags, OpenMP (version, runtime library,\n"
     "why it is off), SIMD variant; see greedyprune.config_info()."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef core_module = {PyModuleDef_HEAD_INIT, "greedyprune._core",
                                         "C core of greedyprune (private).", -1, core_methods};

PyMODINIT_FUNC PyInit__core(void)
{
    PyObject *module;
    import_array();
    threading_name = PyUnicode_InternFromString("threading");
    if (threading_name == NULL) return NULL;
    module = PyModule_Create(&core_module);
    if (module == NULL) return NULL;
    if (PyModule_AddIntConstant(module, "HAS_OPENMP", gp_has_openmp()) < 0 ||
        PyModule_AddIntConstant(module, "VERSION_NUMBER", (long)gp_version_number()) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
