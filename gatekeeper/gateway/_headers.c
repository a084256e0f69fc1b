/* gatekeeper.gateway._headers: the reverse proxy's per-header loops in C.
 *
 * Each function is the twin of a Python function in gatekeeper.gateway.rewrite or
 * gatekeeper.gateway.upstream_conn, which is what runs where this module could not be built;
 * tests/gateway/test_headers_speedups.py holds each pair to the same answers (cases and property
 * tests on random header lists).
 *
 * - request_head(method, target, headers, chunked): the request line and header block, or None
 *   when a CR, LF or NUL in any part would change the message's framing (twin:
 *   upstream_conn.request_head_py, whose caller raises UnsafeRequest on None).
 * - rewrite_request(headers, classified, forward_authorization, forward_host, x_forwarded,
 *   netloc, peer, scheme, identity): RequestRewriter.rewrite's headers for a common request
 *   (twin: rewrite.rewrite_request_py): every header name already classified and none of the
 *   rare kinds (framing, forwarding, Connection); else None and the general path runs.
 * - rewrite_response(headers, classified): the common pass of ResponseRewriter.rewrite (twin:
 *   rewrite.rewrite_response_py): every name classified, no Connection header, at most one
 *   plain-digits Content-Length; else None.
 *
 * Headers are a list or tuple of 2-tuples of bytes; anything else gives None (request_head: a
 * TypeError), so the Python path decides the unusual cases. Why C: these loops were a tenth of
 * what the proxy adds to a request beyond the minimal ASGI proxy (callgrind, README).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* rewrite.py's kinds of request header */
#define KIND_KEEP 0
#define KIND_DROP 1
#define KIND_HOST 3
#define KIND_AUTHORIZATION 4

/* The header names the common request pass adds. */
static PyObject *str_host, *str_x_forwarded_for, *str_x_forwarded_proto, *str_x_forwarded_host;

/* A header pair's (name, value) as borrowed references; 0 when it is not a 2-tuple of bytes. */
static int
pair_of_bytes(PyObject *pair, PyObject **name, PyObject **value)
{
    if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
        return 0;
    }
    *name = PyTuple_GET_ITEM(pair, 0);
    *value = PyTuple_GET_ITEM(pair, 1);
    return PyBytes_CheckExact(*name) && PyBytes_CheckExact(*value);
}

/* Whether bytes hold a CR, LF or NUL. */
static int
breaks_framing(PyObject *bytes)
{
    const char *s = PyBytes_AS_STRING(bytes);
    Py_ssize_t n = PyBytes_GET_SIZE(bytes);
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\r' || c == '\n' || c == '\0') {
            return 1;
        }
    }
    return 0;
}

static char *
put(char *at, const char *s, Py_ssize_t n)
{
    memcpy(at, s, (size_t)n);
    return at + n;
}

static PyObject *
request_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "request_head(method, target, headers, chunked)");
        return NULL;
    }
    PyObject *method = args[0], *target = args[1], *headers = args[2];
    int chunked = PyObject_IsTrue(args[3]);
    if (chunked < 0) {
        return NULL;
    }
    if (!PyBytes_CheckExact(method) || !PyBytes_CheckExact(target)
        || !(PyList_CheckExact(headers) || PyTuple_CheckExact(headers))) {
        PyErr_SetString(PyExc_TypeError, "request_head: method and target are bytes, headers a list");
        return NULL;
    }
    static const char VERSION[] = " HTTP/1.1\r\n";
    static const char CODED[] = "transfer-encoding: chunked\r\n";
    PyObject *seq = headers; /* a list or a tuple: fast items, held while read */
    Py_INCREF(seq);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Py_ssize_t size = PyBytes_GET_SIZE(method) + 1 + PyBytes_GET_SIZE(target) + sizeof VERSION - 1 + 2;
    if (chunked) {
        size += sizeof CODED - 1;
    }
    int unsafe = breaks_framing(method) || breaks_framing(target);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name, *value;
        if (!pair_of_bytes(items[i], &name, &value)) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "request_head: each header is a (bytes, bytes) tuple");
            return NULL;
        }
        size += PyBytes_GET_SIZE(name) + 2 + PyBytes_GET_SIZE(value) + 2;
        unsafe = unsafe || breaks_framing(name) || breaks_framing(value);
    }
    if (unsafe) {
        Py_DECREF(seq);
        Py_RETURN_NONE;
    }
    PyObject *head = PyBytes_FromStringAndSize(NULL, size);
    if (head == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    char *at = PyBytes_AS_STRING(head);
    at = put(at, PyBytes_AS_STRING(method), PyBytes_GET_SIZE(method));
    *at++ = ' ';
    at = put(at, PyBytes_AS_STRING(target), PyBytes_GET_SIZE(target));
    at = put(at, VERSION, sizeof VERSION - 1);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(items[i], 0), *value = PyTuple_GET_ITEM(items[i], 1);
        at = put(at, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name));
        at = put(at, ": ", 2);
        at = put(at, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
        at = put(at, "\r\n", 2);
    }
    if (chunked) {
        at = put(at, CODED, sizeof CODED - 1);
    }
    put(at, "\r\n", 2);
    Py_DECREF(seq);
    return head;
}

