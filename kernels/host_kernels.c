/* gpubp's CPU kernels in C: the optimizer updates, ReLU's bias + activation, BP2's g * f'(a)
 * with BP3's column sums, and BP1's softmax-minus-y around NumPy's exp and log, one pass each
 * over their arrays where their NumPy twins (gpubp/ops.py: sgd_momentum_update, adam_update,
 * bias_activation for "relu", backprop_delta with db, softmax_minus_y) make several.
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
#include <stdint.h>

/* The optimizers' gradient of parameter i: g + l2 p for the first n_weights (the L2 penalty's
 * gradient folded in: the weights come first in the flat buffers), g for the rest. */
#define GRADIENT(i) ((i) < n_weights ? g[i] + l2 * p[i] : g[i])

/* v = momentum v - lr g; then p += v, or with Nesterov p += momentum v - lr g (the new v). */
#define SGD_MOMENTUM(NAME, T)                                                          \
    void NAME(T *p, const T *g, T *v, size_t n, T lr, T momentum, int nesterov, T l2,  \
              size_t n_weights) {                                                      \
        for (size_t i = 0; i < n; i++) {                                               \
            T lr_g = GRADIENT(i) * lr;                                                 \
            T v_i = v[i] * momentum - lr_g;                                            \
            v[i] = v_i;                                                                \
            p[i] = p[i] + (nesterov ? v_i * momentum - lr_g : v_i);                    \
        }                                                                              \
    }

/* m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= lr_t m / (sqrt(v) + eps),
 * with c1 = 1 - b1 and c2 = 1 - b2. */
#define ADAM(NAME, T, SQRT)                                                            \
    void NAME(T *p, const T *g, T *m, T *v, size_t n, T lr_t, T b1, T c1, T b2, T c2,  \
              T eps, T l2, size_t n_weights) {                                         \
        for (size_t i = 0; i < n; i++) {                                               \
            T g_i = GRADIENT(i);                                                       \
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

/* BP1 for a softmax output, the twin's steps but its exp and log (NumPy's, which no C library
 * matches bit for bit: the caller runs them between these three). For z (rows, classes), with
 * the output bias b (classes,) or NULL, and labels y (rows,):
 *   softmax_shift:    delta = z + b - zmax (zmax the row's first largest value, or its first NaN,
 *                     as NumPy's argmax picks it); picked (2, rows) = zmax, then z + b at the label.
 *                     Returns 1, having stopped, at a label outside 0..classes-1 (the caller then
 *                     runs the twin, which treats it as NumPy's indexing does), else 0.
 *   (caller)          delta = exp(delta)
 *   softmax_row_sums: s (rows,) = the row sums of delta, in the order of NumPy's sum(axis=1) of
 *                     rows of up to 8192 values (0 plus the row's pairwise sum, see PAIRWISE_SUM)
 *   (caller)          row_loss = log(s)
 *   softmax_finish:   row_loss = (row_loss + zmax - z_y) c and delta = (delta / s - Y) c, c the
 *                     row's weight w[r], or scale where w is NULL (the caller sums row_loss). */

/* NumPy's pairwise sum of a[0 .. n-1] (its pairwise_sum in loops_utils.h): up to 8 values one by
 * one; up to 128 in eight running sums joined as a tree, the rest added one by one; more split in
 * two at a multiple of 8 near the middle. */
#define PAIRWISE_SUM(NAME, T)                                                          \
    static T NAME(const T *a, size_t n) {                                              \
        if (n < 8) {                                                                   \
            T res = (T)-0.0;                                                           \
            for (size_t i = 0; i < n; i++)                                             \
                res = res + a[i];                                                      \
            return res;                                                                \
        }                                                                              \
        if (n <= 128) {                                                                \
            T r[8];                                                                    \
            size_t i;                                                                  \
            for (int j = 0; j < 8; j++)                                                \
                r[j] = a[j];                                                           \
            for (i = 8; i < n - n % 8; i += 8)                                         \
                for (int j = 0; j < 8; j++)                                            \
                    r[j] = r[j] + a[i + j];                                            \
            T res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7])); \
            for (; i < n; i++)                                                         \
                res = res + a[i];                                                      \
            return res;                                                                \
        }                                                                              \
        size_t half = n / 2 - (n / 2) % 8;                                             \
        return NAME(a, half) + NAME(a + half, n - half);                               \
    }

#define SOFTMAX(SUFFIX, T)                                                             \
    PAIRWISE_SUM(pairwise_sum_##SUFFIX, T)                                             \
                                                                                       \
    int softmax_shift_##SUFFIX(const T *z, const T *b, const int64_t *y, T *delta,     \
                               T *picked, size_t rows, size_t classes) {               \
        for (size_t r = 0; r < rows; r++) {                                            \
            const T *z_r = z + r * classes;                                            \
            T *d_r = delta + r * classes;                                              \
            for (size_t j = 0; j < classes; j++)                                       \
                d_r[j] = b != NULL ? z_r[j] + b[j] : z_r[j];                           \
            T zmax = d_r[0];                                                           \
            for (size_t j = 1; j < classes && zmax == zmax; j++)                       \
                if (!(d_r[j] <= zmax))                                                 \
                    zmax = d_r[j];                                                     \
            if (y[r] < 0 || (uint64_t)y[r] >= classes)                                 \
                return 1;                                                              \
            picked[r] = zmax;                                                          \
            picked[rows + r] = d_r[y[r]];                                              \
            for (size_t j = 0; j < classes; j++)                                       \
                d_r[j] = d_r[j] - zmax;                                                \
        }                                                                              \
        return 0;                                                                      \
    }                                                                                  \
                                                                                       \
    void softmax_row_sums_##SUFFIX(const T *delta, T *s, size_t rows, size_t classes) { \
        for (size_t r = 0; r < rows; r++)                                              \
            s[r] = (T)0 + pairwise_sum_##SUFFIX(delta + r * classes, classes);         \
    }                                                                                  \
                                                                                       \
    void softmax_finish_##SUFFIX(T *delta, const T *s, T *row_loss, const T *picked,   \
                                 const int64_t *y, const T *w, T scale, size_t rows,   \
                                 size_t classes) {                                     \
        for (size_t r = 0; r < rows; r++) {                                            \
            T c = w != NULL ? w[r] : scale;                                            \
            T *d_r = delta + r * classes;                                              \
            row_loss[r] = ((row_loss[r] + picked[r]) - picked[rows + r]) * c;          \
            for (size_t j = 0; j < classes; j++)                                       \
                d_r[j] = d_r[j] / s[r];                                                \
            d_r[y[r]] = d_r[y[r]] - (T)1;                                              \
            for (size_t j = 0; j < classes; j++)                                       \
                d_r[j] = d_r[j] * c;                                                   \
        }                                                                              \
    }

SOFTMAX(float32, float)
SOFTMAX(float64, double)
