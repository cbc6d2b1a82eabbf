/* gpubp's CPU kernels in C: the optimizer updates, ReLU's bias + activation, and BP2's
 * g * f'(a) with BP3's column sums, one pass each over their arrays where their NumPy twins
 * (gpubp/ops.py: sgd_momentum_update, adam_update, bias_activation for "relu", backprop_delta
 * with db) make several.
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

/* BP2 and BP3 of one layer in one pass over g (rows, width): delta = g * f'(a), written over g,
 * with f' taken from the saved activation a as the twin takes it (codes of gpubp.kernels'
 * ACTIVATION_CODES: 0 identity, 1 relu (a > 0), 2 sigmoid a (1 - a), 3 tanh 1 - a a); and when
 * db is not NULL, db (width,) = the column sums of delta, 0 plus row 0, plus row 1, ... as
 * NumPy's delta.sum(axis=0) adds them (its width-1 case sums pairwise: the caller keeps it). */
#define BACKPROP_ROWS(T, DERIVATIVE)                                                   \
    for (size_t r = 0; r < rows; r++) {                                                \
        T *g_r = g + r * width;                                                        \
        const T *a_r = a + r * width;                                                  \
        for (size_t j = 0; j < width; j++)                                             \
            g_r[j] = g_r[j] * (DERIVATIVE);                                            \
        if (db != NULL)                                                                \
            for (size_t j = 0; j < width; j++)                                         \
                db[j] = db[j] + g_r[j];                                                \
    }

#define BACKPROP_DELTA(NAME, T)                                                        \
    void NAME(T *g, const T *a, T *db, size_t rows, size_t width, int act) {           \
        if (db != NULL)                                                                \
            for (size_t j = 0; j < width; j++)                                         \
                db[j] = (T)0;                                                          \
        switch (act) {                                                                 \
        case 1: BACKPROP_ROWS(T, (T)(a_r[j] > 0)) break;                               \
        case 2: BACKPROP_ROWS(T, a_r[j] * ((T)1 - a_r[j])) break;                      \
        case 3: BACKPROP_ROWS(T, (T)1 - a_r[j] * a_r[j]) break;                        \
        default: BACKPROP_ROWS(T, (T)1) break;                                         \
        }                                                                              \
    }

BACKPROP_DELTA(backprop_delta_float32, float)
BACKPROP_DELTA(backprop_delta_float64, double)
