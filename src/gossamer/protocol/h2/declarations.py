"""The C declarations Gossamer's HTTP/2 binding is made of (text only: no I/O, no loading).

``CDEF`` declares the part of libnghttp2's API that ``gossamer.protocol.h2.session`` uses, copied
by hand from ``nghttp2.h`` of libnghttp2 1.52 (Debian ``libnghttp2-14``); ``NATIVE_CDEF``
declares Gossamer's own header collector (``native/headers.c``). ``gossamer.protocol.h2.binding``
loads them; ``gossamer.proxy.h2.build_native`` turns them into a prebuilt declarations module
so that a running sidecar need not parse C (see ``binding``).

Callback parameters that point at bytes are declared ``const char *`` (the header says
``const uint8_t *``): the same ABI, and ``ffi.unpack`` then returns ``bytes``.
"""

from __future__ import annotations

__all__ = ["CDEF", "DECLARED", "FUNCTIONS", "NATIVE_CDEF"]

CDEF = """
typedef struct nghttp2_session nghttp2_session;
typedef struct nghttp2_session_callbacks nghttp2_session_callbacks;
typedef struct nghttp2_option nghttp2_option;

typedef struct {
  int age;
  int version_num;
  const char *version_str;
  const char *proto_str;
} nghttp2_info;

typedef struct {
  uint8_t *name;
  uint8_t *value;
  size_t namelen;
  size_t valuelen;
  uint8_t flags;
} nghttp2_nv;

typedef struct {
  size_t length;
  int32_t stream_id;
  uint8_t type;
  uint8_t flags;
  uint8_t reserved;
} nghttp2_frame_hd;

typedef union {
  int fd;
  void *ptr;
} nghttp2_data_source;

typedef ssize_t (*nghttp2_data_source_read_callback)(
    nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
    uint32_t *data_flags, nghttp2_data_source *source, void *user_data);

typedef struct {
  nghttp2_data_source source;
  nghttp2_data_source_read_callback read_callback;
} nghttp2_data_provider;

typedef struct {
  nghttp2_frame_hd hd;
  size_t padlen;
} nghttp2_data;

typedef struct {
  int32_t stream_id;
  int32_t weight;
  uint8_t exclusive;
} nghttp2_priority_spec;

typedef struct {
  nghttp2_frame_hd hd;
  size_t padlen;
  nghttp2_priority_spec pri_spec;
  nghttp2_nv *nva;
  size_t nvlen;
  int cat;
} nghttp2_headers;

typedef struct {
  nghttp2_frame_hd hd;
  nghttp2_priority_spec pri_spec;
} nghttp2_priority;

typedef struct {
  nghttp2_frame_hd hd;
  uint32_t error_code;
} nghttp2_rst_stream;

typedef struct {
  int32_t settings_id;
  uint32_t value;
} nghttp2_settings_entry;

typedef struct {
  nghttp2_frame_hd hd;
  size_t niv;
  nghttp2_settings_entry *iv;
} nghttp2_settings;

typedef struct {
  nghttp2_frame_hd hd;
  size_t padlen;
  nghttp2_nv *nva;
  size_t nvlen;
  int32_t promised_stream_id;
  uint8_t reserved;
} nghttp2_push_promise;

typedef struct {
  nghttp2_frame_hd hd;
  uint8_t opaque_data[8];
} nghttp2_ping;

typedef struct {
  nghttp2_frame_hd hd;
  int32_t last_stream_id;
  uint32_t error_code;
  uint8_t *opaque_data;
  size_t opaque_data_len;
  uint8_t reserved;
} nghttp2_goaway;

typedef struct {
  nghttp2_frame_hd hd;
  int32_t window_size_increment;
  uint8_t reserved;
} nghttp2_window_update;

typedef struct {
  nghttp2_frame_hd hd;
  void *payload;
} nghttp2_extension;

typedef union {
  nghttp2_frame_hd hd;
  nghttp2_data data;
  nghttp2_headers headers;
  nghttp2_priority priority;
  nghttp2_rst_stream rst_stream;
  nghttp2_settings settings;
  nghttp2_push_promise push_promise;
  nghttp2_ping ping;
  nghttp2_goaway goaway;
  nghttp2_window_update window_update;
  nghttp2_extension ext;
} nghttp2_frame;

typedef int (*nghttp2_on_frame_recv_callback)(
    nghttp2_session *session, const nghttp2_frame *frame, void *user_data);
typedef int (*nghttp2_on_data_chunk_recv_callback)(
    nghttp2_session *session, uint8_t flags, int32_t stream_id, const char *data,
    size_t len, void *user_data);
typedef int (*nghttp2_on_frame_not_send_callback)(
    nghttp2_session *session, const nghttp2_frame *frame, int lib_error_code,
    void *user_data);
typedef int (*nghttp2_on_stream_close_callback)(
    nghttp2_session *session, int32_t stream_id, uint32_t error_code, void *user_data);
typedef int (*nghttp2_on_begin_headers_callback)(
    nghttp2_session *session, const nghttp2_frame *frame, void *user_data);
typedef int (*nghttp2_on_header_callback)(
    nghttp2_session *session, const nghttp2_frame *frame, const char *name,
    size_t namelen, const char *value, size_t valuelen, uint8_t flags, void *user_data);

nghttp2_info *nghttp2_version(int least_version);
const char *nghttp2_strerror(int lib_error_code);
const char *nghttp2_http2_strerror(uint32_t error_code);

int nghttp2_session_callbacks_new(nghttp2_session_callbacks **callbacks_ptr);
void nghttp2_session_callbacks_del(nghttp2_session_callbacks *callbacks);
void nghttp2_session_callbacks_set_on_frame_recv_callback(
    nghttp2_session_callbacks *cbs, nghttp2_on_frame_recv_callback cb);
void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
    nghttp2_session_callbacks *cbs, nghttp2_on_data_chunk_recv_callback cb);
void nghttp2_session_callbacks_set_on_stream_close_callback(
    nghttp2_session_callbacks *cbs, nghttp2_on_stream_close_callback cb);
void nghttp2_session_callbacks_set_on_header_callback(
    nghttp2_session_callbacks *cbs, nghttp2_on_header_callback cb);
void nghttp2_session_callbacks_set_on_begin_headers_callback(
    nghttp2_session_callbacks *cbs, nghttp2_on_begin_headers_callback cb);
void nghttp2_session_callbacks_set_on_frame_not_send_callback(
    nghttp2_session_callbacks *cbs, nghttp2_on_frame_not_send_callback cb);

int nghttp2_option_new(nghttp2_option **option_ptr);
void nghttp2_option_del(nghttp2_option *option);
void nghttp2_option_set_no_auto_window_update(nghttp2_option *option, int val);
void nghttp2_option_set_peer_max_concurrent_streams(nghttp2_option *option, uint32_t val);
void nghttp2_option_set_max_send_header_block_length(nghttp2_option *option, size_t val);
void nghttp2_option_set_max_outbound_ack(nghttp2_option *option, size_t val);
void nghttp2_option_set_max_settings(nghttp2_option *option, size_t val);

int nghttp2_session_server_new2(nghttp2_session **session_ptr,
    const nghttp2_session_callbacks *callbacks, void *user_data,
    const nghttp2_option *option);
int nghttp2_session_client_new2(nghttp2_session **session_ptr,
    const nghttp2_session_callbacks *callbacks, void *user_data,
    const nghttp2_option *option);
void nghttp2_session_del(nghttp2_session *session);

ssize_t nghttp2_session_mem_recv(nghttp2_session *session, const char *in, size_t inlen);
ssize_t nghttp2_session_mem_send(nghttp2_session *session, const uint8_t **data_ptr);
int nghttp2_session_want_read(nghttp2_session *session);
int nghttp2_session_want_write(nghttp2_session *session);

int nghttp2_submit_settings(nghttp2_session *session, uint8_t flags,
    const nghttp2_settings_entry *iv, size_t niv);
int32_t nghttp2_submit_request(nghttp2_session *session,
    const nghttp2_priority_spec *pri_spec, const nghttp2_nv *nva, size_t nvlen,
    const nghttp2_data_provider *data_prd, void *stream_user_data);
int nghttp2_submit_response(nghttp2_session *session, int32_t stream_id,
    const nghttp2_nv *nva, size_t nvlen, const nghttp2_data_provider *data_prd);
int nghttp2_submit_trailer(nghttp2_session *session, int32_t stream_id,
    const nghttp2_nv *nva, size_t nvlen);
int nghttp2_submit_rst_stream(nghttp2_session *session, uint8_t flags, int32_t stream_id,
    uint32_t error_code);
int nghttp2_submit_goaway(nghttp2_session *session, uint8_t flags, int32_t last_stream_id,
    uint32_t error_code, const uint8_t *opaque_data, size_t opaque_data_len);
int nghttp2_submit_ping(nghttp2_session *session, uint8_t flags, const uint8_t *opaque_data);

int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session *session);
int nghttp2_session_terminate_session(nghttp2_session *session, uint32_t error_code);
int nghttp2_session_resume_data(nghttp2_session *session, int32_t stream_id);
int nghttp2_session_consume(nghttp2_session *session, int32_t stream_id, size_t size);
int nghttp2_session_consume_connection(nghttp2_session *session, size_t size);
int nghttp2_session_set_local_window_size(nghttp2_session *session, uint8_t flags,
    int32_t stream_id, int32_t window_size);
uint32_t nghttp2_session_get_remote_settings(nghttp2_session *session, int id);
int nghttp2_session_check_request_allowed(nghttp2_session *session);
"""

