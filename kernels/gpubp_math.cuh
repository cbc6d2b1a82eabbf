// Per-element math of gpubp's CUDA kernels.
//
// Every function is __host__ __device__ behind GPUBP_HD, so this one file is compiled by NVRTC
// inside CuPy (gpubp/kernels.py puts it in front of each kernel), by nvcc for the sm_90
// compile check, and by g++ for the CPU tests that hold each function to its NumPy twin in
// gpubp/ops.py. Rows are samples; indices computed by hand are 64-bit (long long).
#ifndef GPUBP_MATH_CUH
#define GPUBP_MATH_CUH

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define GPUBP_HD __host__ __device__ __forceinline__
#else
#include <cmath>
#define GPUBP_HD inline
#endif

namespace gpubp {

// Hidden activations; the numbers match gpubp.kernels.ACTIVATION_CODES.
enum Activation { IDENTITY = 0, RELU = 1, SIGMOID = 2, TANH = 3 };

GPUBP_HD float math_exp(float x) { return expf(x); }
GPUBP_HD double math_exp(double x) { return exp(x); }
GPUBP_HD float math_log(float x) { return logf(x); }
GPUBP_HD double math_log(double x) { return log(x); }
GPUBP_HD float math_tanh(float x) { return tanhf(x); }
GPUBP_HD double math_tanh(double x) { return tanh(x); }
GPUBP_HD float math_sqrt(float x) { return sqrtf(x); }
GPUBP_HD double math_sqrt(double x) { return sqrt(x); }

// x read in the type its arithmetic runs in: float for a bfloat16 (CuPy's bfloat16 class converts
// implicitly to float, and so does any class with one conversion to float), x itself for float and
// double. The kernels compute f(widen(z) + b) and widen(g) * f'(widen(a)) in float and store the
// result into a bfloat16 with one rounding. Twin: ops.wide_dtype.
template <typename T>
GPUBP_HD auto widen(const T& x) -> decltype(+x) {
    return +x;
}

// 1 / (1 + exp(-z)) with exp taken only of -|z|, so no overflow for any z. Twin: ops.sigmoid.
template <typename T>
GPUBP_HD T sigmoid(T z) {
    if (z >= T(0)) {
        return T(1) / (T(1) + math_exp(-z));
    }
    const T e = math_exp(z);
    return e / (T(1) + e);
}

// a = f(z). NaN passes through ReLU (as numpy.maximum does). Twin: ops.activate.
template <int ACT, typename T>
GPUBP_HD T activate(T z) {
    if (ACT == RELU) {
        return (z <= T(0)) ? T(0) : z;
    }
    if (ACT == SIGMOID) {
        return sigmoid(z);
    }
    if (ACT == TANH) {
        return math_tanh(z);
    }
    return z;
}

// f'(z) from the saved activation a = f(z): relu (a > 0), sigmoid a(1 - a), tanh 1 - a^2.
// BP2's elementwise half is g * derivative_from_a(a). Twin: ops.backprop_delta.
template <int ACT, typename T>
GPUBP_HD T derivative_from_a(T a) {
    if (ACT == RELU) {
        return (a > T(0)) ? T(1) : T(0);
    }
    if (ACT == SIGMOID) {
        return a * (T(1) - a);
    }
    if (ACT == TANH) {
        return T(1) - a * a;
    }
    return T(1);
}

// BP1 for one logit: (softmax(z) - Y) * scale, given the row's max and sum of exp(z - max).
// scale is 1/n, or w_i / sum(w) with sample weights. Twin: ops.softmax_minus_y.
template <typename T>
GPUBP_HD T softmax_minus_y(T z, T zmax, T sumexp, bool is_label, T scale) {
    const T p = math_exp(z - zmax) / sumexp;
    return (is_label ? p - T(1) : p) * scale;
}

// One row's share of the loss: (log sum exp(z) - z[label]) * scale, finite for finite z.
template <typename T>
GPUBP_HD T row_loss(T z_label, T zmax, T sumexp, T scale) {
    return (math_log(sumexp) + zmax - z_label) * scale;
}

// The gradient an optimizer reads for a parameter p: g + l2 p for a weight (the L2 penalty's
// gradient, l2 = alpha / n, folded into the update's pass), g for a bias. Twin: ops.l2_gradient.
template <typename T>
GPUBP_HD T l2_gradient(T g, T p, T l2, bool weight) {
    return weight ? g + l2 * p : g;
}

// v = mu v - lr g; p += v, or p += mu v - lr g (Nesterov). Twin: ops.sgd_momentum_update.
template <typename T>
GPUBP_HD void sgd_momentum(T& p, T& v, T g, T lr, T mu, bool nesterov) {
    v = mu * v - lr * g;
    p += nesterov ? (mu * v - lr * g) : v;
}

// Adam with the bias correction folded into lr_t. 1 - beta is passed in, computed in double
// on the host, so float32 rounds it exactly as NumPy does. Twin: ops.adam_update.
template <typename T>
GPUBP_HD void adam(T& p, T& m, T& v, T g, T lr_t, T beta1, T one_minus_beta1, T beta2,
                   T one_minus_beta2, T eps) {
    m = beta1 * m + one_minus_beta1 * g;
    v = beta2 * v + one_minus_beta2 * (g * g);
    p -= lr_t * m / (math_sqrt(v) + eps);
}

}  // namespace gpubp

#endif  // GPUBP_MATH_CUH
