// BP1 row by row in one kernel, with the output layer's bias: one warp per row adds the bias,
// finds the row max and the sum of exp(z + b - max) with warp shuffles, then writes
// delta = (softmax(z + b) - Y) * scale and the row's loss.
// gpubp/kernels.py compiles it after gpubp_math.cuh. Twin: ops.softmax_minus_y.
//
// z, delta: (n, C) C-contiguous; b: (C,) bias, read only when has_bias; y: (n,) int64 labels
// in 0..C-1 (checked on the host); scale: each row's factor is scale (1/n), or w[row] / wsum[0]
// when weighted (w: (n,) sample weights, wsum: their sum, on the device: no host sync);
// loss_rows: (n,) each row's share of the loss.

namespace gpubp {

constexpr unsigned FULL_WARP = 0xffffffffu;

template <typename T>
__device__ T logit(const T* zr, const T* b, bool has_bias, long long j) {
    return has_bias ? zr[j] + b[j] : zr[j];
}

template <typename T>
__device__ void softmax_minus_y_rows(const T* z, const T* b, int has_bias, const long long* y, T scale,
                                     const T* w, const T* wsum, int weighted, T* delta, T* loss_rows,
                                     long long n, long long C) {
    const long long warps_per_block = blockDim.x / 32;
    const long long row = static_cast<long long>(blockIdx.x) * warps_per_block + threadIdx.x / 32;
    const long long lane = threadIdx.x % 32;
    if (row >= n) {
        return;  // the whole warp leaves together: row is the same for its 32 lanes
    }
    const T* zr = z + row * C;
    T* dr = delta + row * C;
    const bool bias = has_bias != 0;

    T zmax = logit(zr, b, bias, lane < C ? lane : 0);
    for (long long j = lane + 32; j < C; j += 32) {
        const T zj = logit(zr, b, bias, j);
        zmax = zj > zmax ? zj : zmax;
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        const T other = __shfl_xor_sync(FULL_WARP, zmax, offset);
        zmax = other > zmax ? other : zmax;
    }

    T sumexp = T(0);
    for (long long j = lane; j < C; j += 32) {
        sumexp += math_exp(logit(zr, b, bias, j) - zmax);
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        sumexp += __shfl_xor_sync(FULL_WARP, sumexp, offset);
    }

    const long long label = y[row];
    const T s = weighted != 0 ? w[row] / wsum[0] : scale;
    for (long long j = lane; j < C; j += 32) {
        dr[j] = softmax_minus_y(logit(zr, b, bias, j), zmax, sumexp, j == label, s);
    }
    if (lane == 0) {
        loss_rows[row] = row_loss(logit(zr, b, bias, label), zmax, sumexp, s);
    }
}

}  // namespace gpubp

extern "C" __global__ void gpubp_softmax_minus_y_rows_f32(const float* z, const float* b, int has_bias,
                                                          const long long* y, float scale, const float* w,
                                                          const float* wsum, int weighted, float* delta,
                                                          float* loss_rows, long long n, long long C) {
    gpubp::softmax_minus_y_rows<float>(z, b, has_bias, y, scale, w, wsum, weighted, delta, loss_rows, n, C);
}

extern "C" __global__ void gpubp_softmax_minus_y_rows_f64(const double* z, const double* b, int has_bias,
                                                          const long long* y, double scale, const double* w,
                                                          const double* wsum, int weighted, double* delta,
                                                          double* loss_rows, long long n, long long C) {
    gpubp::softmax_minus_y_rows<double>(z, b, has_bias, y, scale, w, wsum, weighted, delta, loss_rows, n, C);
}
