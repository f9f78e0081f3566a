/* Kernels for small CPU decode steps: matmuls, the steps between them, and a whole decoder
   layer per call (engine/native_build.py builds them, engine/native.py loads them).

   Why: a decode step multiplies a few rows by every weight of the model, so it costs what
   reading the weights from memory costs. torch's kernels read them at 6-10 GB/s for one
   row here; these stream each weight once, in the order it is stored, at about the
   memory's speed (17-18 GB/s on one core), and do the arithmetic for up to MAX_ROWS rows
   while a weight block is in registers.

   Both layouts group 4 output features into a block, so one sequential stream feeds four
   independent accumulators:
   - bf16: per block, per 32 inputs: 4 features x 32 bf16 (256 bytes). vdpbf16ps.
   - int4: per block, per pair of 32-input groups (64 inputs): 4 features x 32 bytes of
     codes (16 bytes a group; byte i holds input i in its low nibble, input i + 16 in its
     high one), then 8 fp16 scales (feature 0 group 0, feature 0 group 1, feature 1 ...)
     and 8 fp16 minimums in the same order: 160 bytes, Q4_1's 5 bits a weight.
     Rows are split per group of 32 into two int8 parts (x = scale * (128 high + low), ~15
     bits; one part alone, like llama.cpp's Q8 rows, moved logits visibly) so that vpdpbusd
     multiplies 64 code-input pairs at once; a weight is code * scale + minimum, so a
     group's dot product is
     scale * row_scale * sum(code * (128 high + low)) + minimum * sum(row).

   The matmuls split their output blocks over charbot_threads(n) threads ([model] threads
   sets n, as it sets torch's); with 2 threads one core's memory bandwidth is no longer the
   limit (a 4-bit step's matmuls: 5.7 -> 4.0 ms here).

   LoRA terms can be added in the same call, one adapter's for all rows or one per row:
   with A [rank, k] and B transposed [rank, n] in float32, y = x W.T + (x A.T) B.T, rounded
   to bf16 once.

   Needs AVX-512 F/BW/VL, BF16, VNNI and F16C; native.py checks the CPU first.
   Results are bf16, rounded to nearest even like torch's. */

#define _GNU_SOURCE
#include <immintrin.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#define MAX_ROWS 8
#define INT4_PAIR_BYTES 160

int charbot_kernels_version(void) { return 1; }

/* Per thread, grown as needed: the rows as two int8 parts (high, then low; see
   quantize_rows), and per (row, group pair) 16 floats: the two groups' scales (each 4
   times, in the accumulator lanes' order) then their sums. */
static __thread int8_t *row_codes;
static __thread float *row_scales;
static __thread size_t row_capacity;
static __thread float *lora_out;   /* rows x n: the LoRA terms of the current call */
static __thread size_t lora_capacity;

static inline uint16_t to_bf16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, 4);
    bits += 0x7fff + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

