/* gatekeeper._speedups: the middleware's hot path in C, for a request whose token is cached.
 *
 * Two parts: probe(), the decision's fast path (Gate.probe's part after the query check), and
 * Dispatch, the middleware's whole ASGI call around it (see its comment below).
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
 * most of what the middleware adds to a request with a cached token. With Dispatch as well, the
 * middleware adds ~4,100 instructions to such a request (callgrind), from ~9,700 in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

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

/* 1 when the record may be served (and its entry is then marked used), 0 when not, -1 on error.
 * ``rule`` NULL: a rule known to want no scopes. */
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
    int wanted = rule == NULL ? 0 : attr_true(rule, str_wanted); /* NULL: no scopes wanted */
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

/* probe() on checked arguments: the record (a new reference), or NULL with or without an error. */
static PyObject *
probe_record(PyObject *headers, PyObject *memo, PyObject *now, PyObject *revocations, PyObject *rule)
{
    PyObject *seq = PySequence_Fast(headers, "headers must be iterable");
    if (seq == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) { /* not iterable: unusual, so a miss */
            PyErr_Clear();
        }
        return NULL;
    }
    PyObject *found = find_value(seq);
    PyObject *record = found ? lookup(memo, found) : NULL;
    Py_DECREF(seq);
    if (record == NULL) {
        return NULL;
    }
    int ok = servable(record, now, revocations, rule);
    if (ok <= 0) {
        Py_DECREF(record);
        return NULL;
    }
    return record;
}

static PyObject *
probe(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "probe(headers, memo: dict, now, revocations, rule)");
        return NULL;
    }
    PyObject *record = probe_record(args[0], args[1], args[2], args[3], args[4]);
    if (record == NULL && !PyErr_Occurred()) {
        Py_RETURN_NONE;
    }
    return record;
}

/* Dispatch: the middleware's whole ASGI call in C, for a middleware that reads tokens from the
 * Authorization header only and runs no principal hook (gatekeeper.middleware builds one then;
 * its Python closure is the same logic and runs otherwise). Per request it does what the
 * closure does: an http or websocket scope whose rule is not exempt and whose one
 * Authorization header has a servable memo record gets a user (``user_class`` instance with
 * ``claims`` set) as scope["user"] and scope["auth"], and the app's call is returned; a miss
 * returns ``decide(rule, scope, receive, send)``; anything else (another scope type, a scope
 * that is not a dict, a call with other arguments) returns ``fallback(...)``, the closure. */
typedef struct {
    PyObject_HEAD
    PyObject *app, *decide, *fallback, *memo, *clock, *revocations, *user_class, *rule,
        *match_scope;
    PyObject *dict; /* attributes set from Python (the coroutine-function mark) */
    int rule_wants; /* the fixed rule (rule not None) wants scopes: a frozen Rule's ``wanted`` */
    vectorcallfunc vectorcall;
} Dispatch;

static PyObject *str_access, *str_auth, *str_claims, *str_exempt, *str_headers, *str_http,
    *str_type, *str_user, *str_websocket, *empty_tuple;

/* Whether ``kind`` is "http" or "websocket": 1, 0, or -1 with an error set. */
static int
is_connection(PyObject *kind)
{
    if (kind == str_http || kind == str_websocket) { /* servers' literals are interned */
        return 1;
    }
    if (!PyUnicode_Check(kind)) {
        return 0;
    }
    return PyUnicode_Compare(kind, str_http) == 0 || PyUnicode_Compare(kind, str_websocket) == 0;
}

/* The rule for a connection scope (a new reference), NULL on error; *exempt set when exempt. */
static PyObject *
rule_for(Dispatch *self, PyObject *scope, int *exempt)
{
    *exempt = 0;
    if (self->rule != Py_None) { /* no route rules: the default applies to every request */
        Py_INCREF(self->rule);
        return self->rule;
    }
    PyObject *rule = PyObject_CallOneArg(self->match_scope, scope);
    if (rule == NULL) {
        return NULL;
    }
    PyObject *access = PyObject_GetAttr(rule, str_access);
    if (access == NULL) {
        Py_DECREF(rule);
        return NULL;
    }
    int same = PyObject_RichCompareBool(access, str_exempt, Py_EQ);
    Py_DECREF(access);
    if (same < 0) {
        Py_DECREF(rule);
        return NULL;
    }
    *exempt = same;
    return rule;
}

/* The user for a hit: a new user_class instance with ``claims`` set (a new reference). */
static PyObject *
new_user(Dispatch *self, PyObject *claims)
{
    /* object.__new__(user_class): no __init__ frame, claims is all the user needs */
    PyObject *user = PyBaseObject_Type.tp_new((PyTypeObject *)self->user_class, empty_tuple, NULL);
    if (user != NULL && PyObject_SetAttr(user, str_claims, claims) < 0) {
        Py_CLEAR(user);
    }
    return user;
}

