/* gpubp's CPU kernels in C: the optimizer updates and ReLU's bias + activation, one pass each
 * over their arrays where their NumPy twins (gpubp/ops.py: sgd_momentum_update, adam_update,
 * bias_activation for "relu") make several.
 *
 * Built by gpubp/host_build.py with -ffp-contract=off and without -ffast-math: each element goes
 * through the twin's operations, in the twin's order, each rounded to T (float or double), so
 * the results are the twin's bit for bit, up to the sign of a zero (tests/test_host_kernels.py).
 * The scalars arrive already rounded to T, as NumPy rounds a Python float next to an array of T;
 * 1 - beta is computed in double by the caller, as the twin computes it.
 *
 * Arrays: contiguous, not overlapping one another.
 */
#include <math.h>
#include <stddef.h>

/* v = momentum v - lr g; then p += v, or with Nesterov p += momentum v - lr g (the new v). */
#define SGD_MOMENTUM(NAME, T)                                                          \
    void NAME(T *p, const T *g, T *v, size_t n, T lr, T momentum, int nesterov) {      \
        for (size_t i = 0; i < n; i++) {                                               \
            T lr_g = g[i] * lr;                                                        \
            T v_i = v[i] * momentum - lr_g;                                            \
            v[i] = v_i;                                                                \
            p[i] = p[i] + (nesterov ? v_i * momentum - lr_g : v_i);                    \
        }                                                                              \
    }

/* m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= lr_t m / (sqrt(v) + eps),
 * with c1 = 1 - b1 and c2 = 1 - b2. */
#define ADAM(NAME, T, SQRT)                                                            \
    void NAME(T *p, const T *g, T *m, T *v, size_t n, T lr_t, T b1, T c1, T b2, T c2,  \
              T eps) {                                                                 \
        for (size_t i = 0; i < n; i++) {                                               \
            T g_i = g[i];                                                              \
            T m_i = m[i] * b1 + g_i * c1;                                              \
            T v_i = v[i] * b2 + (g_i * g_i) * c2;                                      \
            m[i] = m_i;                                                                \
            v[i] = v_i;                                                                \
            p[i] = p[i] - (m_i * lr_t) / (SQRT(v_i) + eps);                            \
        }                                                                              \
    }

SGD_MOMENTUM(sgd_momentum_float32, float)
SGD_MOMENTUM(sgd_momentum_float64, double)
ADAM(adam_float32, float, sqrtf)
ADAM(adam_float64, double, sqrt)

/* a = f(z + b) for ReLU over z (rows, width) and b (width,), written over z: the twin's z += b,
 * then maximum(z, 0), which keeps a NaN. */
#define BIAS_RELU(NAME, T)                                                             \
    void NAME(T *z, const T *b, size_t rows, size_t width) {                           \
        for (size_t r = 0; r < rows; r++) {                                            \
            T *z_r = z + r * width;                                                    \
            for (size_t j = 0; j < width; j++) {                                       \
                T s = z_r[j] + b[j];                                                   \
                z_r[j] = (s > 0 || s != s) ? s : (T)0;                                 \
            }                                                                          \
        }                                                                              \
    }

BIAS_RELU(bias_relu_float32, float)
BIAS_RELU(bias_relu_float64, double)