static inline __m512 load_bf16(const uint16_t *src) {
    __m256i raw = _mm256_loadu_si256((const __m256i *)src);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

static int quantize_rows(const uint16_t *x, int rows, int k) {
    size_t need = (size_t)rows * k;
    if (need > row_capacity) {
        free(row_codes);
        free(row_scales);
        row_codes = aligned_alloc(64, 2 * need);
        row_scales = aligned_alloc(64, need / 64 * 16 * sizeof(float));
        row_capacity = row_codes && row_scales ? need : 0;
        if (!row_capacity) return -1;
    }
    const int pairs = k / 64;
    for (int m = 0; m < rows; m++) {
        for (int p = 0; p < pairs; p++) {
            const uint16_t *src = x + (size_t)m * k + p * 64;
            float scale[2], sum[2];
            __m512i high[4], low[4];
            for (int h = 0; h < 2; h++) {
                __m512 a = load_bf16(src + h * 32), b = load_bf16(src + h * 32 + 16);
                float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
                float inverse = amax > 0 ? 127.0f / amax : 0.0f;
                scale[h] = amax / (127.0f * 128.0f);
                sum[h] = _mm512_reduce_add_ps(_mm512_add_ps(a, b));
                for (int half = 0; half < 2; half++) {
                    /* x * inverse = high + low / 128 with both in int8: ~15 bits, more
                       than the bf16 row has (one int8 part alone moved logits visibly) */
                    __m512 scaled = _mm512_mul_ps(half ? b : a, _mm512_set1_ps(inverse));
                    __m512 rounded = _mm512_roundscale_ps(scaled, _MM_FROUND_TO_NEAREST_INT);
                    __m512 rest = _mm512_mul_ps(_mm512_sub_ps(scaled, rounded), _mm512_set1_ps(128.0f));
                    high[h * 2 + half] = _mm512_cvtps_epi32(rounded);
                    low[h * 2 + half] = _mm512_cvtps_epi32(rest);
                }
            }
            /* the codes' byte order after unpacking: group 0 inputs 0-15, group 1 inputs
               0-15, group 0 inputs 16-31, group 1 inputs 16-31 */
            static const int order[4] = {0, 2, 1, 3};
            int8_t *dst = row_codes + 2 * ((size_t)m * k + p * 64);
            for (int i = 0; i < 4; i++) {
                _mm_storeu_si128((__m128i *)(dst + 16 * i), _mm512_cvtsepi32_epi8(high[order[i]]));
                _mm_storeu_si128((__m128i *)(dst + 64 + 16 * i), _mm512_cvtsepi32_epi8(low[order[i]]));
            }
            float *out = row_scales + ((size_t)m * pairs + p) * 16;
            for (int i = 0; i < 8; i += 2) {
                out[i] = scale[0];
                out[i + 1] = scale[1];
                out[8 + i] = sum[0];
                out[9 + i] = sum[1];
            }
        }
    }
    return 0;
}

/* lora_out[m, :] = (x[m] A.T) B.T; returns NULL without a LoRA (rank 0), or out of memory
   (the caller then fails the call). A negative rank: rows on different adapters, a and bt
   are arrays of one pointer per row (NULL: no term), each adapter's of rank -rank. */
static const float *lora_terms(const uint16_t *x, int rows, int k, int n, int rank,
                               const float *a, const float *bt, int *failed) {
    *failed = 0;
    if (rank == 0) return NULL;
    const int per_row = rank < 0;
    if (per_row) rank = -rank;
    size_t need = (size_t)rows * n;
    if (need > lora_capacity) {
        free(lora_out);
        lora_out = aligned_alloc(64, (need * sizeof(float) + 63) / 64 * 64);
        lora_capacity = lora_out ? need : 0;
        if (!lora_out) { *failed = 1; return NULL; }
    }
    for (int m = 0; m < rows; m++) {
        float *out = lora_out + (size_t)m * n;
        memset(out, 0, n * sizeof(float));
        const float *row_a = per_row ? ((const float *const *)a)[m] : a;
        const float *row_bt = per_row ? ((const float *const *)bt)[m] : bt;
        if (!row_a) continue;
        for (int r = 0; r < rank; r++) {
            const float *ar = row_a + (size_t)r * k;
            __m512 acc = _mm512_setzero_ps();
            for (int i = 0; i < k; i += 16)
                acc = _mm512_fmadd_ps(load_bf16(x + (size_t)m * k + i), _mm512_loadu_ps(ar + i), acc);
            const float t = _mm512_reduce_add_ps(acc);
            const __m512 tv = _mm512_set1_ps(t);
            const float *br = row_bt + (size_t)r * n;
            int j = 0;
            for (; j + 16 <= n; j += 16)
                _mm512_storeu_ps(out + j, _mm512_fmadd_ps(_mm512_loadu_ps(br + j), tv, _mm512_loadu_ps(out + j)));
            for (; j < n; j++) out[j] += br[j] * t;
        }
    }
    return lora_out;
}

static inline __attribute__((always_inline)) void int4_block_rows(
    const int rows, int k, int n, const uint8_t *w, uint16_t *y, const float *lora,
    const int8_t *row_codes, const float *row_scales, int begin, int end) {
    const int pairs = k / 64;
    const __m512i low = _mm512_set1_epi8(0x0f);
    /* lanes 0-3 and 8-11 hold group 0's partial sums, 4-7 and 12-15 group 1's */
    const __m512i pick0 = _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i two = _mm512_set1_epi32(2);
    const __m512i pick1 = _mm512_add_epi32(pick0, two);
    const __m512i pick2 = _mm512_add_epi32(pick1, two);
    const __m512i pick3 = _mm512_add_epi32(pick2, two);
    for (int j = begin; j < end; j += 4) {
        __m512 acc[MAX_ROWS][4], minimums[MAX_ROWS];
        for (int m = 0; m < rows; m++) {
            minimums[m] = _mm512_setzero_ps();
            for (int f = 0; f < 4; f++) acc[m][f] = _mm512_setzero_ps();
        }
        const uint8_t *block = w + (size_t)(j / 4) * pairs * INT4_PAIR_BYTES;
        for (int p = 0; p < pairs; p++, block += INT4_PAIR_BYTES) {
            __m512i codes[4];
            for (int f = 0; f < 4; f++) {
                __m256i packed = _mm256_loadu_si256((const __m256i *)(block + f * 32));
                __m512i both = _mm512_inserti64x4(
                    _mm512_castsi256_si512(packed), _mm256_srli_epi16(packed, 4), 1);
                codes[f] = _mm512_and_si512(both, low);
            }
            /* lanes 0-7 the features' scales, 8-15 their minimums */
            __m512 weights = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(block + 128)));
            for (int m = 0; m < rows; m++) {
                const int8_t *parts = row_codes + 2 * ((size_t)m * k + p * 64);
                __m512i high = _mm512_loadu_si512(parts), low = _mm512_loadu_si512(parts + 64);
                __m512 both = _mm512_mul_ps(
                    weights, _mm512_loadu_ps(row_scales + ((size_t)m * pairs + p) * 16));
                minimums[m] = _mm512_add_ps(minimums[m], both);
/* sum(code * (128 * high + low)): at most 4 * 15 * 16383 a lane, no overflow */
#define CHARBOT_DOT(f, pick)                                                                  \
    acc[m][f] = _mm512_fmadd_ps(                                                              \
        _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(                                               \
            _mm512_slli_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), codes[f], high), 7), \
            codes[f], low)),                                                                  \
        _mm512_permutexvar_ps(pick, both), acc[m][f])
                CHARBOT_DOT(0, pick0);
                CHARBOT_DOT(1, pick1);
                CHARBOT_DOT(2, pick2);
                CHARBOT_DOT(3, pick3);
