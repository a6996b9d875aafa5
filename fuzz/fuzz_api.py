"""Fuzz the Python API against greedyprune.reference, its plain-NumPy twin.

Each input (a byte string) is decoded into one call of ``greedyprune.select``,
``greedyprune.greedy`` or a ``greedyprune.methods`` selector: NumPy arrays or CPU torch tensors of every floating dtype
(and some that are refused), strided, reversed, transposed and broadcast views, saliency or none,
and ``k``, ``lam``, ``num_threads`` of every type, valid or not. Then it checks docs/spec.md:

- bad input raises ValueError, TypeError or MemoryError, nothing else (and never crashes); for
  NumPy input the reference raises the same exception with the same message;
- where the reference answers, the C core answers too, and every pick is the greedy pick of
  docs/spec.md §1, replayed in float64 on the C core's own earlier picks: float64 within rounding
  (FLOAT64_TOLERANCE) and float32/float16/bfloat16 within 1e-4 in gain of the best candidate;
  between candidates that tie exactly by the contract (rows parallel to a pick, exact duplicates:
  their distances are exactly 0 or 1), the lowest index; the reported gains within the same
  tolerance of the replayed ones;
- the answer does not depend on the thread count or on the memory layout (a contiguous copy);
- the other selectors keep k distinct indices per image, sorted, in the caller's container.
A view of 2^40 or more rows repeated from one (np.broadcast_to, Tensor.expand) must be refused
at once (MemoryError or ValueError; TypeError for a bad argument).

Engines: atheris (coverage-guided libFuzzer, when installed) or a built-in random driver with a
fixed seed (``--engine random``). Both print the number of calls they made and save a failing
input as ``crash-*`` under ``--artifacts``; ``python fuzz/fuzz_api.py FILE ...`` replays inputs.
fuzz/run.sh runs it; see README.md ("Fuzzing").
"""
from __future__ import annotations

import argparse
import fractions
import hashlib
import importlib.util
import os
import struct
import sys
import time

import numpy as np

try:  # torch is optional: without it the campaign covers NumPy input only
    import torch
except ImportError:
    torch = None

