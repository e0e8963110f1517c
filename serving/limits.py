"""What one client can make `masktfx serve` hold; defaults that keep a 2-core, 24 GiB machine
answering. A module of constants only, so the command line can show them without TensorFlow."""

# Regions one request may hold. Each costs up to max_pixels of decoded pixels per view, so this
# bounds what one request can make the server allocate; clients batch below it.
DEFAULT_MAX_REGIONS = 256
# Bytes the images and masks of one request decode to (width x height x samples x bytes per sample,
# from their headers): what a request of few, huge regions can make the server allocate.
DEFAULT_MAX_DECODED_BYTES = 256 * 2**20
# Open REST connections (each holds a thread) and gRPC calls in flight.
DEFAULT_MAX_CONNECTIONS = 128
# Seconds a REST client may take to send its request's headers and body.
DEFAULT_READ_TIMEOUT_S = 10.0
# Bytes all requests in flight may hold at once, across connections and both APIs (bodies, their
# parsed values, what their images decode to): --max-connections requests of the per-request
# limits could otherwise each hold their whole allowance together.
DEFAULT_MAX_INFLIGHT_BYTES = 1024 * 2**20
# Seconds a request waits for room in that budget before it is refused.
DEFAULT_INFLIGHT_WAIT_S = 1.0
