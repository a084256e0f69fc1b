/* gatekeeper._speedups: the decision's fast path (Gate.probe's part after the query check) in C.
 *
 * probe(headers, memo, now, revocations, rule) is gatekeeper.decision.probe_py in C; the two
 * must agree (tests/test_speedups.py holds them to the same answers, and tests/test_decision.py
 * runs the whole decision on each). It returns the record that ``memo`` (a dict keyed by the last
 * 16 bytes of an Authorization header value) holds for the request's one Authorization header
 * when the request may be served from it, else None:
 *
 * - the verifier's cache entry in the record may be served at ``now`` (gatekeeper.cache's rule
 *   for a holder: ``now < entry[UNTIL] and entry[KEY].alive``);
 * - its claims were checked against the current revocation list (``revocations.active`` is
 *   false, or ``claims.checked_at == revocations.generation``);
 * - they satisfy the rule (``rule.wanted`` is empty, or ``rule.satisfied_by(claims.scopes)``);
 *
 * and then it marks the entry used (``entry[USED] = True``, for the cache's eviction). None
 * whenever anything is unusual (no such header, two of them in any spelling of the name, a name
 * or value that is not bytes, an item that is not a pair): the slow path decides those.
 *
 * Why C: in Python the header scan alone is ~60 bytecodes for six headers, and the whole probe
 * most of what the middleware adds to a request with a cached token.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static const char AUTHORIZATION[] = "authorization";
#define NAME_LEN 13
#define TAIL 16
/* gatekeeper.decision's memo record: (header value, token, cache entry, claims) */
#define RECORD_VALUE 0
#define RECORD_ENTRY 2
#define RECORD_CLAIMS 3
/* gatekeeper.cache's entry layout: [claims, serve until, signing key, recently used, exp] */
#define ENTRY_UNTIL 1
#define ENTRY_KEY 2
#define ENTRY_USED 3

/* Attribute names, interned at import. */
static PyObject *str_active, *str_alive, *str_checked_at, *str_generation, *str_satisfied_by,
    *str_scopes, *str_wanted;

static int
is_authorization(PyObject *name)
{
    const char *s = PyBytes_AS_STRING(name);
    if (memcmp(s, AUTHORIZATION, NAME_LEN) == 0) {
        return 1;
    }
    for (Py_ssize_t i = 0; i < NAME_LEN; i++) {
        if (Py_TOLOWER((unsigned char)s[i]) != AUTHORIZATION[i]) {
            return 0;
        }
    }
    return 1;
}

/* The one Authorization header's value (borrowed from seq), or NULL for "none, or unusual". */
static PyObject *
find_value(PyObject *seq)
{
    PyObject *found = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = items[i];
        if (!(PyTuple_CheckExact(pair) || PyList_CheckExact(pair)) || Py_SIZE(pair) != 2) {
            return NULL;
        }
        PyObject *name = PySequence_Fast_GET_ITEM(pair, 0);
        if (!PyBytes_CheckExact(name)) {
            return NULL;
        }
        if (PyBytes_GET_SIZE(name) == NAME_LEN && is_authorization(name)) {
            if (found != NULL) {
                return NULL; /* two Authorization headers: the slow path refuses them */
            }
            found = PySequence_Fast_GET_ITEM(pair, 1);
        }
    }
    return found != NULL && PyBytes_CheckExact(found) ? found : NULL;
}

/* The memo's record for a header value (a new reference), or NULL with or without an error. */
static PyObject *
lookup(PyObject *memo, PyObject *found)
{
    Py_ssize_t size = PyBytes_GET_SIZE(found);
    Py_ssize_t start = size > TAIL ? size - TAIL : 0;
    PyObject *key = PyBytes_FromStringAndSize(PyBytes_AS_STRING(found) + start, size - start);
    if (key == NULL) {
        return NULL;
    }
    PyObject *record = PyDict_GetItemWithError(memo, key); /* borrowed */
    Py_DECREF(key);
    if (record == NULL || !PyTuple_CheckExact(record) || PyTuple_GET_SIZE(record) <= RECORD_CLAIMS) {
        return NULL;
    }
    PyObject *value = PyTuple_GET_ITEM(record, RECORD_VALUE);
    if (!PyBytes_CheckExact(value) || PyBytes_GET_SIZE(value) != size
        || memcmp(PyBytes_AS_STRING(value), PyBytes_AS_STRING(found), (size_t)size) != 0) {
        return NULL;
    }
    Py_INCREF(record); /* no Python code ran since the lookup: still the memo's */
    return record;
}