/* A new (name, value) tuple. */
static int
append_pair(PyObject *out, PyObject *name, PyObject *value)
{
    PyObject *pair = PyTuple_Pack(2, name, value);
    if (pair == NULL) {
        return -1;
    }
    int failed = PyList_Append(out, pair);
    Py_DECREF(pair);
    return failed;
}

/* classified[name] as a borrowed (int, lower) tuple's parts, 1 when found and well-formed, 0 when
 * not, -1 on error. */
static int
request_kind(PyObject *classified, PyObject *name, long *kind, PyObject **lower)
{
    PyObject *known = PyDict_GetItemWithError(classified, name);
    if (known == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyTuple_CheckExact(known) || PyTuple_GET_SIZE(known) != 2
        || !PyLong_CheckExact(PyTuple_GET_ITEM(known, 0)) || !PyBytes_CheckExact(PyTuple_GET_ITEM(known, 1))) {
        return 0;
    }
    *kind = PyLong_AsLong(PyTuple_GET_ITEM(known, 0));
    if (*kind == -1 && PyErr_Occurred()) {
        PyErr_Clear(); /* not one of rewrite.py's kinds: the general path */
        return 0;
    }
    *lower = PyTuple_GET_ITEM(known, 1);
    return 1;
}

/* Append (name, value) pairs: the tail every common request gets (Host, X-Forwarded-*, the
 * verified identity). 0, or -1 on error. */
static int
append_tail(PyObject *out, PyObject *const *args, PyObject *host)
{
    /* args: ..., forward_host, x_forwarded, netloc, peer, scheme, identity */
    int forward_host = PyObject_IsTrue(args[3]);
    int x_forwarded = PyObject_IsTrue(args[4]);
    if (forward_host < 0 || x_forwarded < 0) {
        return -1;
    }
    PyObject *netloc = args[5], *peer = args[6], *scheme = args[7], *identity = args[8];
    int client_host = host != Py_None && PyBytes_GET_SIZE(host) > 0; /* (an empty Host: none) */
    if (append_pair(out, str_host, forward_host && client_host ? host : netloc) < 0) {
        return -1;
    }
    if (x_forwarded) {
        if (append_pair(out, str_x_forwarded_for, peer) < 0
            || append_pair(out, str_x_forwarded_proto, scheme) < 0
            || (host != Py_None && append_pair(out, str_x_forwarded_host, host) < 0)) {
            return -1;
        }
    }
    PyObject *fast = PySequence_Fast(identity, "rewrite_request: identity is a sequence of pairs");
    if (fast == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
        if (PyList_Append(out, PySequence_Fast_GET_ITEM(fast, i)) < 0) {
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    return 0;
}

static PyObject *
rewrite_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9 || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "rewrite_request(headers, classified: dict, forward_authorization, forward_host, "
                        "x_forwarded, netloc, peer, scheme, identity)");
        return NULL;
    }
    PyObject *headers = args[0], *classified = args[1];
    int forward = PyObject_IsTrue(args[2]);
    if (forward < 0) {
        return NULL;
    }
    if (!(PyList_CheckExact(headers) || PyTuple_CheckExact(headers))) {
        Py_RETURN_NONE;
    }
    PyObject *seq = headers;
    Py_INCREF(seq); /* dict lookups below compare bytes only: no Python code runs */
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *out = PyList_New(0);
    PyObject *host = Py_None;
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name, *value, *lower;
        long kind;
        if (!pair_of_bytes(items[i], &name, &value)) {
            goto general;
        }
        int found = request_kind(classified, name, &kind, &lower);
        if (found < 0) {
            goto error;
        }
        if (found == 0) {
            goto general;
        }
        if (kind == KIND_KEEP || (kind == KIND_AUTHORIZATION && forward)) {
            if (append_pair(out, lower, value) < 0) {
                goto error;
            }
        }
        else if (kind == KIND_HOST) {
            host = value;
        }
        else if (kind != KIND_DROP && kind != KIND_AUTHORIZATION) {
            goto general; /* framing, forwarding, Connection: the general path */
        }
    }
    Py_INCREF(host); /* held past the appends below (the list holds its own references) */
    int failed = append_tail(out, args, host);
    Py_DECREF(host);
    Py_DECREF(seq);
    if (failed) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
