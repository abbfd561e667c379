/* gemv_lab: the one-token affine-4 GEMV of the CUDA backend (gemv_body) against
 * variants of it, on Qwen3-30B-A3B's decode shapes, on the GPU box.
 *
 * Why: a decode layer's kernels take ~190 us on the H100 where llama.cpp's whole layer
 * takes ~68 us, and the GEMVs move weights at 180-540 GB/s of the card's ~3,300
 * (ncu, session 18). The variants keep gemv_body's arithmetic (lane L sums units L,
 * L+32, ... in order; the lanes by the same shuffle tree), so their outputs must be
 * bit-identical to it, and the lab checks that; what changes is how many rows a warp,
 * warps a block and units a lane in flight take. (Session 18 chose the backend's
 * form with it; since then the reference is that form, gemv_affine_one.)
 *
 * Weights rotate through copies larger than the L2 cache, as a decode step's
 * layers do; each kernel is timed over a CUDA graph of launches (no host in between).
 *
 * Build (here, compile-only): make build/cuda/gemv_lab; run there: build/cuda/gemv_lab
 * The backend's source is included so that the reference is its real kernel. */
#include "../../src/kernels/cuda/cuda_backend.cu"

#include <vector>

#define CK(x)                                                                                                          \
    do {                                                                                                               \
        cudaError_t e_ = (x);                                                                                          \
        if (e_ != cudaSuccess) {                                                                                       \
            fprintf(stderr, "gemv_lab: %s: %s (line %d)\n", #x, cudaGetErrorString(e_), __LINE__);                   \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

/* ---- the variants ---- */

/* The backend's affine_rows with R rows a warp, W warps a block, P units a lane in
 * flight (the backend: 2, 4, GV_AHEAD). Session 18 also measured a nibble widened
 * without I2F and 16-byte loads per lane (another summation order): both slower on
 * every shape (bench/RESULTS.md), so they are no longer here. */
template <int R, int W, int P> __device__ __forceinline__ void a4_body(const mm_shape &sh, const mm_item &it) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int r0 = (blockIdx.x * W + warp) * R, rows = it.rows;
    if (r0 >= rows) return;
    const uint8_t *wrow[R];
    const uint16_t *srow[R], *brow[R];
#pragma unroll
    for (int a = 0; a < R; a++) affine_row(sh, it, r0 + a < rows ? r0 + a : r0, wrow[a], srow[a], brow[a]);
    float v[R];
    affine_rows<FMT_A4, R, P>(sh, wrow, srow, brow, it.x, __ffs(sh.group_size) - 1, sh.qdtype == LM_DT_BF16, v);
#pragma unroll
    for (int a = 0; a < R; a++)
        if (lane == 0 && r0 + a < rows) it.y[r0 + a] = v[a];
}

template <int R, int W, int P> __global__ void __launch_bounds__(W * 32) k_a4_few(mm_shape sh, mm_few b) {
    a4_body<R, W, P>(sh, b.it[blockIdx.y]);
}

/* moe_routed's form: blockIdx.y the route, blockIdx.z the matrix */
template <int R, int W, int P>
__global__ void __launch_bounds__(W * 32) k_a4_routed(mm_shape sh, const mm_desc *tab, int mat0, const int32_t *sel,
                                                      const float *x, int x_div, float *y0, float *y1) {
    a4_body<R, W, P>(sh, routed_item(sh, tab, mat0, sel, x, x_div, y0, y1));
}

/* ---- the lab ---- */

static uint32_t rng = 12345;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}
static uint16_t bf16_of(float f) { /* truncation: any bf16 will do */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}

/* One matrix family: `copies` copies of `mats` matrices of rows x cols (affine 4, group 64, bf16). */
typedef struct {
    int rows, cols, mats, copies, rot; /* rot: launches before the weights repeat */
    size_t wbytes, sbytes; /* one matrix */
    uint8_t *w;
    uint16_t *s, *b;
} family;

static void family_make(family *f, int rows, int cols, int mats, size_t min_total) {
    f->rows = rows, f->cols = cols, f->mats = mats;
    f->wbytes = (size_t)rows * cols / 2;
    f->sbytes = (size_t)rows * (cols / 64) * 2;
    size_t one = (f->wbytes + 2 * f->sbytes) * mats;
    f->copies = (int)((min_total + one - 1) / one);
    if (f->copies < 1) f->copies = 1;
    f->rot = f->copies;
    size_t nm = (size_t)mats * f->copies;
    std::vector<uint8_t> hw(f->wbytes);
    std::vector<uint16_t> hs(f->sbytes / 2), hb(f->sbytes / 2);
    CK(cudaMalloc((void **)&f->w, f->wbytes * nm));
    CK(cudaMalloc((void **)&f->s, f->sbytes * nm));
    CK(cudaMalloc((void **)&f->b, f->sbytes * nm));
    for (size_t i = 0; i < hw.size(); i++) hw[i] = (uint8_t)rnd();
    for (size_t i = 0; i < hs.size(); i++) {
        hs[i] = bf16_of(((float)(rnd() % 1000) + 1.0f) * 1e-5f);
        hb[i] = bf16_of(-((float)(rnd() % 1000)) * 1e-4f);
    }
    for (size_t m = 0; m < nm; m++) { /* every copy the same bytes: outputs comparable across copies */
        CK(cudaMemcpy(f->w + m * f->wbytes, hw.data(), f->wbytes, cudaMemcpyHostToDevice));
        CK(cudaMemcpy((uint8_t *)f->s + m * f->sbytes, hs.data(), f->sbytes, cudaMemcpyHostToDevice));
        CK(cudaMemcpy((uint8_t *)f->b + m * f->sbytes, hb.data(), f->sbytes, cudaMemcpyHostToDevice));
    }
}
static const void *fw(const family *f, size_t m) { return f->w + m * f->wbytes; }
static const void *fs(const family *f, size_t m) { return (const uint8_t *)f->s + m * f->sbytes; }
static const void *fb(const family *f, size_t m) { return (const uint8_t *)f->b + m * f->sbytes; }

static mm_shape shape_of(const family *f) {
    mm_shape sh;
    sh.rows = f->rows, sh.cols = f->cols, sh.group_size = 64, sh.qdtype = LM_DT_BF16;
    sh.row_bytes = (size_t)f->cols / 2;
    return sh;
}

/* A launch of copy c: the lab's launcher for each kernel. */
typedef void (*launcher)(const family *f, int c, const float *x, float *y, const mm_desc *tab, const int32_t *sel,
                         cudaStream_t st);

/* dense: the f->mats items of copy c in one launch (q/k/v share rows = the most; here all rows alike) */
static mm_few dense_items(const family *f, int c, const float *x, float *y) {
    mm_few b;
    memset(&b, 0, sizeof b);
    for (int m = 0; m < f->mats; m++) {
        size_t k = (size_t)c * f->mats + m;
        b.it[m] = {fw(f, k), fs(f, k), fb(f, k), x, y + (size_t)m * f->rows, 1, f->rows};
    }
    return b;
}
static void ref_dense(const family *f, int c, const float *x, float *y, const mm_desc *, const int32_t *, cudaStream_t st) {
    dim3 grid((unsigned)((f->rows + GV_WARPS * GV_ROWS - 1) / (GV_WARPS * GV_ROWS)), (unsigned)f->mats);
    k_gemv_few<FMT_A4, 1><<<grid, GV_WARPS * 32, 0, st>>>(shape_of(f), dense_items(f, c, x, y));
}
template <int R, int W, int P>
static void new_dense(const family *f, int c, const float *x, float *y, const mm_desc *, const int32_t *, cudaStream_t st) {
    dim3 grid((unsigned)((f->rows + W * R - 1) / (W * R)), (unsigned)f->mats);
    k_a4_few<R, W, P><<<grid, W * 32, 0, st>>>(shape_of(f), dense_items(f, c, x, y));
}
/* routed: tab holds 128 experts x 3 matrices, all of f's shape; launch c routes its 8
 * tokens to the experts of set c (16 disjoint sets: 8 x 16 = 128) */
static int g_routed_z = 2;
static void ref_routed(const family *f, int c, const float *x, float *y, const mm_desc *tab, const int32_t *sel,
                       cudaStream_t st) {
    mm_shape sh = shape_of(f);
    dim3 grid((unsigned)((f->rows + GV_WARPS * GV_ROWS - 1) / (GV_WARPS * GV_ROWS)), 8, (unsigned)g_routed_z);
    k_gemv_routed<FMT_A4><<<grid, GV_WARPS * 32, 0, st>>>(sh, tab, 0, sel + 8 * c, x, 8, y,
                                                           y + 8 * (size_t)f->rows);
}
template <int R, int W, int P>
static void new_routed(const family *f, int c, const float *x, float *y, const mm_desc *tab, const int32_t *sel,
                       cudaStream_t st) {
    dim3 grid((unsigned)((f->rows + W * R - 1) / (W * R)), 8, (unsigned)g_routed_z);
    k_a4_routed<R, W, P><<<grid, W * 32, 0, st>>>(shape_of(f), tab, 0, sel + 8 * c, x, 8, y, y + 8 * (size_t)f->rows);
}

typedef struct {
    const char *name;
    launcher dense, routed;
} variant;

#define V(R, W, P) {"r" #R " w" #W " p" #P, new_dense<R, W, P>, new_routed<R, W, P>}
static const variant variants[] = {
    {"reference gemv_body", ref_dense, ref_routed},
    V(2, 4, 4), V(4, 4, 4), V(2, 8, 4), V(4, 2, 4), V(2, 4, 8), V(2, 4, 2), V(1, 4, 4), V(4, 2, 2),
};

/* us per launch over a graph of `reps` launches rotating copies; the output of copy 0 in y */
static double time_it(const variant *v, int routed, const family *f, const float *x, float *y, const mm_desc *tab,
                      const int32_t *sel, cudaStream_t st) {
    launcher L = routed ? v->routed : v->dense;
    const int reps = 40;
    for (int i = 0; i < 3; i++) L(f, i % f->rot, x, y, tab, sel, st);
    CK(cudaStreamSynchronize(st));
    CK(cudaGetLastError());
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < reps; i++) L(f, (i + 1) % f->rot, x, y, tab, sel, st);
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaGraphLaunch(ge, st));
    double best = 1e30;
    for (int k = 0; k < 5; k++) {
        CK(cudaEventRecord(a, st));
        CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        if (ms * 1e3 / reps < best) best = ms * 1e3 / reps;
    }
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    L(f, 0, x, y, tab, sel, st);
    CK(cudaStreamSynchronize(st));
    return best;
}