/* Whether attribute ``name`` of ``obj`` is true: 1, 0, or -1 with an error set. */
static int
attr_true(PyObject *obj, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* 1 when the record may be served (and its entry is then marked used), 0 when not, -1 on error. */
static int
servable(PyObject *record, PyObject *now, PyObject *revocations, PyObject *rule)
{
    PyObject *entry = PyTuple_GET_ITEM(record, RECORD_ENTRY);
    PyObject *claims = PyTuple_GET_ITEM(record, RECORD_CLAIMS);
    if (!PyList_CheckExact(entry) || PyList_GET_SIZE(entry) <= ENTRY_USED) {
        return 0;
    }
    /* Items are held while used: a property or comparison in Python could change the list. */
    PyObject *until = PyList_GET_ITEM(entry, ENTRY_UNTIL);
    Py_INCREF(until);
    int ok = PyObject_RichCompareBool(now, until, Py_LT);
    Py_DECREF(until);
    if (ok <= 0) {
        return ok;
    }
    PyObject *key = PyList_GET_ITEM(entry, ENTRY_KEY);
    Py_INCREF(key);
    ok = attr_true(key, str_alive);
    Py_DECREF(key);
    if (ok <= 0) {
        return ok;
    }
    int active = attr_true(revocations, str_active);
    if (active < 0) {
        return -1;
    }
    if (active) { /* the list changed since the claims were checked: the slow path re-checks */
        PyObject *checked = PyObject_GetAttr(claims, str_checked_at);
        PyObject *generation = checked ? PyObject_GetAttr(revocations, str_generation) : NULL;
        ok = generation ? PyObject_RichCompareBool(checked, generation, Py_EQ) : -1;
        Py_XDECREF(checked);
        Py_XDECREF(generation);
        if (ok <= 0) {
            return ok;
        }
    }
    int wanted = attr_true(rule, str_wanted);
    if (wanted < 0) {
        return -1;
    }
    if (wanted) {
        PyObject *scopes = PyObject_GetAttr(claims, str_scopes);
        PyObject *satisfied = scopes ? PyObject_CallMethodOneArg(rule, str_satisfied_by, scopes) : NULL;
        ok = satisfied ? PyObject_IsTrue(satisfied) : -1;
        Py_XDECREF(scopes);
        Py_XDECREF(satisfied);
        if (ok <= 0) {
            return ok;
        }
    }
    Py_INCREF(Py_True);
    /* Steals the reference; fails (IndexError) only if Python code above shrank the list. */
    return PyList_SetItem(entry, ENTRY_USED, Py_True) < 0 ? -1 : 1;
}

static PyObject *
probe(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "probe(headers, memo: dict, now, revocations, rule)");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "headers must be iterable");
    if (seq == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) { /* not iterable: unusual, so None */
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        return NULL;
    }
    PyObject *found = find_value(seq);
    PyObject *record = found ? lookup(args[1], found) : NULL;
    Py_DECREF(seq);
    if (record == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    int ok = servable(record, args[2], args[3], args[4]);
    if (ok <= 0) {
        Py_DECREF(record);
        if (ok < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return record;
}

static PyMethodDef methods[] = {
    {"probe", (PyCFunction)(void (*)(void))probe, METH_FASTCALL,
     "probe(headers, memo, now, revocations, rule) -> the memo's record for the request's one "
     "Authorization header when the request may be served from it, else None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gatekeeper._speedups", NULL, 0, methods,
};

static int
intern(PyObject **slot, const char *name)
{
    *slot = PyUnicode_InternFromString(name);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (intern(&str_active, "active") || intern(&str_alive, "alive")
        || intern(&str_checked_at, "checked_at") || intern(&str_generation, "generation")
        || intern(&str_satisfied_by, "satisfied_by") || intern(&str_scopes, "scopes")
        || intern(&str_wanted, "wanted")) {
        return NULL;
    }
    return PyModule_Create(&module);
}
