/* Gossamer's JSON encoder for log and audit lines: a CPython extension module.
 *
 * encode(document, ascii, sort_keys) -> bytes is json.JSONEncoder(separators=(",", ":"),
 * ensure_ascii=ascii, sort_keys=sort_keys).encode(document) as bytes (UTF-8, a lone
 * surrogate written as '?' when ascii is false), byte for byte, for documents made of dict
 * (str keys), list, tuple, str, bytes (written as their Latin-1 text, as the json module
 * writes them through gossamer.json_lines' default), int, float, bool and None, at most
 * MAX_DEPTH deep. Anything else raises TypeError, and the caller (gossamer.json_lines) uses
 * the json module instead.
 * tests/unit/test_json_lines.py holds the two to the same bytes on generated documents.
 *
 * Why: an audit record and an access-log line are each one flat object written per request;
 * json's own encoder spends most of its time on its general machinery (an iterator of
 * chunks, a markers dict, a call per value), not on the bytes (bench/RESULTS.md).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <math.h>
#include <string.h>
#include <time.h>

#define MAX_DEPTH 32

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    char inline_buf[1024];
} Buffer;

static void buffer_init(Buffer *b)
{
    b->data = b->inline_buf;
    b->len = 0;
    b->cap = (Py_ssize_t)sizeof b->inline_buf;
}

/* The buffer made room for more bytes (out of line: the common case never needs it). */
static __attribute__((noinline)) int grow(Buffer *b, Py_ssize_t more)
{
    Py_ssize_t cap = b->cap * 2;
    while (cap < b->len + more)
        cap *= 2;
    char *grown;
    if (b->data == b->inline_buf) {
        grown = PyMem_Malloc(cap);
        if (grown != NULL)
            memcpy(grown, b->data, b->len);
    } else {
        grown = PyMem_Realloc(b->data, cap);
    }
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = grown;
    b->cap = cap;
    return 0;
}

static inline int reserve(Buffer *b, Py_ssize_t more)
{
    return b->len + more <= b->cap ? 0 : grow(b, more);
}

