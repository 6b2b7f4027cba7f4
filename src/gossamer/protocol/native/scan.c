/*
 * Gossamer's plain-message scanner: one pass over a whole HTTP/1.1 message in C that says
 * whether the proxy may forward it by slicing (see gossamer/protocol/plain.py) and where the
 * pieces are. It replaces, on the common path, a validating llhttp pass plus a regular
 * expression over the lower-cased head.
 *
 * It accepts a strict subset of HTTP/1.1, so that anything it accepts the full parser
 * (llhttp) accepts and frames the same way; everything else returns 0 and goes to the full
 * parser, which decides:
 *   - start line: request "METHOD /target HTTP/1.1" (GET, HEAD, POST, PUT, DELETE, OPTIONS,
 *     PATCH or TRACE; a target in origin form with RFC 3986 characters only), response "HTTP/1.1 DDD reason" (status 200-599 except 204
 *     and 304, reason of visible characters, space and tab);
 *   - header lines: a token name, ':', optional blanks, a value of visible ASCII, space and
 *     tab (no obs-fold, no obs-text, no bare CR or LF), CRLF;
 *   - no header the proxy must act on beyond what is listed below: Transfer-Encoding, TE,
 *     Trailer, Upgrade, Keep-Alive and Proxy-* send the message to the full parser;
 *   - Connection, at most once, "keep-alive" or "close" (any case): reported, to be cut;
 *   - requests: no body (Content-Length refused) and nothing after the head; Host and
 *     X-Request-Id at most once each, values reported; X-Gossamer-Peer-Identity (set only by
 *     the proxy) reported, to be cut, at most once; the first Traceparent value reported,
 *     and whether any of B3, X-B3-TraceId, X-B3-Sampled or X-B3-Flags came (what tracing
 *     looks at first, docs/internals.md §13: found here, no second search of the head);
 *   - responses: exactly one Content-Length of digits, and exactly that many bytes after
 *     the head; for 204 and 304, no Content-Length and nothing after the head.
 *
 * Results go to an array of uint32_t given by the caller (RESULT_* below); offsets are from
 * the start of the message. Self-contained: no Python or library headers.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum {
    RESULT_HEAD_END,   /* offset of the CRLF CRLF that ends the head */
    RESULT_KEEP_ALIVE, /* 1 unless "Connection: close" */
    RESULT_STATUS,     /* response: the status code; request: end of the method */
    RESULT_TARGET_END, /* request: end of the target (it starts after the method's space) */
    RESULT_CUT1_START, /* first line to cut (from its CRLF before, to the next CRLF) */
    RESULT_CUT1_END,
    RESULT_CUT2_START, /* second line to cut (requests), after the first */
    RESULT_CUT2_END,
    RESULT_HOST_START, /* request: the Host value (start == end == 0: none) */
    RESULT_HOST_END,
    RESULT_RID_START,  /* request: the X-Request-Id value (start == end == 0: none) */
    RESULT_RID_END,
    RESULT_TRACE_START, /* request: the first Traceparent value (start == end == 0: none) */
    RESULT_TRACE_END,
    RESULT_B3,         /* request: 1 when a B3 header tracing reads first came */
    RESULT_UA_START,   /* request: the first User-Agent value (start == end == 0: none) */
    RESULT_UA_END,
    RESULT_COUNT
};

#define MAX_HEAD 8192

/* Character classes, one table lookup each: RFC 9110 tchar, the RFC 3986 characters of an
 * origin-form target (unreserved, sub-delims, ':', '@', '/', '?', and '%': llhttp does not
 * check percent-encoding, and neither does the proxy), and field-value characters (visible
 * ASCII, space, tab). Filled when the library is loaded (before any call can read it). */
enum { TCHAR = 1, TARGET = 2, VALUE = 4 };
static unsigned char classes[256];

__attribute__((constructor)) static void init_classes(void) {
    for (int c = 'a'; c <= 'z'; c++) classes[c] |= TCHAR | TARGET;
    for (int c = 'A'; c <= 'Z'; c++) classes[c] |= TCHAR | TARGET;
    for (int c = '0'; c <= '9'; c++) classes[c] |= TCHAR | TARGET;
    for (const char *p = "!#$%&'*+-.^_`|~"; *p; p++) classes[(unsigned char)*p] |= TCHAR;
    for (const char *p = "-._~!$&'()*+,;=:@/?%"; *p; p++) classes[(unsigned char)*p] |= TARGET;
    for (int c = 0x21; c <= 0x7e; c++) classes[c] |= VALUE;
    classes[' '] |= VALUE;
    classes['\t'] |= VALUE;
}

#define IS(c, class) (classes[(unsigned char)(c)] & (class))