# Every function declared above: looked up once at import so a missing one fails loudly here.
FUNCTIONS = (
    "nghttp2_version",
    "nghttp2_strerror",
    "nghttp2_http2_strerror",
    "nghttp2_session_callbacks_new",
    "nghttp2_session_callbacks_del",
    "nghttp2_session_callbacks_set_on_frame_recv_callback",
    "nghttp2_session_callbacks_set_on_data_chunk_recv_callback",
    "nghttp2_session_callbacks_set_on_stream_close_callback",
    "nghttp2_session_callbacks_set_on_header_callback",
    "nghttp2_session_callbacks_set_on_begin_headers_callback",
    "nghttp2_session_callbacks_set_on_frame_not_send_callback",
    "nghttp2_option_new",
    "nghttp2_option_del",
    "nghttp2_option_set_no_auto_window_update",
    "nghttp2_option_set_peer_max_concurrent_streams",
    "nghttp2_option_set_max_send_header_block_length",
    "nghttp2_option_set_max_outbound_ack",
    "nghttp2_option_set_max_settings",
    "nghttp2_session_server_new2",
    "nghttp2_session_client_new2",
    "nghttp2_session_del",
    "nghttp2_session_mem_recv",
    "nghttp2_session_mem_send",
    "nghttp2_session_want_read",
    "nghttp2_session_want_write",
    "nghttp2_submit_settings",
    "nghttp2_submit_request",
    "nghttp2_submit_response",
    "nghttp2_submit_trailer",
    "nghttp2_submit_rst_stream",
    "nghttp2_submit_goaway",
    "nghttp2_submit_ping",
    "nghttp2_session_get_last_proc_stream_id",
    "nghttp2_session_terminate_session",
    "nghttp2_session_resume_data",
    "nghttp2_session_consume",
    "nghttp2_session_consume_connection",
    "nghttp2_session_set_local_window_size",
    "nghttp2_session_get_remote_settings",
    "nghttp2_session_check_request_allowed",
)