static inline int put(Buffer *b, const char *s, Py_ssize_t n)
{
    if (reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

static const char HEX[] = "0123456789abcdef";

/* The six-byte escape of one UTF-16 unit: backslash, u, four lower-case hex digits. */
static void put_u(char *out, unsigned int unit)
{
    out[0] = '\\';
    out[1] = 'u';
    out[2] = HEX[(unit >> 12) & 0xf];
    out[3] = HEX[(unit >> 8) & 0xf];
    out[4] = HEX[(unit >> 4) & 0xf];
    out[5] = HEX[unit & 0xf];
}

/* The escape json uses for c (quote, backslash, a control character, and with ascii anything
 * outside ' '..'~'); writes it to out (room for 12 bytes) and returns its length, or 0 when c
 * is written as itself. */
static int escape(Py_UCS4 c, int ascii, char *out)
{
    if (c >= ' ' && c != '"' && c != '\\' && (c <= '~' || !ascii))
        return 0;
    out[0] = '\\';
    switch (c) {
    case '"': out[1] = '"'; return 2;
    case '\\': out[1] = '\\'; return 2;
    case '\b': out[1] = 'b'; return 2;
    case '\f': out[1] = 'f'; return 2;
    case '\n': out[1] = 'n'; return 2;
    case '\r': out[1] = 'r'; return 2;
    case '\t': out[1] = 't'; return 2;
    default: break;
    }
    if (c >= 0x10000) {
        Py_UCS4 v = c - 0x10000;
        put_u(out, 0xd800 | ((v >> 10) & 0x3ff));
        put_u(out + 6, 0xdc00 | (v & 0x3ff));
        return 12;
    }
    put_u(out, (unsigned int)c);
    return 6;
}

/* Whether a byte is an ASCII character written as itself (either mode). */
static unsigned char PLAIN[256];

static void init_plain(void)
{
    for (int c = ' '; c <= '~'; c++)
        PLAIN[c] = c != '"' && c != '\\';
}

/* How many of text's first bytes are written as themselves. */
static inline Py_ssize_t plain_length(const unsigned char *text, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n && PLAIN[text[i]])
        i++;
    return i;
}

static int put_string(Buffer *b, PyObject *s, int ascii)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (PyUnicode_IS_ASCII(s)) {
        /* The common case: runs of plain characters copied whole. */
        const unsigned char *text = PyUnicode_1BYTE_DATA(s);
        if (plain_length(text, n) == n) {
            if (reserve(b, n + 2) < 0)
                return -1;
            char *out = b->data + b->len;
            out[0] = '"';
            memcpy(out + 1, text, n);
            out[n + 1] = '"';
            b->len += n + 2;
            return 0;
        }
    }
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    /* Worst case: 12 bytes per character, and the quotes. */
    if (reserve(b, n * 12 + 2) < 0)
        return -1;
    char *out = b->data + b->len;
    *out++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        int k = escape(c, ascii, out);
        if (k > 0) {
            out += k;
        } else if (c < 0x80) {
            *out++ = (char)c;
        } else if (c < 0x800) {
            *out++ = (char)(0xc0 | (c >> 6));
            *out++ = (char)(0x80 | (c & 0x3f));
        } else if (c >= 0xd800 && c <= 0xdfff) {
            *out++ = '?'; /* a lone surrogate: what UTF-8 "replace" writes */
        } else if (c < 0x10000) {
            *out++ = (char)(0xe0 | (c >> 12));
            *out++ = (char)(0x80 | ((c >> 6) & 0x3f));
            *out++ = (char)(0x80 | (c & 0x3f));
        } else {
            *out++ = (char)(0xf0 | (c >> 18));
            *out++ = (char)(0x80 | ((c >> 12) & 0x3f));
            *out++ = (char)(0x80 | ((c >> 6) & 0x3f));
            *out++ = (char)(0x80 | (c & 0x3f));
        }
    }
    *out++ = '"';
    b->len = out - b->data;
    return 0;
}

/* A member's key: the comma before it (unless first), the quoted key and the colon, in one
 * copy for the usual key (ASCII with nothing to escape). */
static int put_key(Buffer *b, PyObject *key, int ascii, int comma)
{
    if (PyUnicode_IS_ASCII(key)) {
        const unsigned char *text = PyUnicode_1BYTE_DATA(key);
        Py_ssize_t n = PyUnicode_GET_LENGTH(key);
        if (plain_length(text, n) == n) {
            if (reserve(b, n + 4) < 0)
                return -1;
            char *out = b->data + b->len;
            if (comma)
                *out++ = ',';
            *out++ = '"';
            memcpy(out, text, n);
            out += n;
            *out++ = '"';
            *out++ = ':';
            b->len = out - b->data;
            return 0;
        }
    }
    if ((comma && put(b, ",", 1) < 0) || put_string(b, key, ascii) < 0)
        return -1;
    return put(b, ":", 1);
}

/* The text of a str object (a repr), appended. */
static int put_text(Buffer *b, PyObject *text)
{
    if (text == NULL)
        return -1;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(text, &n);
    int rc = s == NULL ? -1 : put(b, s, n);
    Py_DECREF(text);
    return rc;
}

/* k/1000 as repr writes that float (k below 10**15: at most 15 significant digits, see
 * put_float): the whole part, a point and the thousandths without trailing zeros (one 0
 * when there are none). */
