// BP1 row by row in one kernel: one warp per row finds the row max and the sum of exp(z - max)
// with warp shuffles, then writes delta = (softmax(z) - Y) * scale and the row's loss.
// gpubp/kernels.py compiles it after gpubp_math.cuh. Twin: ops.softmax_minus_y.
//
// z, delta: (n, C) C-contiguous; y: (n,) int64 labels in 0..C-1 (checked on the host);
// scale: (n,) per-row factor (1/n, or w_i / sum(w)); loss_rows: (n,) each row's share of the loss.

namespace gpubp {

constexpr unsigned FULL_WARP = 0xffffffffu;

template <typename T>
__device__ void softmax_minus_y_rows(const T* z, const long long* y, const T* scale, T* delta,
                                     T* loss_rows, long long n, long long C) {
    const long long warps_per_block = blockDim.x / 32;
    const long long row = static_cast<long long>(blockIdx.x) * warps_per_block + threadIdx.x / 32;
    const long long lane = threadIdx.x % 32;
    if (row >= n) {
        return;  // the whole warp leaves together: row is the same for its 32 lanes
    }
    const T* zr = z + row * C;
    T* dr = delta + row * C;

    T zmax = zr[lane < C ? lane : 0];
    for (long long j = lane + 32; j < C; j += 32) {
        zmax = zr[j] > zmax ? zr[j] : zmax;
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        const T other = __shfl_xor_sync(FULL_WARP, zmax, offset);
        zmax = other > zmax ? other : zmax;
    }

    T sumexp = T(0);
    for (long long j = lane; j < C; j += 32) {
        sumexp += math_exp(zr[j] - zmax);
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        sumexp += __shfl_xor_sync(FULL_WARP, sumexp, offset);
    }

    const long long label = y[row];
    const T s = scale[row];
    for (long long j = lane; j < C; j += 32) {
        dr[j] = softmax_minus_y(zr[j], zmax, sumexp, j == label, s);
    }
    if (lane == 0) {
        loss_rows[row] = row_loss(zr[label], zmax, sumexp, s);
    }
}

}  // namespace gpubp

extern "C" __global__ void gpubp_softmax_minus_y_rows_f32(const float* z, const long long* y,
                                                          const float* scale, float* delta,
                                                          float* loss_rows, long long n, long long C) {
    gpubp::softmax_minus_y_rows<float>(z, y, scale, delta, loss_rows, n, C);
}

extern "C" __global__ void gpubp_softmax_minus_y_rows_f64(const double* z, const long long* y,
                                                          const double* scale, double* delta,
                                                          double* loss_rows, long long n, long long C) {
    gpubp::softmax_minus_y_rows<double>(z, y, scale, delta, loss_rows, n, C);
}