general:
    Py_DECREF(out);
    Py_DECREF(seq);
    Py_RETURN_NONE;
error:
    Py_DECREF(out);
    Py_DECREF(seq);
    return NULL;
}

/* A plain-digits Content-Length value as a Python int, or NULL (no error) when it is not one. */
static PyObject *
plain_length(PyObject *value)
{
    const char *s = PyBytes_AS_STRING(value);
    Py_ssize_t n = PyBytes_GET_SIZE(value);
    if (n == 0 || n > 18) {
        return NULL; /* empty, or past what a long long holds: the general path */
    }
    long long number = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return NULL;
        }
        number = number * 10 + (s[i] - '0');
    }
    return PyLong_FromLongLong(number);
}

static PyObject *
rewrite_response(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "rewrite_response(headers, classified: dict)");
        return NULL;
    }
    PyObject *headers = args[0], *classified = args[1];
    if (!(PyList_CheckExact(headers) || PyTuple_CheckExact(headers))) {
        Py_RETURN_NONE;
    }
    PyObject *seq = headers;
    Py_INCREF(seq);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *out = PyList_New(0);
    PyObject *length = NULL;
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name, *value;
        if (!pair_of_bytes(items[i], &name, &value)) {
            goto general;
        }
        /* classified[name]: (relayed, is Content-Length, is Connection, lower-case name) */
        PyObject *known = PyDict_GetItemWithError(classified, name);
        if (known == NULL) {
            if (PyErr_Occurred()) {
                goto error;
            }
            goto general;
        }
        if (!PyTuple_CheckExact(known) || PyTuple_GET_SIZE(known) != 4
            || !PyBytes_CheckExact(PyTuple_GET_ITEM(known, 3))) {
            goto general;
        }
        if (PyTuple_GET_ITEM(known, 2) == Py_True) {
            goto general; /* Connection: the general path removes what it names */
        }
        if (PyTuple_GET_ITEM(known, 0) != Py_True) {
            continue;
        }
        if (PyTuple_GET_ITEM(known, 1) == Py_True) {
            if (length != NULL) {
                goto general; /* a second Content-Length: the general path compares them */
            }
            length = plain_length(value);
            if (length == NULL) {
                if (PyErr_Occurred()) {
                    goto error;
                }
                goto general;
            }
        }
        if (append_pair(out, PyTuple_GET_ITEM(known, 3), value) < 0) {
            goto error;
        }
    }
    PyObject *result = PyTuple_Pack(2, out, length != NULL ? length : Py_None);
    Py_XDECREF(length);
    Py_DECREF(out);
    Py_DECREF(seq);
    return result;
general:
    Py_XDECREF(length);
    Py_DECREF(out);
    Py_DECREF(seq);
    Py_RETURN_NONE;
error:
    Py_XDECREF(length);
    Py_DECREF(out);
    Py_DECREF(seq);
    return NULL;
}

static PyMethodDef methods[] = {
    {"request_head", (PyCFunction)(void (*)(void))request_head, METH_FASTCALL,
     "request_head(method, target, headers, chunked) -> the request line and header block, or None "
     "when a CR, LF or NUL would change the framing."},
    {"rewrite_request", (PyCFunction)(void (*)(void))rewrite_request, METH_FASTCALL,
     "rewrite_request(headers, classified, forward_authorization, forward_host, x_forwarded, netloc, "
     "peer, scheme, identity) -> the upstream's headers for the common case, else None."},
    {"rewrite_response", (PyCFunction)(void (*)(void))rewrite_response, METH_FASTCALL,
     "rewrite_response(headers, classified) -> (headers, Content-Length) for the common case, "
     "else None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gatekeeper.gateway._headers", NULL, 0, methods,
};

PyMODINIT_FUNC
PyInit__headers(void)
{
    str_host = PyBytes_FromString("host");
    str_x_forwarded_for = PyBytes_FromString("x-forwarded-for");
    str_x_forwarded_proto = PyBytes_FromString("x-forwarded-proto");
    str_x_forwarded_host = PyBytes_FromString("x-forwarded-host");
    if (str_host == NULL || str_x_forwarded_for == NULL || str_x_forwarded_proto == NULL
        || str_x_forwarded_host == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
