/*
 * Gossamer's HTTP/2 header collector: the nghttp2 callbacks that run once per header field,
 * in C, so that a header block reaches Python as one buffer instead of one call per field.
 *
 * Self-contained: no nghttp2 header is needed (every nghttp2 type is passed through as an
 * opaque pointer) and no Python header either; gossamer.protocol.h2.session loads the shared
 * object with cffi (ABI mode) and installs these functions as the session's callbacks.
 *
 * Each session's user_data is a gossamer_h2_ctx. The per-field callbacks append
 * "name\0value\0" to its buffer (HTTP/2 forbids NUL in field names and values, and nghttp2
 * has validated them before calling; a NUL is refused anyway). The other callbacks are
 * trampolines: they call the Python callbacks with the handle Python gave, so Python code
 * sees the same arguments as without this collector.
 *
 * gossamer_h2_send gathers everything nghttp2_session_mem_send produces (one frame per call)
 * into the context's output buffer, so Python makes one call per flush instead of one per
 * frame. A buffer grown past SEND_KEEP by a burst is freed at the next call.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#define ERR_TEMPORAL_CALLBACK_FAILURE (-521)
#define ERR_CALLBACK_FAILURE (-902)

typedef int (*frame_cb)(void *session, const void *frame, void *user_data);
typedef int (*data_chunk_cb)(void *session, uint8_t flags, int32_t stream_id,
                             const char *data, size_t len, void *user_data);
typedef int (*stream_close_cb)(void *session, int32_t stream_id, uint32_t error_code,
                               void *user_data);
typedef ssize_t (*read_cb)(void *session, int32_t stream_id, uint8_t *buf, size_t length,
                           uint32_t *data_flags, void *source, void *user_data);

typedef ssize_t (*mem_send_fn)(void *session, const uint8_t **data);

#define SEND_KEEP (256 * 1024)

typedef struct {
    void *handle;        /* passed to the Python callbacks as their user_data */
    char *out;           /* frames gathered by gossamer_h2_send */
    size_t out_cap;
    char *buf;           /* the header block being received: name\0value\0... */
    size_t len;
    size_t cap;
    size_t list_size;    /* its size as RFC 9113 counts it (name + value + 32 per field) */
    size_t max_list_size;
} gossamer_h2_ctx;

static frame_cb py_frame_recv;
static data_chunk_cb py_data_chunk;
static stream_close_cb py_stream_close;
static read_cb py_read_body;
static mem_send_fn mem_send;

void gossamer_h2_set_python(frame_cb frame_recv, data_chunk_cb data_chunk,
                            stream_close_cb stream_close, read_cb read_body,
                            mem_send_fn nghttp2_mem_send) {
    py_frame_recv = frame_recv;
    py_data_chunk = data_chunk;
    py_stream_close = stream_close;
    py_read_body = read_body;
    mem_send = nghttp2_mem_send;
}

/* Make room for need bytes in *buf (capacity *cap, doubled from first as needed); 0 when
 * out of memory (the buffer is then unchanged). */
static int reserve(char **buf, size_t *cap, size_t need, size_t first) {
    size_t size = *cap ? *cap : first;
    char *grown;
    if (need <= *cap) {
        return 1;
    }
    while (size < need) {
        size *= 2;
    }
    grown = realloc(*buf, size);
    if (grown == NULL) {
        return 0;
    }
    *buf = grown;
    *cap = size;
    return 1;
}

gossamer_h2_ctx *gossamer_h2_ctx_new(void *handle, size_t max_list_size) {
    gossamer_h2_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx != NULL) {
        ctx->handle = handle;
        ctx->max_list_size = max_list_size;
    }
    return ctx;
}

void gossamer_h2_ctx_free(gossamer_h2_ctx *ctx) {
    if (ctx != NULL) {
        free(ctx->buf);
        free(ctx->out);
        free(ctx);
    }
}

/* Serialize everything the session wants to send now into ctx's output buffer: returns its
 * length (*data points at it, valid until the next call) or a negative nghttp2 error. */
ssize_t gossamer_h2_send(void *session, gossamer_h2_ctx *ctx, const char **data) {
    size_t len = 0;
    if (ctx->out_cap > SEND_KEEP) {
        free(ctx->out);
        ctx->out = NULL;
        ctx->out_cap = 0;
    }
    for (;;) {
        const uint8_t *frame;
        ssize_t n = mem_send(session, &frame);
        if (n <= 0) {
            if (n < 0) {
                return n;
            }
            break;
        }
        if (!reserve(&ctx->out, &ctx->out_cap, len + (size_t)n, 4096)) {
            return ERR_CALLBACK_FAILURE;
        }
        memcpy(ctx->out + len, frame, (size_t)n);
        len += (size_t)n;
    }
    *data = ctx->out;
    return (ssize_t)len;
}

/* The collected block (valid until the next header callback of this session). */
const char *gossamer_h2_headers(gossamer_h2_ctx *ctx, size_t *len) {
    *len = ctx->len;
    return ctx->buf;
}

int gossamer_h2_on_begin_headers(void *session, const void *frame, void *user_data) {
    gossamer_h2_ctx *ctx = user_data;
    (void)session;
    (void)frame;
    ctx->len = 0;
    ctx->list_size = 0;
    return 0;
}

int gossamer_h2_on_header(void *session, const void *frame, const char *name, size_t namelen,
                          const char *value, size_t valuelen, uint8_t flags,
                          void *user_data) {
    gossamer_h2_ctx *ctx = user_data;
    size_t need;
    (void)session;
    (void)frame;
    (void)flags;
    ctx->list_size += namelen + valuelen + 32;
    if (ctx->list_size > ctx->max_list_size) {
        return ERR_TEMPORAL_CALLBACK_FAILURE; /* nghttp2 resets this stream */
    }
    if (memchr(name, 0, namelen) != NULL || memchr(value, 0, valuelen) != NULL) {
        return ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    need = ctx->len + namelen + valuelen + 2;
    if (!reserve(&ctx->buf, &ctx->cap, need, 512)) {
        return ERR_CALLBACK_FAILURE;
    }
    memcpy(ctx->buf + ctx->len, name, namelen);
    ctx->len += namelen;
    ctx->buf[ctx->len++] = '\0';
    memcpy(ctx->buf + ctx->len, value, valuelen);
    ctx->len += valuelen;
    ctx->buf[ctx->len++] = '\0';
    return 0;
}

int gossamer_h2_on_frame_recv(void *session, const void *frame, void *user_data) {
    return py_frame_recv(session, frame, ((gossamer_h2_ctx *)user_data)->handle);
}

int gossamer_h2_on_data_chunk(void *session, uint8_t flags, int32_t stream_id,
                              const char *data, size_t len, void *user_data) {
    return py_data_chunk(session, flags, stream_id, data, len,
                         ((gossamer_h2_ctx *)user_data)->handle);
}

int gossamer_h2_on_stream_close(void *session, int32_t stream_id, uint32_t error_code,
                                void *user_data) {
    return py_stream_close(session, stream_id, error_code,
                           ((gossamer_h2_ctx *)user_data)->handle);
}

ssize_t gossamer_h2_read_body(void *session, int32_t stream_id, uint8_t *buf, size_t length,
                              uint32_t *data_flags, void *source, void *user_data) {
    return py_read_body(session, stream_id, buf, length, data_flags, source,
                        ((gossamer_h2_ctx *)user_data)->handle);
}