static int put_thousandths(Buffer *b, unsigned long long k, int negative)
{
    if (k >= 1000000000000000ULL) { /* (k below 2**53: exact as a double) */
        double x = (double)k / 1000.0;
        char *s = PyOS_double_to_string(negative ? -x : x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (s == NULL)
            return -1;
        int rc = put(b, s, (Py_ssize_t)strlen(s));
        PyMem_Free(s);
        return rc;
    }
    char text[32];
    char *end = text + sizeof text;
    char *p = end;
    int fraction = (int)(k % 1000);
    unsigned long long whole = k / 1000;
    int digits = 3;
    while (digits > 1 && fraction % 10 == 0) {
        fraction /= 10;
        digits--;
    }
    for (int i = 0; i < digits; i++) {
        *--p = (char)('0' + fraction % 10);
        fraction /= 10;
    }
    *--p = '.';
    do {
        *--p = (char)('0' + whole % 10);
        whole /= 10;
    } while (whole != 0);
    if (negative)
        *--p = '-';
    return put(b, p, end - p);
}

static int put_float(Buffer *b, PyObject *value)
{
    double x = PyFloat_AS_DOUBLE(value);
    if (Py_IS_NAN(x))
        return put(b, "NaN", 3);
    if (Py_IS_INFINITY(x))
        return x > 0 ? put(b, "Infinity", 8) : put(b, "-Infinity", 9);
    /* A whole number of thousandths (the logs' durations in milliseconds): repr is those
     * digits. With at most 15 significant digits no shorter decimal names the same double
     * (DBL_DIG), so the decimal k/1000 is the shortest repr when it rounds to x. */
    double magnitude = fabs(x);
    if (magnitude < 1e12) {
        long long k = llround(magnitude * 1000.0);
        if ((double)k / 1000.0 == magnitude)
            return put_thousandths(b, (unsigned long long)k, signbit(x) != 0);
    }
    char *s = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s == NULL)
        return -1;
    int rc = put(b, s, (Py_ssize_t)strlen(s));
    PyMem_Free(s);
    return rc;
}

static int put_int(Buffer *b, PyObject *value)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow != 0)
        return put_text(b, PyLong_Type.tp_repr(value));
    if (v == -1 && PyErr_Occurred())
        return -1;
    /* The decimal digits, written backwards from the end of a small buffer. */
    char digits[24];
    char *end = digits + sizeof digits;
    char *p = end;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        *--p = '-';
    return put(b, p, end - p);
}

/* A bytes value, written as the str its Latin-1 decoding is (header bytes as the proxy
 * holds them): each byte is the code point of the same number. */
static int put_latin1(Buffer *b, PyObject *value, int ascii)
{
    const unsigned char *text = (const unsigned char *)PyBytes_AS_STRING(value);
    Py_ssize_t n = PyBytes_GET_SIZE(value);
    Py_ssize_t i = plain_length(text, n);
    /* Worst case: 6 bytes per byte (an escape), and the quotes. */
    if (reserve(b, (i == n ? n : n * 6) + 2) < 0)
        return -1;
    char *out = b->data + b->len;
    *out++ = '"';
    memcpy(out, text, i);
    out += i;
    for (; i < n; i++) {
        unsigned char c = text[i];
        int k = escape(c, ascii, out);
        if (k > 0) {
            out += k;
        } else if (c < 0x80) {
            *out++ = (char)c;
        } else {
            *out++ = (char)(0xc0 | (c >> 6));
            *out++ = (char)(0x80 | (c & 0x3f));
        }
    }
    *out++ = '"';
    b->len = out - b->data;
    return 0;
}

static int put_value(Buffer *b, PyObject *value, int ascii, int sort_keys, int depth);

typedef struct {
    PyObject *key;
    PyObject *value;
} Member;

/* Python's order of two str keys (code point by code point), without calling into Python:
 * two one-byte strings compare as bytes, others through PyUnicode_Compare. */
static inline int compare_keys(PyObject *a, PyObject *c)
{
    if (PyUnicode_KIND(a) == PyUnicode_1BYTE_KIND && PyUnicode_KIND(c) == PyUnicode_1BYTE_KIND) {
        Py_ssize_t na = PyUnicode_GET_LENGTH(a), nc = PyUnicode_GET_LENGTH(c);
        int order = memcmp(PyUnicode_1BYTE_DATA(a), PyUnicode_1BYTE_DATA(c), na < nc ? na : nc);
        if (order != 0)
            return order;
        return na < nc ? -1 : na > nc;
    }
    return PyUnicode_Compare(a, c);
}