NATIVE_CDEF = """
typedef struct gossamer_h2_ctx gossamer_h2_ctx;
void gossamer_h2_set_python(nghttp2_on_frame_recv_callback frame_recv,
    nghttp2_on_data_chunk_recv_callback data_chunk,
    nghttp2_on_stream_close_callback stream_close,
    nghttp2_data_source_read_callback read_body,
    ssize_t (*mem_send)(nghttp2_session *session, const uint8_t **data_ptr));
gossamer_h2_ctx *gossamer_h2_ctx_new(void *handle, size_t max_list_size);
void gossamer_h2_ctx_free(gossamer_h2_ctx *ctx);
const char *gossamer_h2_headers(gossamer_h2_ctx *ctx, size_t *len);
ssize_t gossamer_h2_send(nghttp2_session *session, gossamer_h2_ctx *ctx, const char **data);
int gossamer_h2_on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame,
    void *user_data);
int gossamer_h2_on_header(nghttp2_session *session, const nghttp2_frame *frame,
    const char *name, size_t namelen, const char *value, size_t valuelen, uint8_t flags,
    void *user_data);
int gossamer_h2_on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame,
    void *user_data);
int gossamer_h2_on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
    const char *data, size_t len, void *user_data);
int gossamer_h2_on_stream_close(nghttp2_session *session, int32_t stream_id,
    uint32_t error_code, void *user_data);
ssize_t gossamer_h2_read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
    size_t length, uint32_t *data_flags, nghttp2_data_source *source, void *user_data);
"""

# Everything one ``ffi`` declares (the collector's declarations are harmless when it is not
# built: functions are only looked up in a library that was opened).
DECLARED = CDEF + NATIVE_CDEF