#undef CHARBOT_DOT
            }
        }
        for (int m = 0; m < rows; m++) {
            float mins[16];
            _mm512_storeu_ps(mins, minimums[m]);
            for (int f = 0; f < 4; f++) {
                float dot = _mm512_reduce_add_ps(acc[m][f]) + mins[8 + 2 * f] + mins[9 + 2 * f];
                if (lora) dot += lora[(size_t)m * n + j + f];
                y[(size_t)m * n + j + f] = to_bf16(dot);
            }
        }
    }
}

static inline __attribute__((always_inline)) void bf16_block_rows(
    const int rows, int k, int n, const uint16_t *x, const uint16_t *w, uint16_t *y,
    const float *lora, int begin, int end) {
    const int chunks = k / 32;
    for (int j = begin; j < end; j += 4) {
        __m512 acc[MAX_ROWS][4];
        for (int m = 0; m < rows; m++)
            for (int f = 0; f < 4; f++) acc[m][f] = _mm512_setzero_ps();
        const uint16_t *block = w + (size_t)j * k;
        for (int c = 0; c < chunks; c++, block += 128) {
            __m512bh w0 = (__m512bh)_mm512_loadu_si512(block);
            __m512bh w1 = (__m512bh)_mm512_loadu_si512(block + 32);
            __m512bh w2 = (__m512bh)_mm512_loadu_si512(block + 64);
            __m512bh w3 = (__m512bh)_mm512_loadu_si512(block + 96);
            for (int m = 0; m < rows; m++) {
                __m512bh xv = (__m512bh)_mm512_loadu_si512(x + (size_t)m * k + c * 32);
                acc[m][0] = _mm512_dpbf16_ps(acc[m][0], xv, w0);
                acc[m][1] = _mm512_dpbf16_ps(acc[m][1], xv, w1);
                acc[m][2] = _mm512_dpbf16_ps(acc[m][2], xv, w2);
                acc[m][3] = _mm512_dpbf16_ps(acc[m][3], xv, w3);
            }
        }
        for (int m = 0; m < rows; m++)
            for (int f = 0; f < 4; f++) {
                float dot = _mm512_reduce_add_ps(acc[m][f]);
                if (lora) dot += lora[(size_t)m * n + j + f];
                y[(size_t)m * n + j + f] = to_bf16(dot);
            }
    }
}