#define INLINE_MEMBERS 48

static int put_object(Buffer *b, PyObject *dict, int ascii, int sort_keys, int depth)
{
    Py_ssize_t n = PyDict_GET_SIZE(dict);
    if (n == 0)
        return put(b, "{}", 2);
    Member inline_members[INLINE_MEMBERS];
    Member *members = inline_members;
    if (n > INLINE_MEMBERS) {
        members = PyMem_Malloc(sizeof(Member) * (size_t)n);
        if (members == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    int rc = -1;
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value; /* borrowed: no Python code runs while a document is encoded */
    while (i < n && PyDict_Next(dict, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key)) {
            PyErr_SetString(PyExc_TypeError, "a key that is not a str");
            goto done;
        }
        members[i].key = key;
        members[i].value = value;
        i++;
    }
    if (sort_keys) {
        /* Insertion sort: a record's members come nearly in order (the sidecar builds its
         * records with sorted keys), so this is about one comparison per member. */
        for (i = 1; i < n; i++) {
            Member m = members[i];
            Py_ssize_t j = i;
            while (j > 0 && compare_keys(members[j - 1].key, m.key) > 0) {
                members[j] = members[j - 1];
                j--;
            }
            members[j] = m;
        }
    }
    if (put(b, "{", 1) < 0)
        goto done;
    for (i = 0; i < n; i++) {
        if (put_key(b, members[i].key, ascii, i > 0) < 0
            || put_value(b, members[i].value, ascii, sort_keys, depth) < 0)
            goto done;
    }
    rc = put(b, "}", 1);
done:
    if (members != inline_members)
        PyMem_Free(members);
    return rc;
}

static int put_array(Buffer *b, PyObject *seq, int ascii, int sort_keys, int depth)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    if (put(b, "[", 1) < 0)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((i > 0 && put(b, ",", 1) < 0) || put_value(b, items[i], ascii, sort_keys, depth) < 0)
            return -1;
    }
    return put(b, "]", 1);
}

static int put_value(Buffer *b, PyObject *value, int ascii, int sort_keys, int depth)
{
    if (PyUnicode_CheckExact(value))
        return put_string(b, value, ascii);
    if (value == Py_None)
        return put(b, "null", 4);
    if (value == Py_True)
        return put(b, "true", 4);
    if (value == Py_False)
        return put(b, "false", 5);
    if (PyLong_CheckExact(value))
        return put_int(b, value);
    if (PyBytes_CheckExact(value))
        return put_latin1(b, value, ascii);
    if (PyFloat_CheckExact(value))
        return put_float(b, value);
    if (depth >= MAX_DEPTH) {
        PyErr_SetString(PyExc_TypeError, "nested too deep");
        return -1;
    }
    if (PyDict_CheckExact(value))
        return put_object(b, value, ascii, sort_keys, depth + 1);
    /* No Python code runs while a document is encoded (exact types only, str keys compared
     * by the list sort's str comparison), so borrowed items stay valid. */
    if (PyList_CheckExact(value) || PyTuple_CheckExact(value))
        return put_array(b, value, ascii, sort_keys, depth + 1);
    PyErr_Format(PyExc_TypeError, "not encoded here: %.80s", Py_TYPE(value)->tp_name);
    return -1;
}

static PyObject *encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "encode(document, ascii, sort_keys)");
        return NULL;
    }
    int ascii = PyObject_IsTrue(args[1]);
    int sort_keys = PyObject_IsTrue(args[2]);
    if (ascii < 0 || sort_keys < 0)
        return NULL;
    Buffer b;
    buffer_init(&b);
    PyObject *result = NULL;
    if (put_value(&b, args[0], ascii, sort_keys, 0) == 0)
        result = PyBytes_FromStringAndSize(b.data, b.len);
    if (b.data != b.inline_buf)
        PyMem_Free(b.data);
    return result;
}