#: Float64 input: a pick may fall this far below the best gain (rounding of the distances).
FLOAT64_TOLERANCE = 1e-12
#: float32, float16 and bfloat16 input (docs/spec.md §2).
FLOAT32_TOLERANCE = 1e-4
#: Bounds that keep a call to a millisecond or so: N tokens, D features, B images.
MAX_N, MAX_D, MAX_B = 24, 12, 3
#: Rows of the broadcast views that no memory can hold work for.
HUGE_ROWS = (2**40, 2**50, (3 * 2**61 + 1) // 7)
ALLOWED_ERRORS = (ValueError, TypeError, MemoryError)

# Values that make ties, duplicates, parallel rows, zero rows and extreme norms likely.
PALETTE = (0.0, 1.0, -1.0, 2.0, 0.5, 3.0, -0.25, 1e-3, 7.0, -5.0, 1e-20, 1e20, 1e-40, 1e-300,
           1e300, 65504.0, 3e38, 5e-324, 1.4e-45, 6e-8, -0.0, 1.4192704327512633,
           0.11357618410652277, 0.16977419616931896)


class Bytes:
    """Reads choices from the fuzz input; once it is used up every choice is its first option."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def below(self, n: int) -> int:
        return self.byte() % n

    def choice(self, options):
        return options[self.below(len(options))]

    def chance(self, sixteenths: int) -> bool:
        """True with probability sixteenths/16 (False once the input is used up)."""
        return self.pos < len(self.data) and self.byte() % 16 < sixteenths

    def values(self, count: int, how: str, dtype: str) -> np.ndarray:
        """`count` values for an array of `dtype`: from the palette, small multiples of 1/8
        (many exact ties), or mixed (one in eight a raw bit pattern of the dtype, NaN and
        infinity included, the others scaled small values)."""
        out = np.empty(count, dtype=np.float64)
        for i in range(count):
            if self.pos >= len(self.data):
                out[i] = PALETTE[i % 8]
            elif how == "mixed":
                b = self.byte()
                if b % 8 == 0:
                    out[i] = self.raw(dtype)
                else:
                    out[i] = (self.byte() - 128) / 8 * 10.0 ** (b // 8 % 9 - 4)
            elif how == "small":
                out[i] = (self.byte() - 128) / 8
            else:
                b = self.byte()
                out[i] = np.nan if b == 255 else -np.inf if b == 254 else PALETTE[b % len(PALETTE)]
        return out

    def raw(self, dtype: str) -> float:
        """A value from the bit pattern of one element of `dtype` (another floating dtype's
        for a dtype that is not floating)."""
        raw = bytes(self.byte() for _ in range(8))
        if dtype == "float16":
            return float(struct.unpack("<e", raw[:2])[0])
        if dtype == "bfloat16":
            return float(struct.unpack("<f", b"\0\0" + raw[:2])[0])
        if dtype == "float64":
            return struct.unpack("<d", raw)[0]
        return float(struct.unpack("<f", raw[:4])[0])


class Case:
    """One decoded call: its arguments, and what the checks need to know about them."""

    def __init__(self):
        self.function = "select"
        self.features = None
        self.saliency = None
        self.k = 1
        self.lam = 0.5
        self.num_threads = None
        self.seed = 0
        self.dtype = "float64"
        self.tensor = False
        self.huge = False

    def describe(self) -> str:
        def show(a):
            if a is None:
                return "None"
            if isinstance(a, np.ndarray):
                return f"ndarray{a.shape} {a.dtype} strides {a.strides}:\n{a!r}"
            if torch is not None and isinstance(a, torch.Tensor):
                return f"tensor{tuple(a.shape)} {a.dtype} strides {a.stride()}:\n{a!r}"
            return repr(a)

        return (f"{self.function}(features={show(self.features)},\n  k={self.k!r}, "
                f"saliency={show(self.saliency)},\n  lam={self.lam!r}, "
                f"num_threads={self.num_threads!r}, seed={self.seed!r})")


FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
BAD_DTYPES = ("int32", "bool", "complex64", "object", "uint16")


def make_array(src: Bytes, shape, dtype: str, tensor: bool, how: str):
    """An array of `shape` and `dtype` (a tensor when `tensor`), as a view with a random layout:
    sliced with a step, reversed, transposed, broadcast along an axis, or plain."""
    layout = src.choice(("plain", "plain", "step", "reverse", "transpose", "broadcast"))
    base_shape = list(shape)
    if layout == "step" and shape:
        base_shape[-1] = shape[-1] * 2
    if layout == "broadcast" and shape:
        axis = src.below(len(shape))
        base_shape[axis] = 1
    if layout == "transpose" and len(shape) >= 2:
        base_shape[-2], base_shape[-1] = base_shape[-1], base_shape[-2]
    values = src.values(int(np.prod(base_shape)), how, dtype).reshape(base_shape)
    if how != "mixed" and dtype in ("float16", "float32", "bfloat16"):
        # The palette's extremes saturate at the dtype's largest finite value.
        largest = float(np.finfo(np.float32 if dtype == "bfloat16" else dtype).max)
        np.clip(values, -largest, largest, out=values)
    if dtype == "bfloat16" or (tensor and dtype in FLOAT_DTYPES):
        with np.errstate(over="ignore"):
            a = torch.from_numpy(values).to(getattr(torch, dtype))
    elif dtype == "object":
        a = values.astype(object)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            a = values.astype(dtype)
    if layout == "step" and shape:
        a = a[..., ::2]
    elif layout == "reverse" and shape:
        a = a.flip(0) if is_tensor(a) else a[::-1]
    elif layout == "transpose" and len(shape) >= 2:
        a = a.transpose(-1, -2) if is_tensor(a) else np.swapaxes(a, -1, -2)
    elif layout == "broadcast" and shape:
        a = a.expand(*shape) if is_tensor(a) else np.broadcast_to(a, shape)
    return a


def is_tensor(a) -> bool:
    return torch is not None and isinstance(a, torch.Tensor)


def decode(data: bytes) -> Case:
    src = Bytes(data)
    case = Case()
    case.function = src.choice(("select", "select", "greedy", "greedy", "method"))
    if case.function == "method":
        from greedyprune import methods

        case.function = "method:" + src.choice(methods.names())
    case.tensor = torch is not None and src.chance(5)
    case.dtype = src.choice(FLOAT_DTYPES if case.tensor else FLOAT_DTYPES[:3])
    if src.chance(1):
        case.dtype = src.choice(BAD_DTYPES)
    how = src.choice(("palette", "palette", "small", "mixed"))
    b, n, d = src.below(MAX_B + 1), 1 + src.below(MAX_N), 1 + src.below(MAX_D)
    shape = (b, n, d) if src.below(2) else (n, d)
    if src.chance(1):  # a shape the API refuses
        shape = src.choice(((n,), (b, 0, d), (n, 0), (0, d), (1, b, n, d), ()))
    if src.chance(1) and case.dtype in FLOAT_DTYPES:  # rows repeated beyond any memory
        case.huge = True
        rows = src.choice(HUGE_ROWS)
        # As many columns as NumPy can describe (its views hold below 2^63 bytes).
        shape = (rows, 1 + src.below(min(3, (2**63 - 1) // (rows * 8))))
        if src.below(2):
            shape = (1,) + shape
        if case.tensor:
            row = torch.ones((1, shape[-1]), dtype=getattr(torch, case.dtype))
            case.features = row.expand(shape)
        else:
            case.features = np.broadcast_to(np.ones((1, shape[-1]), dtype=case.dtype), shape)
    else:
        case.features = make_array(src, shape, case.dtype, case.tensor, how)
    case.tensor = is_tensor(case.features)

    saliency = src.choice(("none", "none", "good", "good", "constant", "wrong shape", "list"))
    s_shape = shape[:-1]
    if saliency == "wrong shape":
        s_shape = src.choice((shape, shape[:-1] + (1,), shape[:-2] + (n + 1,)))
    if saliency != "none" and not (case.huge and src.below(2)):
        s_dtype = src.choice(("float64", "float32", "float16", "bfloat16"))
        if s_dtype == "bfloat16" and torch is None:
            s_dtype = "float32"
        if case.huge:
            case.saliency = np.broadcast_to(np.float32(1.0), s_shape)
        else:
            case.saliency = make_array(src, s_shape, s_dtype, case.tensor or s_dtype == "bfloat16",
                                       how)
            if saliency == "constant":
                full_like = torch.full_like if is_tensor(case.saliency) else np.full_like
                case.saliency = full_like(case.saliency, 2.0)
            elif saliency == "list":
                case.saliency = case.saliency.tolist()

    n_tokens = shape[-2] if len(shape) >= 2 else 1
    case.k = 1 + src.below(max(1, min(n_tokens, 64)))
    if src.chance(2):
        case.k = src.choice((0, -1, n_tokens + 1, 2.0, True, np.int64(1), "2", None, 2**70,
                             np.array(1), np.uint8(1)))
    case.lam = src.choice((0.5, 0.0, 1.0, src.byte() / 255, np.float32(0.25), np.float16(1.0),
                           fractions.Fraction(1, 3), 1, 0))
    if src.chance(2):
        case.lam = src.choice((float("nan"), -0.1, 1.1, 10**400, -(10**400), "0.5", True, None,
                               float("inf"), np.float64(-0.0), 1 + 2**-52))
    case.num_threads = src.choice((None, 1, 2, 3, 4))
    if src.chance(2):
        case.num_threads = src.choice((0, -1, 2**31, 2**40, 2**63, 2.0, True, "2", np.int64(2)))
    case.seed = src.choice((0, 1, 12345))
    return case


# ------------------------------------------------------------------------------------- calls


def call(case: Case, *, function=None, features=None, num_threads="same"):
    """Run the case's function (or another one, on other features or with another thread count
    where given)."""
    import greedyprune
    from greedyprune import methods

    function = function or case.function
    x = case.features if features is None else features
    threads = case.num_threads if num_threads == "same" else num_threads
    if function == "select":
        return greedyprune.select(x, case.k, case.saliency, case.lam, num_threads=threads)
    if function == "greedy":
        return greedyprune.greedy(x, case.k, case.saliency, case.lam, num_threads=threads)
    selector = methods.get(function.split(":", 1)[1])
    return selector(x, case.k, case.saliency, lam=case.lam, seed=case.seed)


def as_float64(a):
    """Values of an array, tensor or list as a float64 NumPy array (bfloat16 widened exactly),
    or `a` itself when it is not something of floating values (the reference then refuses it)."""
    if is_tensor(a):
        if a.dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
            return a.detach().to(torch.float64).numpy()
        return a.numpy()
    return a


def reference_greedy(case: Case, num_threads="same"):
    """The reference's (order, gains), or the exception it raises."""
    from greedyprune import reference

    threads = case.num_threads if num_threads == "same" else num_threads
    try:
        return reference.greedy(as_float64(case.features), case.k, as_float64(case.saliency),
                                case.lam, num_threads=threads)
    except Exception as error:  # compared with what the C core raised
        return error