/* Threads: the matmuls split their output blocks over the caller and charbot_threads(n) - 1
   workers. A worker spins for a short while after each part (a decode step's matmuls come
   tens of microseconds apart), then sleeps on a futex until the next one. */
#define MAX_WORKERS 15
#define SPIN_ROUNDS 20000

typedef void (*part_fn)(void *task, int part, int parts);

static struct {
    atomic_int generation, sleepers, stop;
    atomic_int done[MAX_WORKERS + 1];
    part_fn fn;
    void *task;
    int parts;
    int workers;
    int first; /* the generation when the workers were made: they wait for the next one */
    pthread_t threads[MAX_WORKERS];
} pool;

static void *worker_main(void *arg) {
    const int id = (int)(intptr_t)arg;
    int seen = pool.first; /* not the current one: a task may have been posted already */
    for (;;) {
        int now, spins = 0;
        while ((now = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen) {
            if (++spins < SPIN_ROUNDS) {
                _mm_pause();
                continue;
            }
            atomic_fetch_add(&pool.sleepers, 1);
            syscall(SYS_futex, &pool.generation, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
            atomic_fetch_sub(&pool.sleepers, 1);
            spins = 0;
        }
        seen = now;
        if (atomic_load(&pool.stop)) return NULL;
        pool.fn(pool.task, id, pool.parts);
        atomic_store_explicit(&pool.done[id], now, memory_order_release);
    }
}

static void stop_workers(void) {
    if (!pool.workers) return;
    atomic_store(&pool.stop, 1);
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
    syscall(SYS_futex, &pool.generation, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    for (int i = 0; i < pool.workers; i++) pthread_join(pool.threads[i], NULL);
    pool.workers = 0;
    atomic_store(&pool.stop, 0);
}

/* Use n threads in all (the caller's included); returns how many it has. */
int charbot_threads(int n) {
    if (n < 1) n = 1;
    if (n > MAX_WORKERS + 1) n = MAX_WORKERS + 1;
    if (n - 1 == pool.workers) return n;
    stop_workers();
    pool.first = atomic_load(&pool.generation);
    for (int i = 0; i < n - 1; i++) {
        if (pthread_create(&pool.threads[i], NULL, worker_main, (void *)(intptr_t)(i + 1))) break;
        pool.workers = i + 1;
    }
    return pool.workers + 1;
}

static void run_parts(part_fn fn, void *task) {
    if (!pool.workers) {
        fn(task, 0, 1);
        return;
    }
    pool.fn = fn;
    pool.task = task;
    pool.parts = pool.workers + 1;
    const int now = atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release) + 1;
    if (atomic_load(&pool.sleepers))
        syscall(SYS_futex, &pool.generation, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    fn(task, 0, pool.parts);
    for (int i = 1; i <= pool.workers; i++)
        while (atomic_load_explicit(&pool.done[i], memory_order_acquire) != now) _mm_pause();
}

struct matmul {
    int rows, k, n;
    const void *w;
    const uint16_t *x;
    uint16_t *y;
    const float *lora;
    const int8_t *codes;
    const float *scales;
    int int4;
};

#define CHARBOT_ROWS(call)                                                     \
    switch (t->rows) { /* a constant row count: accumulators stay in registers */ \
    case 1: call(1); break;                                                      \
    case 2: call(2); break;                                                      \
    case 3: call(3); break;                                                      \
    case 4: call(4); break;                                                      \
    case 5: call(5); break;                                                      \
    case 6: call(6); break;                                                      \
    case 7: call(7); break;                                                      \
    default: call(8); break;                                                     \
    }

static void matmul_part(void *task, int part, int parts) {
    const struct matmul *t = task;
    const int blocks = t->n / 4;
    const int begin = blocks * part / parts * 4, end = blocks * (part + 1) / parts * 4;
    if (t->int4) {
#define CHARBOT_INT4(r) \
    int4_block_rows(r, t->k, t->n, t->w, t->y, t->lora, t->codes, t->scales, begin, end)
        CHARBOT_ROWS(CHARBOT_INT4)
    } else {
#define CHARBOT_BF16(r) bf16_block_rows(r, t->k, t->n, t->x, t->w, t->y, t->lora, begin, end)
        CHARBOT_ROWS(CHARBOT_BF16)
    }
}

/* y[rows, n] = x[rows, k] @ W.T (+ the LoRA term where rank > 0) for a packed 4-bit W;
   0, or < 0 for arguments it does not take (the caller checked them) or no memory. */
int charbot_int4_linear(const uint16_t *x, int rows, int k, const uint8_t *w, int n, uint16_t *y,
                        int rank, const float *a, const float *bt) {
    if (rows < 1 || rows > MAX_ROWS || k % 64 || n % 4) return -2;
    int failed;
    const float *lora = lora_terms(x, rows, k, n, rank, a, bt, &failed);
    if (failed || quantize_rows(x, rows, k)) return -1;
    struct matmul task = {rows, k, n, w, x, y, lora, row_codes, row_scales, 1};
    run_parts(matmul_part, &task);
    return 0;
}

/* y[rows, n] = x[rows, k] @ W.T (+ the LoRA term) for a blocked bf16 W; 0, or < 0 as
   above. */
int charbot_bf16_linear(const uint16_t *x, int rows, int k, const uint16_t *w, int n, uint16_t *y,
                        int rank, const float *a, const float *bt) {
    if (rows < 1 || rows > MAX_ROWS || k % 32 || n % 4) return -2;
    int failed;
    const float *lora = lora_terms(x, rows, k, n, rank, a, bt, &failed);
    if (failed) return -1;
    struct matmul task = {rows, k, n, w, x, y, lora, NULL, NULL, 0};
    run_parts(matmul_part, &task);
    return 0;
}

/* The small steps between the matmuls, for decode steps: torch spends 2-50 us of dispatch
   on each of these one-row ops, which added up to half of a 4-bit step. */

static inline void store_bf16x16(uint16_t *dst, __m512 value) {
    _mm256_storeu_si256((__m256i *)dst, (__m256i)_mm512_cvtneps_pbh(value));
}

/* LlamaRMSNorm for rows of n (a multiple of 16): y = w * bf16(x * rsqrt(mean(x^2) + eps)),
   in float32 then rounded as transformers rounds. With a residual, x += residual first
   (in place, rounded to bf16: the decoder's h = h + o). */
int charbot_rms_norm(uint16_t *x, int rows, int n, const uint16_t *w, float eps, uint16_t *y,
                     const uint16_t *residual) {
    if (n % 16) return -2;
    for (int m = 0; m < rows; m++) {
        uint16_t *row = x + (size_t)m * n;
        __m512 squares = _mm512_setzero_ps();
        for (int i = 0; i < n; i += 16) {
            __m512 value = load_bf16(row + i);
            if (residual) {
                value = _mm512_add_ps(value, load_bf16(residual + (size_t)m * n + i));
                store_bf16x16(row + i, value);
                value = load_bf16(row + i);
            }
            squares = _mm512_fmadd_ps(value, value, squares);
        }
        const __m512 scale = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(squares) / n + eps));
        for (int i = 0; i < n; i += 16) {
            __m512 normed = _mm512_mul_ps(load_bf16(row + i), scale);
            normed = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(normed)), 16));
            store_bf16x16(y + (size_t)m * n + i, _mm512_mul_ps(load_bf16(w + i), normed));
        }
    }
    return 0;
}

