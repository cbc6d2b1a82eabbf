// Host loops over the per-element functions of kernels/gpubp_math.cuh, compiled by g++ into a
// shared library that tests/test_kernel_sources.py loads with ctypes and holds to the NumPy
// twins in gpubp/ops.py. Each loop applies the functions exactly as the CUDA kernels do
// (see the ElementwiseSpec operations in gpubp/kernels.py and kernels/softmax_rows.cu).
#include "../kernels/gpubp_math.cuh"

namespace {

template <typename T, int ACT>
void bias_activation_loop(T* z, const T* b, long long n, long long width) {
    for (long long i = 0; i < n * width; ++i) {
        z[i] = gpubp::activate<ACT>(z[i] + b[i % width]);
    }
}

template <typename T>
void bias_activation(T* z, const T* b, long long n, long long width, int act) {
    switch (act) {
        case gpubp::RELU: bias_activation_loop<T, gpubp::RELU>(z, b, n, width); break;
        case gpubp::SIGMOID: bias_activation_loop<T, gpubp::SIGMOID>(z, b, n, width); break;
        case gpubp::TANH: bias_activation_loop<T, gpubp::TANH>(z, b, n, width); break;
        default: bias_activation_loop<T, gpubp::IDENTITY>(z, b, n, width); break;
    }
}

template <typename T, int ACT>
void backprop_delta_loop(T* g, const T* a, long long size) {
    for (long long i = 0; i < size; ++i) {
        g[i] = g[i] * gpubp::derivative_from_a<ACT>(a[i]);
    }
}

template <typename T>
void backprop_delta(T* g, const T* a, long long size, int act) {
    switch (act) {
        case gpubp::RELU: backprop_delta_loop<T, gpubp::RELU>(g, a, size); break;
        case gpubp::SIGMOID: backprop_delta_loop<T, gpubp::SIGMOID>(g, a, size); break;
        case gpubp::TANH: backprop_delta_loop<T, gpubp::TANH>(g, a, size); break;
        default: backprop_delta_loop<T, gpubp::IDENTITY>(g, a, size); break;
    }
}

// The row-wise algorithm of softmax_rows.cu, one row at a time.
template <typename T>
void softmax_minus_y(const T* z, const long long* y, const T* scale, T* delta, T* loss_rows,
                     long long n, long long C) {
    for (long long row = 0; row < n; ++row) {
        const T* zr = z + row * C;
        T zmax = zr[0];
        for (long long j = 1; j < C; ++j) {
            zmax = zr[j] > zmax ? zr[j] : zmax;
        }
        T sumexp = T(0);
        for (long long j = 0; j < C; ++j) {
            sumexp += gpubp::math_exp(zr[j] - zmax);
        }
        for (long long j = 0; j < C; ++j) {
            delta[row * C + j] = gpubp::softmax_minus_y(zr[j], zmax, sumexp, j == y[row], scale[row]);
        }
        loss_rows[row] = gpubp::row_loss(zr[y[row]], zmax, sumexp, scale[row]);
    }
}

template <typename T>
void sgd_momentum(T* p, T* v, const T* g, long long size, T lr, T mu, int nesterov, T l2, long long n_weights) {
    for (long long i = 0; i < size; ++i) {
        gpubp::sgd_momentum(p[i], v[i], gpubp::l2_gradient(g[i], p[i], l2, i < n_weights), lr, mu, nesterov != 0);
    }
}

template <typename T>
void adam(T* p, T* m, T* v, const T* g, long long size, T lr_t, T beta1, T one_minus_beta1,
          T beta2, T one_minus_beta2, T eps, T l2, long long n_weights) {
    for (long long i = 0; i < size; ++i) {
        gpubp::adam(p[i], m[i], v[i], gpubp::l2_gradient(g[i], p[i], l2, i < n_weights), lr_t, beta1,
                    one_minus_beta1, beta2, one_minus_beta2, eps);
    }
}

}  // namespace

#define GPUBP_EXPORT(T, SUFFIX)                                                                   \
    extern "C" void bias_activation_##SUFFIX(T* z, const T* b, long long n, long long width,      \
                                             int act) {                                           \
        bias_activation<T>(z, b, n, width, act);                                                  \
    }                                                                                             \
    extern "C" void backprop_delta_##SUFFIX(T* g, const T* a, long long size, int act) {          \
        backprop_delta<T>(g, a, size, act);                                                       \
    }                                                                                             \
    extern "C" void softmax_minus_y_##SUFFIX(const T* z, const long long* y, const T* scale,      \
                                             T* delta, T* loss_rows, long long n, long long C) {  \
        softmax_minus_y<T>(z, y, scale, delta, loss_rows, n, C);                                  \
    }                                                                                             \
    extern "C" void sgd_momentum_##SUFFIX(T* p, T* v, const T* g, long long size, T lr, T mu,     \
                                          int nesterov, T l2, long long n_weights) {              \
        sgd_momentum<T>(p, v, g, size, lr, mu, nesterov, l2, n_weights);                          \
    }                                                                                             \
    extern "C" void adam_##SUFFIX(T* p, T* m, T* v, const T* g, long long size, T lr_t, T beta1,  \
                                  T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T l2,     \
                                  long long n_weights) {                                          \
        adam<T>(p, m, v, g, size, lr_t, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, l2,  \
                n_weights);                                                                       \
    }

GPUBP_EXPORT(float, f32)
GPUBP_EXPORT(double, f64)