int main(void) {
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    const size_t L2X = (size_t)160 << 20; /* each family's copies together: well past the 50 MB L2 */
    struct {
        const char *name;
        int rows, cols, mats, routed, z;
    } shapes[] = {
        {"q/k/v as one (5120 x 2048)", 5120, 2048, 1, 0, 0},
        {"o (2048 x 4096)", 2048, 4096, 1, 0, 0},
        {"experts gate+up (8 routes x 2 x 768 x 2048)", 768, 2048, 3, 1, 2},
        {"experts down (8 routes x 2048 x 768)", 2048, 768, 3, 1, 1},
        {"lm_head (151936 x 2048)", 151936, 2048, 1, 0, 0},
    };
    float *x, *y, *yref;
    CK(cudaMalloc((void **)&x, 8 * 8192 * sizeof(float)));
    CK(cudaMalloc((void **)&y, (size_t)16 * 151936 * sizeof(float)));
    CK(cudaMalloc((void **)&yref, (size_t)16 * 151936 * sizeof(float)));
    {
        std::vector<float> hx(8 * 8192);
        for (auto &v : hx) v = ((float)(rnd() % 20001) - 10000.0f) * 1e-4f;
        CK(cudaMemcpy(x, hx.data(), hx.size() * 4, cudaMemcpyHostToDevice));
    }
    int32_t *sel;
    CK(cudaMalloc((void **)&sel, 128 * sizeof(int32_t)));
    {
        int32_t hs[128]; /* set c: experts c, c + 16, ..., ascending */
        for (int c = 0; c < 16; c++)
            for (int k = 0; k < 8; k++) hs[8 * c + k] = c + 16 * k;
        CK(cudaMemcpy(sel, hs, sizeof hs, cudaMemcpyHostToDevice));
    }
    int dev;
    cudaDeviceProp pr;
    CK(cudaGetDevice(&dev));
    CK(cudaGetDeviceProperties(&pr, dev));
    printf("device %s, %d SMs, L2 %d MB\n", pr.name, pr.multiProcessorCount, pr.l2CacheSize >> 20);
    for (auto &s : shapes) {
        family f;
        mm_desc *tab = NULL;
        if (s.routed) { /* 128 experts a copy, 3 matrices each (all of this shape) */
            family_make(&f, s.rows, s.cols, 128 * 3, 0);
            f.rot = 16;
            std::vector<mm_desc> h((size_t)f.copies * 128 * 3);
            for (size_t m = 0; m < h.size(); m++) h[m] = {fw(&f, m), fs(&f, m), fb(&f, m)};
            CK(cudaMalloc((void **)&tab, h.size() * sizeof(mm_desc)));
            CK(cudaMemcpy(tab, h.data(), h.size() * sizeof(mm_desc), cudaMemcpyHostToDevice));
            g_routed_z = s.z;
        } else {
            family_make(&f, s.rows, s.cols, s.mats, L2X);
        }
        size_t outs = s.routed ? (size_t)8 * s.z * s.rows : (size_t)s.mats * s.rows;
        double bytes = s.routed ? 8.0 * s.z * (double)(f.wbytes + 2 * f.sbytes)
                                : (double)s.mats * (double)(f.wbytes + 2 * f.sbytes);
        printf("\n%s: %.2f MB of weights a launch, %d launches before they repeat\n", s.name, bytes / 1e6, f.rot);
        std::vector<float> href(outs), hy(outs);
        for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
            CK(cudaMemset(y, 0xff, outs * 4));
            double us = time_it(&variants[v], s.routed, &f, x, y, tab, sel, st);
            CK(cudaMemcpy(v == 0 ? href.data() : hy.data(), y, outs * 4, cudaMemcpyDeviceToHost));
            size_t diff = 0;
            if (v) diff = memcmp(href.data(), hy.data(), outs * 4) != 0;
            size_t ndiff = 0;
            if (diff)
                for (size_t i = 0; i < outs; i++) ndiff += memcmp(&href[i], &hy[i], 4) != 0;
            printf("  %-22s %9.2f us  %7.0f GB/s  %s\n", variants[v].name, us, bytes / us / 1e3,
                   v == 0 ? "" : (diff ? "OUTPUTS DIFFER" : "bit-identical"));
            if (ndiff) {
                double md = 0, mx = 0;
                for (size_t i = 0; i < outs; i++) {
                    double d = fabs((double)href[i] - (double)hy[i]);
                    md = d > md ? d : md;
                    mx = fabs((double)href[i]) > mx ? fabs((double)href[i]) : mx;
                }
                printf("    %zu of %zu outputs differ; max |diff| %.3g of max |y| %.3g\n", ndiff, outs, md, mx);
            }
        }
        CK(cudaFree(f.w));
        CK(cudaFree(f.s));
        CK(cudaFree(f.b));
        if (tab) CK(cudaFree(tab));
    }
    return 0;
}