def fail(case: Case, message: str):
    raise AssertionError(f"{message}\nin the call {case.describe()}")


def allowed(error: BaseException) -> bool:
    return isinstance(error, ALLOWED_ERRORS)


# ------------------------------------------------------------------------------------- checks


def check(data: bytes) -> None:
    case = decode(data)
    try:
        result = call(case)
    except ALLOWED_ERRORS as error:
        result = error
    except Exception as error:  # anything else is a defect
        fail(case, f"raised {type(error).__name__}: {error}")

    if case.huge:
        if not isinstance(result, ALLOWED_ERRORS):
            fail(case, f"a view of {tuple(case.features.shape)} repeated rows gave {result!r}, "
                       f"not MemoryError or ValueError")
        return
    if case.function.startswith("method:"):
        check_method(case, result)
        return

    expected = reference_greedy(case)
    if isinstance(expected, BaseException):
        if not allowed(expected):
            fail(case, f"the reference raised {type(expected).__name__}: {expected}")
        if not isinstance(result, BaseException):
            fail(case, f"the reference raised {type(expected).__name__}: {expected}, the C core "
                       f"answered {result!r}")
        if not case.tensor and (type(result) is not type(expected)
                                or str(result) != str(expected)):
            fail(case, f"the C core raised {type(result).__name__}: {result}\n"
                       f"the reference {type(expected).__name__}: {expected}")
        return
    if isinstance(result, BaseException):
        fail(case, f"the C core raised {type(result).__name__}: {result}; the reference "
                   f"answered {expected}")

    order = gains = None
    if case.function == "greedy":
        order, gains = (np.asarray(v) for v in result)
        if gains.dtype != np.float64 or gains.shape != expected[1].shape:
            fail(case, f"gains {gains!r} do not have the reference's shape and dtype")
    else:
        kept = np.asarray(result)
        order, gains = (np.asarray(v) for v in call(case, function="greedy"))
        if not np.array_equal(kept, np.sort(order, axis=-1)):
            fail(case, f"select gave {kept}, greedy's picks sorted are {np.sort(order, -1)}")
    if order.dtype != np.int64 or order.shape != expected[0].shape:
        fail(case, f"picks {order!r} do not have the reference's shape {expected[0].shape}")
    check_picks(case, order, gains)
    check_invariance(case, result)