/* === rows: JSON lines of one shape from tuples of raw values ===
 *
 * encode_rows(prefixes, kinds, rows, ascii, omit) -> bytes writes, for each row of rows,
 * prefixes[0] value[0] prefixes[1] value[1] ... prefixes[n]: the prefixes are the members'
 * encoded names with their punctuation ('{"time":', ',"method":', ..., '}\n'), so a line
 * costs no key encoding and no dict. kinds holds one letter per member, saying how its raw
 * value is written:
 *   'v'  as encode writes it;
 *   'e'  the same, but an empty str or bytes is null;
 *   't'  an int of nanoseconds since the epoch, as RFC 3339 UTC text with milliseconds
 *        ("2026-12-07T12:27:10.123Z", gossamer.proxy.observe.timestamps.utc_millis);
 *   'd'  an int of nanoseconds, as milliseconds rounded to the microsecond, half up
 *        (timestamps.duration_ms).
 * A member whose value is the omit object is left out. Anything else (a row that is not a
 * tuple or list of n, a time outside the years 1000-9999, a value encode does not take)
 * raises TypeError, and the caller formats those rows in Python: tests/unit/proxy/
 * test_access_log.py and tests/unit/audit/test_spool.py hold the two to the same bytes. */

static long long utc_second = -1; /* the second whose text utc_text holds (the GIL guards) */
static char utc_text[19];

static int put_utc_millis(Buffer *b, PyObject *value)
{
    int overflow = 0;
    long long ns = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow != 0 || ns < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "a time out of range");
        return -1;
    }
    long long millis = ns / 1000000;
    long long second = millis / 1000;
    if (second != utc_second) {
        time_t t = (time_t)second;
        struct tm tm;
        if (gmtime_r(&t, &tm) == NULL || tm.tm_year + 1900 < 1000 || tm.tm_year + 1900 > 9999) {
            PyErr_SetString(PyExc_TypeError, "a time out of range");
            return -1;
        }
        char text[64];
        snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        memcpy(utc_text, text, sizeof utc_text);
        utc_second = second;
    }
    int ms = (int)(millis - second * 1000);
    if (reserve(b, 26) < 0)
        return -1;
    char *out = b->data + b->len;
    out[0] = '"';
    memcpy(out + 1, utc_text, 19);
    out[20] = '.';
    out[21] = (char)('0' + ms / 100);
    out[22] = (char)('0' + ms / 10 % 10);
    out[23] = (char)('0' + ms % 10);
    out[24] = 'Z';
    out[25] = '"';
    b->len += 26;
    return 0;
}

static int put_duration_ms(Buffer *b, PyObject *value)
{
    int overflow = 0;
    long long ns = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow != 0 || ns < 0 || ns > (1LL << 53) * 1000) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "a duration out of range");
        return -1;
    }
    return put_thousandths(b, (unsigned long long)((ns + 500) / 1000), 0);
}

/* Whether prefixes (a tuple of bytes) and kinds (bytes) describe a shape: one prefix more
 * than kinds (the last is the suffix). Sets TypeError when not. */
static int shape_of(PyObject *prefixes, PyObject *kinds, Py_ssize_t *n)
{
    if (!PyTuple_CheckExact(prefixes) || !PyBytes_CheckExact(kinds)
        || PyTuple_GET_SIZE(prefixes) != PyBytes_GET_SIZE(kinds) + 1) {
        PyErr_SetString(PyExc_TypeError, "a shape is prefixes (one more) and kinds");
        return -1;
    }
    *n = PyBytes_GET_SIZE(kinds);
    for (Py_ssize_t i = 0; i <= *n; i++) {
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(prefixes, i))) {
            PyErr_SetString(PyExc_TypeError, "prefixes are bytes");
            return -1;
        }
    }
    return 0;
}

/* One row (a tuple or list of n values) in its shape; a member whose value is omit is left
 * out, prefix and all (never the first: its prefix opens the object). */