static __thread float *attention_scores;
static __thread size_t scores_capacity;

/* One query position per row against its cache: out[b, h * dim] for query heads grouped
   by key/value head (groups of them share one), dim a multiple of 32. Strides are in
   elements; a position's key and value are dim contiguous values. valid (may be NULL: all):
   one byte per row and position, 0 for padding, which gets no weight. */
int charbot_decode_attention(const uint16_t *q, long q_row_stride, int batch, int kv_heads,
                             int groups, int dim, const uint16_t *k, const uint16_t *v,
                             long kv_row_stride, long kv_head_stride, int length, float scale,
                             uint16_t *out, const uint8_t *valid, long valid_stride) {
    if (dim % 32 || dim > 256 || groups > 16 || length < 1) return -2;
    size_t need = (size_t)groups * length;
    if (need > scores_capacity) {
        free(attention_scores);
        attention_scores = aligned_alloc(64, (need * sizeof(float) + 63) / 64 * 64);
        scores_capacity = attention_scores ? need : 0;
        if (!attention_scores) return -1;
    }
    const int chunks = dim / 32;
    for (int b = 0; b < batch; b++) {
        for (int kvh = 0; kvh < kv_heads; kvh++) {
            const uint16_t *keys = k + b * kv_row_stride + kvh * kv_head_stride;
            const uint16_t *values = v + b * kv_row_stride + kvh * kv_head_stride;
            const uint16_t *queries = q + b * q_row_stride + (size_t)kvh * groups * dim;
            float highest[16];
            for (int g = 0; g < groups; g++) highest[g] = -INFINITY;
            for (int t = 0; t < length; t++) {
                const uint16_t *key = keys + (size_t)t * dim;
                if (valid && !valid[b * valid_stride + t]) {
                    for (int g = 0; g < groups; g++) attention_scores[(size_t)g * length + t] = -INFINITY;
                    continue;
                }
                for (int g = 0; g < groups; g++) {
                    __m512 acc = _mm512_setzero_ps();
                    for (int c = 0; c < chunks; c++)
                        acc = _mm512_dpbf16_ps(acc,
                            (__m512bh)_mm512_loadu_si512(queries + g * dim + c * 32),
                            (__m512bh)_mm512_loadu_si512(key + c * 32));
                    float score = _mm512_reduce_add_ps(acc) * scale;
                    attention_scores[(size_t)g * length + t] = score;
                    if (score > highest[g]) highest[g] = score;
                }
            }
            for (int g = 0; g < groups; g++) {
                float *scores = attention_scores + (size_t)g * length, total = 0;
                for (int t = 0; t < length; t++) {
                    scores[t] = expf(scores[t] - highest[g]);
                    total += scores[t];
                }
                const float inverse = 1.0f / total;
                __m512 acc[16];
                const int parts = dim / 16;
                for (int i = 0; i < parts; i++) acc[i] = _mm512_setzero_ps();
                for (int t = 0; t < length; t++) {
                    const __m512 weight = _mm512_set1_ps(scores[t] * inverse);
                    const uint16_t *value = values + (size_t)t * dim;
                    for (int i = 0; i < parts; i++)
                        acc[i] = _mm512_fmadd_ps(load_bf16(value + i * 16), weight, acc[i]);
                }
                uint16_t *dst = out + (size_t)b * kv_heads * groups * dim + ((size_t)kvh * groups + g) * dim;
                for (int i = 0; i < parts; i++) store_bf16x16(dst + i * 16, acc[i]);
            }
        }
    }
    return 0;
}