def check_picks(case: Case, order: np.ndarray, gains: np.ndarray) -> None:
    """Replay the C core's picks with the reference's arithmetic (docs/spec.md §1-2)."""
    from greedyprune import reference

    x = np.asarray(as_float64(case.features), dtype=np.float64)
    x = x.reshape((-1,) + x.shape[-2:])
    s = None
    if case.saliency is not None:
        s = np.asarray(as_float64(case.saliency), dtype=np.float64).reshape(x.shape[:2])
    tolerance = FLOAT64_TOLERANCE if case.dtype == "float64" else FLOAT32_TOLERANCE
    k = order.shape[-1]
    order, gains = order.reshape(len(x), k), gains.reshape(len(x), k)
    for b in range(len(x)):
        xhat = reference.unit_rows(x[b])
        shat = reference.normalized_saliency(None if s is None else s[b], x.shape[1])
        m = np.ones(x.shape[1])
        available = np.ones(x.shape[1], dtype=bool)
        for step, pick in enumerate(order[b]):
            if not 0 <= pick < len(m) or not available[pick]:
                fail(case, f"image {b}: pick {step} is {pick}: outside [0, N) or kept twice")
            gain = case.lam * shat + (1.0 - case.lam) * m
            gain[~available] = -np.inf
            best = gain.max()
            if gain[pick] < best - tolerance:
                fail(case, f"image {b}, step {step}: picked {pick} with gain {gain[pick]!r}, "
                           f"{best - gain[pick]:.3g} below the best, {int(np.argmax(gain))}")
            exact = available & (gain == gain[pick]) & ((m == 0) | (m == 1))
            if exact[pick] and np.argmax(exact) != pick:
                fail(case, f"image {b}, step {step}: picked {pick}, but {int(np.argmax(exact))} "
                           f"ties with it exactly (parallel or duplicate rows) and comes first")
            if abs(gains[b, step] - gain[pick]) > tolerance:
                fail(case, f"image {b}, step {step}: gain {gains[b, step]!r}, the replay gives "
                           f"{gain[pick]!r}")
            available[pick] = False
            m = np.minimum(m, reference.distances(xhat, pick))


def check_invariance(case: Case, result) -> None:
    """The same answer at one thread and on a contiguous copy."""
    def same(a, b) -> bool:
        if isinstance(a, tuple):
            return all(same(u, v) for u, v in zip(a, b))
        return np.array_equal(np.asarray(a), np.asarray(b))

    if not same(result, call(case, num_threads=1)):
        fail(case, "the answer at num_threads=1 differs")
    copy = case.features.contiguous() if is_tensor(case.features) else np.ascontiguousarray(
        case.features)
    if not same(result, call(case, features=copy)):
        fail(case, "the answer on a contiguous copy differs")


