# Types for compiling detectors.py with Cython (an "augmenting" .pxd): the .py file stays
# the one source and runs as plain Python where the extension is not built.
import cython
cimport cpython.array



cdef double _ZC
cdef double _EWMA
cdef double _TZ
cdef double _INV_SQRT2
cdef list _NO_ALARMS
cdef bint _COMPILED


# The fields of driftmon.core.detectors.STATE_FIELDS are public: pickling reads and writes
# them by name (tests/core/test_detectors.py checks this list against STATE_FIELDS).
cdef class FeatureStream:
    cdef public str name
    cdef public str kind
    cdef public double target_arl
    cdef public object _config
    cdef long long _warmup
    cdef bint _binary
    cdef public long long n
    cdef public double current
    cdef public long long _detected_at
    cdef public bint _learning
    cdef public object _warm
    cdef public bint _ph_on
    cdef public double _ph_k
    cdef public double _ph_threshold
    cdef public long long _ph_n
    cdef public double _ph_inc
    cdef public double _ph_dec
    cdef public double _ph_min
    cdef public double _ph_max
    cdef public long long _ph_argmin
    cdef public long long _ph_argmax
    cdef public bint _rb_on
    cdef public double _rb_minority
    cdef public double _rb_up
    cdef public double _rb_down
    cdef public double _rb_threshold
    cdef public double _rb_s
    cdef public long long _rb_zero_at
    cdef public object _adwin
    cdef object _adwin_helper
    cdef public long long ref_n
    cdef public double _mean
    cdef public double _inv_sd
    cdef public double _z0
    cdef public double _z1
    cdef public object _shape
    cdef public long long _blk_n
    cdef public double _blk_sum
    cdef public double _blk_sumsq
    cdef public double _ref_sum
    cdef public double _ref_sumsq
    cdef public cpython.array.array _gx
    cdef public cpython.array.array _gs
    cdef public double _raw_blk_sum
    cdef public double _raw_blk_sumsq
    cdef public double _raw_ref_sum
    cdef public double _raw_ref_sumsq
    cdef public double _raw_mean
    cdef public bint _tl_on
    cdef public long long _tl_hi_blk
    cdef public long long _tl_lo_blk
    cdef public long long _tl_hi_ref
    cdef public long long _tl_lo_ref
    cdef public double _tu_up
    cdef public double _tu_down
    cdef public double _tu_threshold
    cdef public double _tu_s
    cdef public long long _tu_zero_at
    cdef public double _td_up
    cdef public double _td_down
    cdef public double _td_threshold
    cdef public double _td_s
    cdef public long long _td_zero_at

    @cython.locals(cur=cython.double, z=cython.double, a_in=cython.double,
                   inc=cython.double, dec=cython.double, r=cython.double,
                   i=cython.Py_ssize_t, lo=cython.double, hi=cython.Py_ssize_t,
                   mid=cython.Py_ssize_t, gx=cpython.array.array, gs=cpython.array.array,
                   px=cython.p_double, ps=cython.p_double)
    cpdef object update(self, double x)

    cpdef double _ph_statistic(self)

    cpdef double _rare_statistic(self)

    cpdef double _tail_statistic(self)

    cpdef long long _cusum_onset(self)


@cython.locals(stream=FeatureStream)
cpdef update_streams(dict streams, dict features, double target_arl, object config)