/* The hot path once the scope is a connection: serve from the memo, or decide. */
static PyObject *
dispatch_connection(Dispatch *self, PyObject *scope, PyObject *const *args)
{
    int exempt;
    PyObject *rule = rule_for(self, scope, &exempt);
    if (rule == NULL) {
        return NULL;
    }
    PyObject *record = NULL;
    PyObject *headers = exempt ? NULL : PyDict_GetItemWithError(scope, str_headers); /* borrowed */
    if (headers != NULL) {
        Py_INCREF(headers); /* the clock is Python code: it could change the scope */
        PyObject *now = PyObject_CallNoArgs(self->clock);
        PyObject *check = rule == self->rule && !self->rule_wants ? NULL : rule;
        record = now ? probe_record(headers, self->memo, now, self->revocations, check) : NULL;
        Py_XDECREF(now);
        Py_DECREF(headers);
    }
    if (PyErr_Occurred()) {
        Py_XDECREF(record);
        Py_DECREF(rule);
        return NULL;
    }
    if (record == NULL) { /* a miss, an exempt route or no headers: the decision in Python */
        PyObject *call[5] = {NULL, rule, args[0], args[1], args[2]};
        PyObject *result = PyObject_Vectorcall(self->decide, call + 1, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(rule);
        return result;
    }
    Py_DECREF(rule);
    PyObject *user = new_user(self, PyTuple_GET_ITEM(record, RECORD_CLAIMS));
    Py_DECREF(record);
    if (user == NULL) {
        return NULL;
    }
    int failed = PyDict_SetItem(scope, str_user, user) < 0 || PyDict_SetItem(scope, str_auth, user) < 0;
    Py_DECREF(user);
    if (failed) {
        return NULL;
    }
    return PyObject_Vectorcall(self->app, args, 3, NULL);
}

static PyObject *
dispatch_call(Dispatch *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *scope = nargs == 3 && kwnames == NULL ? args[0] : NULL;
    PyObject *kind = scope && PyDict_CheckExact(scope) ? PyDict_GetItemWithError(scope, str_type) : NULL;
    if (kind == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
    }
    Py_INCREF(scope); /* held: Python code (match_scope, the clock) runs before we are done */
    Py_INCREF(kind);
    int connection = is_connection(kind);
    Py_DECREF(kind);
    PyObject *result;
    if (connection < 0) {
        result = NULL;
    } else if (connection) {
        result = dispatch_connection(self, scope, args);
    } else {
        result = PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
    }
    Py_DECREF(scope);
    return result;
}

static const char *dispatch_fields[] = {
    "app", "decide", "fallback", "memo", "clock", "revocations", "user_class", "rule", "match_scope", NULL,
};

static PyObject *
dispatch_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *app, *decide, *fallback, *memo, *clock, *revocations, *user_class, *rule, *match_scope;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OOOO!OOO!OO:Dispatch", (char **)dispatch_fields,
            &app, &decide, &fallback, &PyDict_Type, &memo, &clock, &revocations, &PyType_Type,
            &user_class, &rule, &match_scope)) {
        return NULL;
    }
    Dispatch *self = (Dispatch *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    PyObject *values[] = {app, decide, fallback, memo, clock, revocations, user_class, rule, match_scope};
    PyObject **slots[] = {&self->app, &self->decide, &self->fallback, &self->memo, &self->clock,
        &self->revocations, &self->user_class, &self->rule, &self->match_scope};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        Py_INCREF(values[i]);
        *slots[i] = values[i];
    }
    self->vectorcall = (vectorcallfunc)dispatch_call;
    self->rule_wants = rule == Py_None ? 1 : attr_true(rule, str_wanted);
    if (self->rule_wants < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
dispatch_traverse(Dispatch *self, visitproc visit, void *arg)
{
    Py_VISIT(self->app);
    Py_VISIT(self->decide);
    Py_VISIT(self->fallback);
    Py_VISIT(self->memo);
    Py_VISIT(self->clock);
    Py_VISIT(self->revocations);
    Py_VISIT(self->user_class);
    Py_VISIT(self->rule);
    Py_VISIT(self->match_scope);
    Py_VISIT(self->dict);
    return 0;
}

static int
dispatch_clear(Dispatch *self)
{
    Py_CLEAR(self->app);
    Py_CLEAR(self->decide);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->memo);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->revocations);
    Py_CLEAR(self->user_class);
    Py_CLEAR(self->rule);
    Py_CLEAR(self->match_scope);
    Py_CLEAR(self->dict);
    return 0;
}

static void
dispatch_dealloc(Dispatch *self)
{
    PyObject_GC_UnTrack(self);
    dispatch_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyGetSetDef dispatch_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject DispatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gatekeeper._speedups.Dispatch",
    .tp_doc = "Dispatch(*, app, decide, fallback, memo, clock, revocations, user_class, rule, "
              "match_scope): the middleware's ASGI call with a cached token, in C.",
    .tp_basicsize = sizeof(Dispatch),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = dispatch_new,
    .tp_traverse = (traverseproc)dispatch_traverse,
    .tp_clear = (inquiry)dispatch_clear,
    .tp_dealloc = (destructor)dispatch_dealloc,
    .tp_vectorcall_offset = offsetof(Dispatch, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_getset = dispatch_getset,
    .tp_dictoffset = offsetof(Dispatch, dict),
};

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
        || intern(&str_wanted, "wanted") || intern(&str_access, "access") || intern(&str_auth, "auth")
        || intern(&str_claims, "claims") || intern(&str_exempt, "exempt")
        || intern(&str_headers, "headers") || intern(&str_http, "http") || intern(&str_type, "type")
        || intern(&str_user, "user") || intern(&str_websocket, "websocket")) {
        return NULL;
    }
    empty_tuple = PyTuple_New(0);
    if (empty_tuple == NULL || PyType_Ready(&DispatchType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&DispatchType);
    if (PyModule_AddObject(m, "Dispatch", (PyObject *)&DispatchType) < 0) {
        Py_DECREF(&DispatchType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
