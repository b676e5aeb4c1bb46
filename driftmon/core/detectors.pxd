# Types for compiling detectors.py with Cython (an "augmenting" .pxd): the .py file stays
# the one source and runs as plain Python where the extension is not built.
import cython



cdef double _ZC
cdef double _EWMA
cdef double _INV_SQRT2
cdef list _NO_ALARMS


cdef class FeatureStream:
    cdef public str name
    cdef public str kind
    cdef public double target_arl
    cdef object _config
    cdef long long _warmup
    cdef bint _binary
    cdef public long long n
    cdef public double current
    cdef long long _detected_at
    cdef bint _learning
    cdef object _warm
    cdef bint _ph_on
    cdef double _ph_k
    cdef double _ph_threshold
    cdef long long _ph_n
    cdef double _ph_inc
    cdef double _ph_dec
    cdef double _ph_min
    cdef double _ph_max
    cdef long long _ph_argmin
    cdef long long _ph_argmax
    cdef object _adwin
    cdef object _adwin_helper
    cdef public long long ref_n
    cdef double _mean
    cdef double _inv_sd
    cdef double _z0
    cdef double _z1
    cdef object _shape
    cdef long long _blk_n
    cdef double _blk_sum
    cdef double _blk_sumsq
    cdef double _ref_sum
    cdef double _ref_sumsq

    @cython.locals(cur=cython.double, z=cython.double, a_in=cython.double,
                   inc=cython.double, dec=cython.double)
    cpdef object update(self, double x)

    cpdef double _ph_statistic(self)

    cpdef long long _cusum_onset(self)


@cython.locals(stream=FeatureStream)
cpdef update_streams(dict streams, dict features, double target_arl, object config)