static inline __m512 round_bf16(__m512 value) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(value)), 16));
}

/* Rotary embedding of one position per row, as the lean forward computes it in bf16
   (x * cos + swap_halves(x) * signed_sin, each product rounded), from the fused q/k/v
   output qkv [rows, (heads + 2 kv_heads) * dim]: the queries go to q_out [rows, heads *
   dim], keys and values into the cache buffers at column `column`. q_norm, k_norm (may be
   NULL): RMSNorm weights [dim] applied to each query or key head first (Qwen3's q/k norm). */
int charbot_rope_to_cache(const uint16_t *qkv, int rows, int heads, int kv_heads, int dim,
                          const uint16_t *cos, const uint16_t *sin, const int64_t *positions,
                          uint16_t *q_out, uint16_t *kbuf, uint16_t *vbuf, long row_stride,
                          long head_stride, int column, const uint16_t *q_norm,
                          const uint16_t *k_norm, float eps) {
    if (dim % 32 || ((q_norm || k_norm) && dim > 256)) return -2;
    uint16_t normed[256];
    const int half = dim / 2, width = (heads + 2 * kv_heads) * dim;
    for (int b = 0; b < rows; b++) {
        const uint16_t *row = qkv + (size_t)b * width;
        const uint16_t *c = cos + positions[b] * dim, *s = sin + positions[b] * dim;
        for (int h = 0; h < heads + kv_heads; h++) {
            const uint16_t *x = row + (size_t)h * dim;
            const uint16_t *norm = h < heads ? q_norm : k_norm;
            if (norm) { /* Qwen3: each head RMS-normed before the rotation (no residual: x is not written) */
                charbot_rms_norm((uint16_t *)x, 1, dim, norm, eps, normed, NULL);
                x = normed;
            }
            uint16_t *dst = h < heads ? q_out + ((size_t)b * heads + h) * dim
                                      : kbuf + b * row_stride + (h - heads) * head_stride + (size_t)column * dim;
            for (int i = 0; i < dim; i += 16) {
                const int swapped = i < half ? i + half : i - half;
                __m512 plain = round_bf16(_mm512_mul_ps(load_bf16(x + i), load_bf16(c + i)));
                __m512 turned = round_bf16(_mm512_mul_ps(load_bf16(x + swapped), load_bf16(s + i)));
                store_bf16x16(dst + i, _mm512_add_ps(plain, turned));
            }
        }
        for (int h = 0; h < kv_heads; h++)
            memcpy(vbuf + b * row_stride + h * head_stride + (size_t)column * dim,
                   row + (size_t)(heads + kv_heads + h) * dim, dim * sizeof(uint16_t));
    }
    return 0;
}

