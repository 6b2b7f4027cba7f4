/* Gossamer's JSON encoder for log and audit lines: a CPython extension module.
 *
 * encode(document, ascii, sort_keys) -> bytes is json.JSONEncoder(separators=(",", ":"),
 * ensure_ascii=ascii, sort_keys=sort_keys).encode(document) as bytes (UTF-8, a lone
 * surrogate written as '?' when ascii is false), byte for byte, for documents made of dict
 * (str keys), list, tuple, str, int, float, bool and None, at most MAX_DEPTH deep. Anything
 * else raises TypeError, and the caller (gossamer.json_lines) uses the json module instead.
 * tests/unit/test_json_lines.py holds the two to the same bytes on generated documents.
 *
 * Why: an audit record and an access-log line are each one flat object written per request;
 * json's own encoder spends most of its time on its general machinery (an iterator of
 * chunks, a markers dict, a call per value), not on the bytes (bench/RESULTS.md).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_DEPTH 32

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    char inline_buf[1024];
} Buffer;

static int reserve(Buffer *b, Py_ssize_t more)
{
    if (b->len + more <= b->cap)
        return 0;
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

static int put(Buffer *b, const char *s, Py_ssize_t n)
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

/* Whether an ASCII character is written as itself (either mode). */
static unsigned char PLAIN[128];

static void init_plain(void)
{
    for (int c = ' '; c <= '~'; c++)
        PLAIN[c] = c != '"' && c != '\\';
}

static int put_string(Buffer *b, PyObject *s, int ascii)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (PyUnicode_IS_ASCII(s)) {
        /* The common case: runs of plain characters copied whole. */
        const unsigned char *text = PyUnicode_1BYTE_DATA(s);
        Py_ssize_t i = 0;
        while (i < n && PLAIN[text[i]])
            i++;
        if (i == n) {
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

static int put_float(Buffer *b, PyObject *value)
{
    double x = PyFloat_AS_DOUBLE(value);
    if (Py_IS_NAN(x))
        return put(b, "NaN", 3);
    if (Py_IS_INFINITY(x))
        return x > 0 ? put(b, "Infinity", 8) : put(b, "-Infinity", 9);
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
    char digits[32];
    int n = snprintf(digits, sizeof digits, "%lld", v);
    return put(b, digits, n);
}

static int put_value(Buffer *b, PyObject *value, int ascii, int sort_keys, int depth);

static int put_object(Buffer *b, PyObject *dict, int ascii, int sort_keys, int depth)
{
    if (PyDict_GET_SIZE(dict) == 0)
        return put(b, "{}", 2);
    PyObject *keys = PyDict_Keys(dict);
    if (keys == NULL)
        return -1;
    int rc = -1;
    Py_ssize_t n = PyList_GET_SIZE(keys);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_CheckExact(PyList_GET_ITEM(keys, i))) {
            PyErr_SetString(PyExc_TypeError, "a key that is not a str");
            goto done;
        }
    }
    if (sort_keys && PyList_Sort(keys) < 0)
        goto done;
    if (put(b, "{", 1) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        PyObject *item = PyDict_GetItemWithError(dict, key); /* borrowed */
        if (item == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "the dict changed while encoded");
            goto done;
        }
        if ((i > 0 && put(b, ",", 1) < 0) || put_string(b, key, ascii) < 0
            || put(b, ":", 1) < 0 || put_value(b, item, ascii, sort_keys, depth) < 0)
            goto done;
    }
    rc = put(b, "}", 1);
done:
    Py_DECREF(keys);
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
    b.data = b.inline_buf;
    b.len = 0;
    b.cap = (Py_ssize_t)sizeof b.inline_buf;
    PyObject *result = NULL;
    if (put_value(&b, args[0], ascii, sort_keys, 0) == 0)
        result = PyBytes_FromStringAndSize(b.data, b.len);
    if (b.data != b.inline_buf)
        PyMem_Free(b.data);
    return result;
}

static PyMethodDef METHODS[] = {
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL,
     "encode(document, ascii, sort_keys) -> bytes: compact JSON, as the json module writes it."},
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