static unsigned char lower(unsigned char c) {
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* Whether name[0:len] equals the lower-case literal lit, ignoring case. */
static int name_is(const char *name, size_t len, const char *lit) {
    size_t n = strlen(lit);
    if (len != n) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (lower((unsigned char)name[i]) != (unsigned char)lit[i]) {
            return 0;
        }
    }
    return 1;
}

static int value_is(const char *value, size_t len, const char *lit) {
    return name_is(value, len, lit);
}

enum {
    H_OTHER,
    H_REFUSE,
    H_CONNECTION,
    H_CONTENT_LENGTH,
    H_HOST,
    H_REQUEST_ID,
    H_PEER,
    H_TRACEPARENT,
    H_B3,
    H_USER_AGENT
};

static int classify(const char *name, size_t len) {
    if (len >= 6 && name_is(name, 6, "proxy-")) {
        return H_REFUSE;
    }
    switch (lower((unsigned char)name[0])) {
    case 'b':
        return name_is(name, len, "b3") ? H_B3 : H_OTHER;
    case 'c':
        if (name_is(name, len, "connection")) return H_CONNECTION;
        if (name_is(name, len, "content-length")) return H_CONTENT_LENGTH;
        return H_OTHER;
    case 'h':
        return name_is(name, len, "host") ? H_HOST : H_OTHER;
    case 'k':
        return name_is(name, len, "keep-alive") ? H_REFUSE : H_OTHER;
    case 't':
        if (name_is(name, len, "traceparent")) return H_TRACEPARENT;
        if (name_is(name, len, "te") || name_is(name, len, "trailer") ||
            name_is(name, len, "transfer-encoding")) {
            return H_REFUSE;
        }
        return H_OTHER;
    case 'u':
        if (name_is(name, len, "user-agent")) return H_USER_AGENT;
        return name_is(name, len, "upgrade") ? H_REFUSE : H_OTHER;
    case 'x':
        if (name_is(name, len, "x-request-id")) return H_REQUEST_ID;
        if (name_is(name, len, "x-gossamer-peer-identity")) return H_PEER;
        if (len > 5 && name_is(name, 5, "x-b3-") &&
            (name_is(name, len, "x-b3-traceid") || name_is(name, len, "x-b3-sampled") ||
             name_is(name, len, "x-b3-flags"))) {
            return H_B3;
        }
        return H_OTHER;
    default:
        return H_OTHER;
    }
}

/*
 * The header lines from p (just after the start line's CRLF) to the blank line. Fills the
 * header results; returns the offset of the head's final CRLF CRLF (pointing at the CRLF
 * ending the last line, or at the start line's CRLF when there is no header), or -1.
 * content_length is set to the value of the one Content-Length (-1: none).
 */
static long scan_headers(const char *data, size_t len, size_t p, int request, uint32_t *r,
                         long *content_length) {
    int cuts = 0, seen_connection = 0, seen_length = 0;
    *content_length = -1;
    for (;;) {
        if (p + 1 >= len) {
            return -1;
        }
        if (data[p] == '\r' && data[p + 1] == '\n') {
            return (long)p - 2; /* the blank line: the head ended at the CRLF before it */
        }
        size_t name = p;
        while (p < len && IS(data[p], TCHAR)) {
            p++;
        }
        if (p == name || p >= len || data[p] != ':') {
            return -1;
        }
        size_t name_len = p - name;
        p++;
        while (p < len && (data[p] == ' ' || data[p] == '\t')) {
            p++;
        }
        size_t value = p;
        while (p < len && IS(data[p], VALUE)) {
            p++;
        }
        if (p + 1 >= len || data[p] != '\r' || data[p + 1] != '\n') {
            return -1;
        }
        size_t value_end = p;
        while (value_end > value && (data[value_end - 1] == ' ' || data[value_end - 1] == '\t')) {
            value_end--;
        }
        size_t line_end = p; /* the CRLF ending this line */
        p += 2;
        int kind = classify(data + name, name_len);
        int cut = 0;
        switch (kind) {
        case H_REFUSE:
            return -1;
        case H_CONNECTION:
            if (seen_connection) {
                return -1;
            }
            seen_connection = 1;
            if (value_is(data + value, value_end - value, "close")) {
                r[RESULT_KEEP_ALIVE] = 0;
            } else if (!value_is(data + value, value_end - value, "keep-alive")) {
                return -1;
            }
            cut = 1;
            break;
        case H_CONTENT_LENGTH:
            if (request || seen_length || value_end == value || value_end - value > 15) {
                return -1;
            }
            seen_length = 1;
            *content_length = 0;
            for (size_t i = value; i < value_end; i++) {
                if (data[i] < '0' || data[i] > '9') {
                    return -1;
                }
                *content_length = *content_length * 10 + (data[i] - '0');
            }
            break;
        case H_HOST:
        case H_REQUEST_ID:
            if (request) {
                int at = kind == H_HOST ? RESULT_HOST_START : RESULT_RID_START;
                if (r[at + 1] != 0) {
                    return -1; /* repeated */
                }
                r[at] = (uint32_t)value;
                r[at + 1] = (uint32_t)value_end;
            }
            break;
        case H_PEER:
            cut = request;
            break;
        case H_TRACEPARENT:
            if (request && r[RESULT_TRACE_END] == 0) {
                r[RESULT_TRACE_START] = (uint32_t)value;
                r[RESULT_TRACE_END] = (uint32_t)value_end;
            }
            break;
        case H_B3:
            r[RESULT_B3] = (uint32_t)request;
            break;
        case H_USER_AGENT:
            if (request && r[RESULT_UA_END] == 0) {
                r[RESULT_UA_START] = (uint32_t)value;
                r[RESULT_UA_END] = (uint32_t)value_end;
            }
            break;
        default:
            break;
        }
        if (cut) {
            if (cuts == 2) {
                return -1;
            }
            /* the line with the CRLF before it: from name - 2 to line_end */
            r[RESULT_CUT1_START + 2 * cuts] = (uint32_t)(name - 2);
            r[RESULT_CUT1_END + 2 * cuts] = (uint32_t)line_end;
            cuts++;
        }
    }
}