/* act[rows, inter] = bf16(silu(gate)) * up from the fused gate/up output [rows, 2 * inter]. */
int charbot_silu_mul(const uint16_t *gate_up, int rows, int inter, uint16_t *out) {
    if (inter % 16) return -2;
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int m = 0; m < rows; m++) {
        const uint16_t *gate = gate_up + (size_t)m * 2 * inter, *up = gate + inter;
        for (int i = 0; i < inter; i += 16) {
            __m512 g = load_bf16(gate + i);
            float lanes[16];
            _mm512_storeu_ps(lanes, _mm512_sub_ps(_mm512_setzero_ps(), g));
            for (int l = 0; l < 16; l++) lanes[l] = expf(lanes[l]);
            __m512 silu = round_bf16(_mm512_div_ps(g, _mm512_add_ps(one, _mm512_loadu_ps(lanes))));
            store_bf16x16(out + (size_t)m * inter + i, _mm512_mul_ps(silu, load_bf16(up + i)));
        }
    }
    return 0;
}

/* A whole decoder layer for one position per row (the lean forward's small steps): the calls above in a row, without returning to Python between them (each return
   cost ~5 us of ctypes and tensor set-up, ~10 a layer). */

struct charbot_projection {
    const void *weight; /* NativeInt4 blob or BlockedBf16 blocks */
    int out_features, in_features, int4;
    int rank; /* one adapter's LoRA term, or 0; < 0: per row (see lora_terms) */
    const float *a, *bt;
};