def check_method(case: Case, result) -> None:
    """A selector's contract (greedyprune.methods): errors, shape, sorted distinct picks."""
    if isinstance(result, BaseException):
        return  # an allowed error type; which inputs are refused is the validation's business
    x = case.features
    if is_tensor(x) != is_tensor(result):
        fail(case, f"the selector returned a {type(result).__name__}")
    kept = np.asarray(result.cpu() if is_tensor(result) else result)
    expected_shape = tuple(x.shape[:-2]) + (case.k,)
    if kept.dtype != np.int64 or kept.shape != expected_shape:
        fail(case, f"the selector returned {kept!r}, expected int64 of shape {expected_shape}")
    rows = kept.reshape(-1, case.k)
    if rows.size and (np.any(np.diff(rows, axis=-1) <= 0) or rows.min() < 0
                      or rows.max() >= x.shape[-2]):
        fail(case, f"the selector returned {kept}: not sorted, distinct and in [0, N)")
    if case.function == "method:greedyprune":  # selectors take no num_threads
        expected = reference_greedy(case, num_threads=None)
        if isinstance(expected, BaseException):
            fail(case, f"the reference raised {expected!r}, the selector answered")


# ------------------------------------------------------------------------------------ drivers


def save(data: bytes, artifacts: str) -> str:
    os.makedirs(artifacts, exist_ok=True)
    path = os.path.join(artifacts, "crash-" + hashlib.sha1(data).hexdigest())
    with open(path, "wb") as f:
        f.write(data)
    return path


def seed_inputs(directories) -> list:
    """The files of the seed directories, in a fixed order."""
    inputs = []
    for directory in directories:
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
            with open(os.path.join(directory, name), "rb") as f:
                inputs.append(f.read())
    return inputs


def run_random(seed: int, seconds: float, runs: int, artifacts: str, seeds=()) -> int:
    """The seed inputs, then random inputs from `seed`, no coverage guidance. The input being
    run is kept in ARTIFACTS/current-input until the run ends, so a hard crash leaves its
    reproducer there."""
    import random

    rng = random.Random(seed)
    os.makedirs(artifacts, exist_ok=True)
    current = os.path.join(artifacts, "current-input")
    start, count = time.monotonic(), 0
    first = seed_inputs(seeds)
    with open(current, "wb") as keep:
        while count < runs and time.monotonic() - start < seconds:
            data = first[count] if count < len(first) else rng.randbytes(rng.randrange(0, 200))
            keep.seek(0)
            keep.write(data)
            keep.truncate()
            keep.flush()
            try:
                check(data)
            except BaseException:
                print(f"fuzz_api: reproducer written to {save(data, artifacts)}", file=sys.stderr)
                raise
            count += 1
    os.remove(current)
    print(f"fuzz_api: Done {count} runs in {time.monotonic() - start:.0f} second(s) "
          f"(built-in random driver, seed {seed})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", help="inputs to replay, each once")
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--runs", type=int, default=2**62)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--artifacts", default="fuzz/out/python/")
    parser.add_argument("--corpus", default="fuzz/corpus/python",
                        help="where new inputs go (and are read from)")
    parser.add_argument("--seeds", action="append", default=[],
                        help="a directory of inputs to start from, read only (repeatable)")
    args = parser.parse_args(argv)
    if args.inputs:
        for path in args.inputs:
            with open(path, "rb") as f:
                check(f.read())
            print(f"fuzz_api: {path}: ok")
        return 0
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "random"
    if engine == "random":
        return run_random(args.seed, args.seconds, args.runs, args.artifacts, args.seeds)

    import atheris

    with atheris.instrument_imports(include=["greedyprune"]):
        import greedyprune  # noqa: F401
        import greedyprune.methods  # noqa: F401
        import greedyprune.reference  # noqa: F401
    os.makedirs(args.corpus, exist_ok=True)
    os.makedirs(args.artifacts, exist_ok=True)
    libfuzzer_args = [sys.argv[0], f"-seed={args.seed}", f"-max_total_time={int(args.seconds)}",
                      f"-artifact_prefix={os.path.join(args.artifacts, '')}", "-max_len=512",
                      "-timeout=60", "-print_final_stats=1", args.corpus,
                      *[d for d in args.seeds if os.path.isdir(d)]]
    if args.runs < 2**62:
        libfuzzer_args.insert(1, f"-runs={args.runs}")

    atheris.Setup(libfuzzer_args, check)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