/* The length of the method at the start of data when it is one the plain path takes (and
 * llhttp knows) followed by a space; 0 otherwise. CONNECT and the rest go to the full parser. */
static size_t method_length(const char *data) {
    static const char *const methods[] = {"GET ", "HEAD ", "POST ", "PUT ", "DELETE ",
                                          "OPTIONS ", "PATCH ", "TRACE "};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        size_t n = strlen(methods[i]);
        if (memcmp(data, methods[i], n) == 0) {
            return n - 1;
        }
    }
    return 0;
}

static void reset(uint32_t *r) {
    memset(r, 0, RESULT_COUNT * sizeof(uint32_t));
    r[RESULT_KEEP_ALIVE] = 1;
}

/* 1: data is one whole bodyless plain request (results in r); 0: use the full parser. */
int gossamer_plain_request(const char *data, size_t len, uint32_t *r) {
    reset(r);
    if (len < 18 || len > MAX_HEAD + 4 || memcmp(data + len - 4, "\r\n\r\n", 4) != 0) {
        return 0;
    }
    size_t p = method_length(data);
    if (p == 0 || data[p + 1] != '/') {
        return 0;
    }
    r[RESULT_STATUS] = (uint32_t)p;
    p++;
    while (p < len && IS(data[p], TARGET)) {
        p++;
    }
    r[RESULT_TARGET_END] = (uint32_t)p;
    if (len - p < 11 || memcmp(data + p, " HTTP/1.1\r\n", 11) != 0) {
        return 0;
    }
    long content_length;
    long end = scan_headers(data, len, p + 11, 1, r, &content_length);
    if (end < 0 || (size_t)end + 4 != len) {
        return 0;
    }
    r[RESULT_HEAD_END] = (uint32_t)end;
    return 1;
}

/* 1: data is one whole plain response with a Content-Length body (results in r); 0: use
 * the full parser. */
int gossamer_plain_response(const char *data, size_t len, uint32_t *r) {
    reset(r);
    if (len < 19 || memcmp(data, "HTTP/1.1 ", 9) != 0) {
        return 0;
    }
    if (data[9] < '2' || data[9] > '5' || data[10] < '0' || data[10] > '9' || data[11] < '0' ||
        data[11] > '9' || data[12] != ' ') {
        return 0;
    }
    int status = (data[9] - '0') * 100 + (data[10] - '0') * 10 + (data[11] - '0');
    int bodyless = status == 204 || status == 304;
    r[RESULT_STATUS] = (uint32_t)status;
    size_t limit = len < MAX_HEAD + 4 ? len : MAX_HEAD + 4;
    size_t p = 13;
    while (p < limit && IS(data[p], VALUE)) {
        p++;
    }
    if (p + 1 >= limit || data[p] != '\r' || data[p + 1] != '\n') {
        return 0;
    }
    long content_length;
    long end = scan_headers(data, limit, p + 2, 0, r, &content_length);
    if (end < 0 || (bodyless ? content_length >= 0 : content_length < 0)) {
        return 0;
    }
    if (bodyless) {
        content_length = 0;
    }
    if ((size_t)end + 4 + (size_t)content_length != len) {
        return 0;
    }
    r[RESULT_HEAD_END] = (uint32_t)end;
    return 1;
}