struct charbot_layer {
    struct charbot_projection qkv, o, gate_up, down;
    const uint16_t *input_norm, *post_norm, *cos, *sin;
    float eps, scale;
    int heads, kv_heads, dim, hidden, inter;
    const uint16_t *qkv_bias, *q_norm, *k_norm; /* NULL where the family has none */
};

/* y[rows, n] += bias[n], rounded to bf16 (as torch adds a bias to a bf16 output); n a
   multiple of 16. */
static void add_bias(uint16_t *y, int rows, int n, const uint16_t *bias) {
    for (int m = 0; m < rows; m++)
        for (int i = 0; i < n; i += 16) {
            uint16_t *dst = y + (size_t)m * n + i;
            store_bf16x16(dst, _mm512_add_ps(load_bf16(dst), load_bf16(bias + i)));
        }
}

static int project(const struct charbot_projection *p, const uint16_t *x, int rows, uint16_t *y) {
    if (p->int4)
        return charbot_int4_linear(x, rows, p->in_features, p->weight, p->out_features, y,
                                   p->rank, p->a, p->bt);
    return charbot_bf16_linear(x, rows, p->in_features, p->weight, p->out_features, y, p->rank,
                               p->a, p->bt);
}

/* h [rows, hidden] += pending (if any), then the layer; its MLP output goes to `out` (the
   next layer's pending residual); valid as for charbot_decode_attention. scratch: rows * (hidden + (heads + 2 kv_heads) * dim +
   2 * heads * dim + 3 * inter + hidden) bf16 values. */
int charbot_decode_layer(const struct charbot_layer *layer, uint16_t *h, const uint16_t *pending,
                         int rows, const int64_t *positions, uint16_t *kbuf, uint16_t *vbuf,
                         long row_stride, long head_stride, int column, uint16_t *out,
                         uint16_t *scratch, const uint8_t *valid, long valid_stride) {
    const int heads = layer->heads, kv = layer->kv_heads, dim = layer->dim;
    uint16_t *x = scratch;
    uint16_t *qkv = x + (size_t)rows * layer->hidden;
    uint16_t *q = qkv + (size_t)rows * (heads + 2 * kv) * dim;
    uint16_t *attended = q + (size_t)rows * heads * dim;
    uint16_t *o = attended + (size_t)rows * heads * dim;
    uint16_t *gate_up = o + (size_t)rows * layer->hidden;
    uint16_t *act = gate_up + (size_t)rows * 2 * layer->inter;
    int status = charbot_rms_norm(h, rows, layer->hidden, layer->input_norm, layer->eps, x, pending);
    if (!status) status = project(&layer->qkv, x, rows, qkv);
    if (!status && layer->qkv_bias) add_bias(qkv, rows, (heads + 2 * kv) * dim, layer->qkv_bias);
    if (!status)
        status = charbot_rope_to_cache(qkv, rows, heads, kv, dim, layer->cos, layer->sin, positions,
                                       q, kbuf, vbuf, row_stride, head_stride, column,
                                       layer->q_norm, layer->k_norm, layer->eps);
    if (!status)
        status = charbot_decode_attention(q, (long)heads * dim, rows, kv, heads / kv, dim, kbuf,
                                          vbuf, row_stride, head_stride, column + 1, layer->scale,
                                          attended, valid, valid_stride);
    if (!status) status = project(&layer->o, attended, rows, o);
    if (!status) status = charbot_rms_norm(h, rows, layer->hidden, layer->post_norm, layer->eps, x, o);
    if (!status) status = project(&layer->gate_up, x, rows, gate_up);
    if (!status) status = charbot_silu_mul(gate_up, rows, layer->inter, act);
    if (!status) status = project(&layer->down, act, rows, out);
    return status;
}