static int put_row(Buffer *b, PyObject *prefixes, const char *kinds, Py_ssize_t n,
                   PyObject *row, int ascii, PyObject *omit)
{
    PyObject **values;
    if (PyTuple_CheckExact(row) && PyTuple_GET_SIZE(row) == n) {
        values = &PyTuple_GET_ITEM(row, 0);
    } else if (PyList_CheckExact(row) && PyList_GET_SIZE(row) == n) {
        values = PySequence_Fast_ITEMS(row);
    } else {
        PyErr_SetString(PyExc_TypeError, "a row that is not a tuple or list of one value a kind");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *value = values[i];
        if (value == omit) {
            if (i == 0) {
                PyErr_SetString(PyExc_TypeError, "the first member left out");
                return -1;
            }
            continue;
        }
        PyObject *prefix = PyTuple_GET_ITEM(prefixes, i);
        if (put(b, PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix)) < 0)
            return -1;
        int rc;
        switch (kinds[i]) {
        case 'e':
            if ((PyUnicode_CheckExact(value) && PyUnicode_GET_LENGTH(value) == 0)
                || (PyBytes_CheckExact(value) && PyBytes_GET_SIZE(value) == 0)) {
                rc = put(b, "null", 4);
                break;
            }
            /* fall through */
        case 'v':
            rc = put_value(b, value, ascii, 0, 0);
            break;
        case 't':
            rc = PyLong_CheckExact(value) ? put_utc_millis(b, value) : -1;
            break;
        case 'd':
            rc = PyLong_CheckExact(value) ? put_duration_ms(b, value) : -1;
            break;
        default:
            PyErr_SetString(PyExc_TypeError, "an unknown kind");
            return -1;
        }
        if (rc < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "a value its kind does not take");
            return -1;
        }
    }
    PyObject *suffix = PyTuple_GET_ITEM(prefixes, n);
    return put(b, PyBytes_AS_STRING(suffix), PyBytes_GET_SIZE(suffix));
}

static PyObject *encode_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    Py_ssize_t n;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "encode_rows(prefixes, kinds, rows, ascii, omit)");
        return NULL;
    }
    if (shape_of(args[0], args[1], &n) < 0)
        return NULL;
    const char *kinds = PyBytes_AS_STRING(args[1]);
    int ascii = PyObject_IsTrue(args[3]);
    if (ascii < 0)
        return NULL;
    PyObject *rows = PySequence_Fast(args[2], "rows: a sequence");
    if (rows == NULL)
        return NULL;
    Buffer b;
    buffer_init(&b);
    PyObject *result = NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(rows);
    PyObject **items = PySequence_Fast_ITEMS(rows);
    Py_ssize_t r = 0;
    while (r < count && put_row(&b, args[0], kinds, n, items[r], ascii, args[4]) == 0)
        r++;
    if (r == count)
        result = PyBytes_FromStringAndSize(b.data, b.len);
    Py_DECREF(rows);
    if (b.data != b.inline_buf)
        PyMem_Free(b.data);
    return result;
}

/* === sealed lines: the audit chain's record form (gossamer.audit_chain) ===
 *
 * seal_row(prefixes, kinds, row, prev, omit) -> (line, hash) is what gossamer.audit_chain.seal
 * makes in Python of the record the row stands for: body = its canonical JSON (the shape's
 * members sorted, ASCII), hash = sha256(prev + "\n" + body) in lower-case hex, line = body
 * with ,"hash":"<hash>" added as its last member, and LF. SHA-256 is OpenSSL's (the libcrypto
 * the interpreter's ssl and hashlib modules load), called without the per-call digest context
 * hashlib allocates and copies; when its symbols cannot be found, seal_row raises TypeError
 * and the caller seals the record's dict in Python. */

typedef int (*sha256_init_fn)(void *);
typedef int (*sha256_update_fn)(void *, const void *, size_t);
typedef int (*sha256_final_fn)(unsigned char *, void *);

static sha256_init_fn sha256_init;
static sha256_update_fn sha256_update;
static sha256_final_fn sha256_final;
static int sha256_looked_up;

