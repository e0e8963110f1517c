"""What one client can make `masktfx serve` hold; defaults that keep a 2-core, 24 GiB machine
answering, and the allocator setting that keeps what was freed from piling up. Nothing here
imports TensorFlow, so the command line can show the defaults (and set the allocator) first."""

import ctypes
import ctypes.util
import functools
import logging
import os

# Regions one request may hold. Each costs up to max_pixels of decoded pixels per view, so this
# bounds what one request can make the server allocate; clients batch below it.
DEFAULT_MAX_REGIONS = 256
# Bytes the images and masks of one request decode to (width x height x samples x bytes per sample,
# from their headers): what a request of few, huge regions can make the server allocate.
DEFAULT_MAX_DECODED_BYTES = 256 * 2**20
# Open REST connections (each holds a thread) and gRPC calls in flight.
DEFAULT_MAX_CONNECTIONS = 128
# Model calls whose images and masks decode to more than this run one at a time. TensorFlow's
# CPU allocator with oneDNN (its default on x86) keeps what its largest moment took, for good:
# large calls at once left it holding more than the budget had reserved for them while new
# requests were admitted beside it (bench/serving --budget). Two cores gain nothing from two
# such calls at once; smaller calls are not held back.
LARGE_MODEL_CALL_BYTES = 32 * 2**20
# Bytes of a gRPC message taken per stream before its handler reads it (the HTTP/2 window a
# stream starts with); larger windows help links with long round trips.
GRPC_STREAM_WINDOW_BYTES = 2**20
# Seconds a REST client may take to send its request's headers and body.
DEFAULT_READ_TIMEOUT_S = 10.0
# Bytes all requests in flight may hold at once, across connections and both APIs (bodies, their
# parsed values, what their images decode to): --max-connections requests of the per-request
# limits could otherwise each hold their whole allowance together.
DEFAULT_MAX_INFLIGHT_BYTES = 1024 * 2**20
# Seconds a request waits for room in that budget before it is refused.
DEFAULT_INFLIGHT_WAIT_S = 1.0
# REST predict requests with bodies over SMALL_BODY_BYTES sized, parsed and answered at once
# (as TF Serving's --rest_api_num_threads bounds its REST work); the others wait, asleep, once
# their body is read. Sizing and parsing a large body hold the interpreter lock; with every
# connection's thread doing it at once, a status call waited seconds for its turn
# (bench/serving.py --budget). Smaller requests are not held back.
DEFAULT_REST_THREADS = os.cpu_count() or 1
SMALL_BODY_BYTES = 2**20

# glibc's malloc arenas: at most this many, shared by all threads.
MALLOC_ARENAS = 4
_M_ARENA_MAX = -8  # glibc's mallopt parameter number


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas; call it before the threads that serve requests exist.

    glibc gives threads arenas of their own (up to 8 per core), and memory freed in one arena
    is kept for that arena: with a thread per REST connection, each big request on a new
    thread left its model call's memory behind in another arena, and the server's RSS grew
    past what its requests held at once (bench/serving --budget). Returns False where the C
    library is not glibc (nothing changes there)."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    if not mallopt(_M_ARENA_MAX, arenas):
        logging.getLogger("masktfx.serve").warning("could not cap malloc arenas at %d", arenas)
        return False
    return True


def return_freed_memory() -> bool:
    """Give the system back the pages malloc holds free (glibc's malloc_trim), after a large
    request is answered.

    What a large request freed stays with malloc, in whichever arena its threads used, and the
    next large request, on other threads, is given new pages beside it: under a flood of large
    requests the server's RSS rose far past what its requests held at once (bench/serving
    --budget). Returns False where the C library is not glibc (nothing is returned there)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True
