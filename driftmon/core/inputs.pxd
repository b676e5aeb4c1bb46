# Types for compiling inputs.py with Cython (an "augmenting" .pxd, as detectors.pxd): the
# .py file stays the one source and runs as plain Python where the extension is not built.
import cython


@cython.locals(
    rows=cython.double[:, ::1],
    sums=cython.double[::1],
    lex=cython.longlong[::1],
    inc=cython.longlong[::1],
    word_bytes=cython.p_uchar,
    slot_words=cython.p_uchar,
    slot_lengths=cython.p_uchar,
    slot_first=cython.p_uchar,
    p=cython.p_uchar,
    raw=bytes,
    limit=Py_ssize_t,
    flags_at=Py_ssize_t,
    tokens_at=Py_ssize_t,
    size=Py_ssize_t,
    width=Py_ssize_t,
    last_slot=cython.uint,
    bits32=cython.uint,
    shift=cython.uint,
    golden=cython.uint,
    lane=cython.int,
    lane_mask=cython.longlong,
    tables=tuple,
    i=Py_ssize_t,
    j=Py_ssize_t,
    n=Py_ssize_t,
    q=Py_ssize_t,
    start=Py_ssize_t,
    length=Py_ssize_t,
    begun=Py_ssize_t,
    ended=Py_ssize_t,
    inside=cython.int,
    w=cython.int,
    starts=Py_ssize_t[42],
    ends=Py_ssize_t[42],
    acc=cython.longlong,
    spaces=cython.longlong,
    newlines=cython.longlong,
    bit=Py_ssize_t,
    slot=cython.uint,
    h=cython.uint,
    b=cython.uchar,
    k=Py_ssize_t,
    mask=cython.longlong,
)
cpdef _scan(object x, object heads, object lengths, object tokens, object fold_of)


@cython.locals(
    zv=cython.double[:, :],
    start=cython.double[::1],
    out=cython.double[::1],
    fired=Py_ssize_t,
    rows=Py_ssize_t,
    j=Py_ssize_t,
    t=Py_ssize_t,
    run=cython.double,
    low=cython.double,
    v=cython.double,
    c=cython.double,
    s=cython.double,
)
cpdef Py_ssize_t _cusum_rows(
    object z, object cusum, object ends, double k, double clip, double h
) except? -2


@cython.locals(
    st=cython.double[:, ::1],
    xv=cython.double[:, ::1],
    yv=cython.double[:, ::1],
    fv=cython.longlong[::1],
    zv=cython.double[::1],
    dx=Py_ssize_t,
    d=Py_ssize_t,
    i=Py_ssize_t,
    r=Py_ssize_t,
    c=Py_ssize_t,
    e=Py_ssize_t,
    f=Py_ssize_t,
    zr=cython.double,
)
cpdef _accumulate(object stats, object x, object ys, object folds, Py_ssize_t rows)
