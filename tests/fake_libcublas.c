/* libcublas as tests/test_cublas_ctypes.py plays it: the four entry points that
   gpubp.cublas_direct.load_cublas declares to ctypes, with cuBLAS's C prototypes (cublas_api.h:
   cublasSetStream_v2, cublasSetWorkspace_v2, cublasSgemm_v2, cublasDgemm_v2). Each logs the
   arguments it received into `calls` and returns `status` when its name is `failing`, else
   CUBLAS_STATUS_SUCCESS. Handles, streams and data pointers are only recorded, never read; alpha
   and beta are read, as cuBLAS reads them on the host (CUBLAS_POINTER_MODE_HOST). */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct cublasContext *cublasHandle_t;  /* cublas_api.h */
typedef struct CUstream_st *cudaStream_t;      /* driver_types.h */
typedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;  /* enums: int-sized, as there */
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;

struct call {
    char name[32];
    int nargs;
    int64_t args[14];     /* in order: pointers as addresses, ints sign-extended */
    double alpha, beta;   /* *alpha and *beta for a gemm */
};
struct call calls[8];
int ncalls;
char failing[32];
int status;

#define P(x) ((int64_t)(intptr_t)(x))

static cublasStatus_t record(const char *name, const int64_t *args, int nargs, double alpha, double beta) {
    if (ncalls < 8) {
        struct call *c = &calls[ncalls++];
        strncpy(c->name, name, sizeof c->name - 1);
        memcpy(c->args, args, nargs * sizeof *args);
        c->nargs = nargs, c->alpha = alpha, c->beta = beta;
    }
    return strcmp(name, failing) == 0 ? (cublasStatus_t)status : CUBLAS_STATUS_SUCCESS;
}

/* Whether p's page is mapped: a scalar pointer cut to 32 bits reads as NaN, not a crash. */
static int mapped(const void *p) {
    unsigned char resident;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    return mincore((void *)((uintptr_t)p & ~(page - 1)), 1, &resident) == 0;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId) {
    int64_t args[] = {P(handle), P(streamId)};
    return record(__func__, args, 2, NAN, NAN);
}

cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void *workspace, size_t workspaceSizeInBytes) {
    int64_t args[] = {P(handle), P(workspace), (int64_t)workspaceSizeInBytes};
    return record(__func__, args, 3, NAN, NAN);
}

#define GEMM(name, T)                                                                             \
    cublasStatus_t name(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, \
                        int m, int n, int k, const T *alpha, const T *A, int lda, const T *B,      \
                        int ldb, const T *beta, T *C, int ldc) {                                   \
        int64_t args[] = {P(handle), transa, transb, m, n, k, P(alpha), P(A), lda, P(B), ldb,     \
                          P(beta), P(C), ldc};                                                     \
        return record(__func__, args, 14, mapped(alpha) ? *alpha : NAN, mapped(beta) ? *beta : NAN); \
    }
GEMM(cublasSgemm_v2, float)
GEMM(cublasDgemm_v2, double)