static int find_sha256(void)
{
    if (!sha256_looked_up) {
        sha256_looked_up = 1;
        void *crypto = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
        if (crypto != NULL) {
            sha256_init = (sha256_init_fn)dlsym(crypto, "SHA256_Init");
            sha256_update = (sha256_update_fn)dlsym(crypto, "SHA256_Update");
            sha256_final = (sha256_final_fn)dlsym(crypto, "SHA256_Final");
        }
    }
    return sha256_init != NULL && sha256_update != NULL && sha256_final != NULL;
}

/* The body in b (a JSON object) sealed: (line, hash) with hash = sha256(prev + "\n" + body)
 * and line = the body with ,"hash":"<hash>" as its last member, and LF. */
static PyObject *sealed(Buffer *b, PyObject *prev)
{
    /* SHA256_CTX is 112 bytes in OpenSSL 3; room for more, aligned. */
    union {
        unsigned char bytes[256];
        unsigned long long align;
    } context;
    unsigned char digest[32];
    if (sha256_init(&context) != 1
        || sha256_update(&context, PyUnicode_1BYTE_DATA(prev), PyUnicode_GET_LENGTH(prev)) != 1
        || sha256_update(&context, "\n", 1) != 1
        || sha256_update(&context, b->data, (size_t)b->len) != 1
        || sha256_final(digest, &context) != 1) {
        PyErr_SetString(PyExc_RuntimeError, "SHA-256 failed");
        return NULL;
    }
    char hex[64];
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = HEX[digest[i] >> 4];
        hex[2 * i + 1] = HEX[digest[i] & 0xf];
    }
    b->len -= 1; /* the closing brace: the hash member goes before it */
    if (put(b, ",\"hash\":\"", 9) < 0 || put(b, hex, 64) < 0 || put(b, "\"}\n", 3) < 0)
        return NULL;
    PyObject *line = PyBytes_FromStringAndSize(b->data, b->len);
    PyObject *text = PyUnicode_FromStringAndSize(hex, 64);
    PyObject *result = NULL;
    if (line != NULL && text != NULL)
        result = PyTuple_Pack(2, line, text);
    Py_XDECREF(line);
    Py_XDECREF(text);
    return result;
}

static int sealable(PyObject *prev)
{
    if (!PyUnicode_CheckExact(prev) || !PyUnicode_IS_ASCII(prev)) {
        PyErr_SetString(PyExc_TypeError, "prev: an ASCII str");
        return 0;
    }
    if (!find_sha256()) {
        PyErr_SetString(PyExc_TypeError, "no SHA-256 in libcrypto");
        return 0;
    }
    return 1;
}

/* seal_row (above): a row of its shape (encode_rows), the members in sorted order, the
 * suffix "}". */
static PyObject *seal_row(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    Py_ssize_t n;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "seal_row(prefixes, kinds, row, prev, omit)");
        return NULL;
    }
    if (shape_of(args[0], args[1], &n) < 0 || !sealable(args[3]))
        return NULL;
    Buffer b;
    buffer_init(&b);
    PyObject *result = NULL;
    if (put_row(&b, args[0], PyBytes_AS_STRING(args[1]), n, args[2], 1, args[4]) == 0)
        result = sealed(&b, args[3]);
    if (b.data != b.inline_buf)
        PyMem_Free(b.data);
    return result;
}

static PyMethodDef METHODS[] = {
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL,
     "encode(document, ascii, sort_keys) -> bytes: compact JSON, as the json module writes it."},
    {"encode_rows", (PyCFunction)(void (*)(void))encode_rows, METH_FASTCALL,
     "encode_rows(prefixes, kinds, rows, ascii, omit) -> bytes: JSON lines of one shape."},
    {"seal_row", (PyCFunction)(void (*)(void))seal_row, METH_FASTCALL,
     "seal_row(prefixes, kinds, row, prev, omit) -> (line, hash): seal for a row."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_encode", "Gossamer's JSON encoder for log and audit lines.", -1,
    METHODS, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__encode(void)
{
    init_plain();
    return PyModule_Create(&MODULE);
}
