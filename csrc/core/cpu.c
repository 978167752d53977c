/* cpu.c — what the CPU can do: its widest SIMD and its FMA peak.
 *
 * The benchmark (examples/benchmark.lua) prints the machine's FMA peak next
 * to the GFLOP/s a U-Net step achieves, so each row shows how close to the
 * limit it runs. The peak is measured, not computed from a spec sheet: each
 * thread runs a loop of independent fused multiply-adds on its own, long
 * enough to hide the FMA latency (12 accumulators: 4-cycle latency x 2 FMA
 * ports needs 8 in flight), with nothing loaded from memory.
 *
 * The vector kernels are compiled for their ISA with target attributes and
 * picked at run time, so the library itself needs no -mavx flags and runs on
 * any x86-64 (and, with the scalar loop only, elsewhere).
 */
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "../df.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define DF_HAVE_X86_KERNELS 1
#include <immintrin.h>
#else
#define DF_HAVE_X86_KERNELS 0
#endif

#define MAX_FMA_THREADS 256
#define ACCUMULATORS 12
/* iterations between two looks at the clock (12 x 4096 FMAs: well under a millisecond) */
#define CHUNK_ITERATIONS 4096

/* acc = acc * MUL + ADD converges to 1 (never overflows nor goes subnormal) */
#define MUL 0.999999f
#define ADD 0.000001f

typedef enum { SIMD_SCALAR, SIMD_AVX2, SIMD_AVX512F } simd_kind;

static const struct {
  const char *name;
  int lanes; /* floats per FMA */
} simd_info[] = {[SIMD_SCALAR] = {"scalar", 1}, [SIMD_AVX2] = {"avx2", 8}, [SIMD_AVX512F] = {"avx512f", 16}};

static bool cpu_has(simd_kind kind) {
  if (kind == SIMD_SCALAR) return true;
#if DF_HAVE_X86_KERNELS
  __builtin_cpu_init();
  if (kind == SIMD_AVX512F) return __builtin_cpu_supports("avx512f");
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

static simd_kind widest_simd(void) {
  if (cpu_has(SIMD_AVX512F)) return SIMD_AVX512F;
  if (cpu_has(SIMD_AVX2)) return SIMD_AVX2;
  return SIMD_SCALAR;
}

const char *df_cpu_simd(void) { return simd_info[widest_simd()].name; }

/* Each kernel runs `iterations` rounds of ACCUMULATORS independent FMAs and
 * returns the sum of the accumulators, which the caller keeps, so the loop
 * can't be optimised away. The scalar loop is a multiply and an add (still 2
 * flops; the compiler may vectorise it with the baseline SSE2): the fallback
 * for CPUs without FMA, the count of flops stays exact either way. */
static float fma_scalar(int64_t iterations) {
  float acc[ACCUMULATORS];
  for (int j = 0; j < ACCUMULATORS; j++) acc[j] = (float)j;
  for (int64_t i = 0; i < iterations; i++)
    for (int j = 0; j < ACCUMULATORS; j++) acc[j] = acc[j] * MUL + ADD;
  float sum = 0;
  for (int j = 0; j < ACCUMULATORS; j++) sum += acc[j];
  return sum;
}

#if DF_HAVE_X86_KERNELS
__attribute__((target("avx2,fma"))) static float fma_avx2(int64_t iterations) {
  const __m256 mul = _mm256_set1_ps(MUL), add = _mm256_set1_ps(ADD);
  __m256 acc[ACCUMULATORS];
  for (int j = 0; j < ACCUMULATORS; j++) acc[j] = _mm256_set1_ps((float)j);
  for (int64_t i = 0; i < iterations; i++)
    for (int j = 0; j < ACCUMULATORS; j++) acc[j] = _mm256_fmadd_ps(acc[j], mul, add);
  __m256 total = acc[0];
  for (int j = 1; j < ACCUMULATORS; j++) total = _mm256_add_ps(total, acc[j]);
  float lanes[8];
  _mm256_storeu_ps(lanes, total);
  float sum = 0;
  for (int l = 0; l < 8; l++) sum += lanes[l];
  return sum;
}

__attribute__((target("avx512f"))) static float fma_avx512f(int64_t iterations) {
  const __m512 mul = _mm512_set1_ps(MUL), add = _mm512_set1_ps(ADD);
  __m512 acc[ACCUMULATORS];
  for (int j = 0; j < ACCUMULATORS; j++) acc[j] = _mm512_set1_ps((float)j);
  for (int64_t i = 0; i < iterations; i++)
    for (int j = 0; j < ACCUMULATORS; j++) acc[j] = _mm512_fmadd_ps(acc[j], mul, add);
  __m512 total = acc[0];
  for (int j = 1; j < ACCUMULATORS; j++) total = _mm512_add_ps(total, acc[j]);
  return _mm512_reduce_add_ps(total);
}
#endif

static float run_kernel(simd_kind kind, int64_t iterations) {
#if DF_HAVE_X86_KERNELS
  if (kind == SIMD_AVX512F) return fma_avx512f(iterations);
  if (kind == SIMD_AVX2) return fma_avx2(iterations);
#endif
  return fma_scalar(iterations);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
  simd_kind kind;
  double seconds;
  /* out */
  int64_t iterations;
  double start, end;
  float sink; /* the kernels' results, so none is dead code */
} fma_job;

static void *fma_thread(void *arg) {
  fma_job *job = arg;
  job->start = now();
  double stop = job->start + job->seconds, t;
  do {
    job->sink += run_kernel(job->kind, CHUNK_ITERATIONS);
    job->iterations += CHUNK_ITERATIONS;
    t = now();
  } while (t < stop);
  job->end = t;
  return NULL;
}

df_status df_fma_peak(int threads, double seconds, const char *simd, double *gflops) {
  if (!gflops) return df_error(DF_EINVAL, "fma_peak: no place for the result");
  if (threads < 1 || threads > MAX_FMA_THREADS)
    return df_error(DF_EINVAL, "fma_peak: threads must be 1 to %d, got %d", MAX_FMA_THREADS, threads);
  if (!(seconds > 0.0 && seconds <= 60.0))
    return df_error(DF_EINVAL, "fma_peak: seconds must be > 0 and <= 60, got %g", seconds);
  simd_kind kind;
  if (!simd || strcmp(simd, "best") == 0) {
    kind = widest_simd();
  } else if (strcmp(simd, "avx512f") == 0) {
    kind = SIMD_AVX512F;
  } else if (strcmp(simd, "avx2") == 0) {
    kind = SIMD_AVX2;
  } else if (strcmp(simd, "scalar") == 0) {
    kind = SIMD_SCALAR;
  } else {
    return df_error(DF_EINVAL, "fma_peak: simd must be \"best\", \"avx512f\", \"avx2\" or \"scalar\", got \"%s\"", simd);
  }
  if (!cpu_has(kind)) return df_error(DF_EINVAL, "fma_peak: this CPU has no %s (its widest is %s)",
                                      simd_info[kind].name, df_cpu_simd());

  fma_job *jobs = df_calloc((size_t)threads, sizeof *jobs);
  pthread_t *ids = df_calloc((size_t)threads, sizeof *ids);
  if (!jobs || !ids) {
    df_free(jobs);
    df_free(ids);
    return df_error(DF_ENOMEM, "fma_peak: out of memory for %d threads", threads);
  }
  /* threads 1.. run on their own pthreads, thread 0 on the caller's */
  int started = 1;
  for (int i = 0; i < threads; i++) {
    jobs[i].kind = kind;
    jobs[i].seconds = seconds;
  }
  for (; started < threads; started++)
    if (pthread_create(&ids[started], NULL, fma_thread, &jobs[started]) != 0) break;
  if (started == threads) fma_thread(&jobs[0]);
  for (int i = 1; i < started; i++) pthread_join(ids[i], NULL);
  df_status st = DF_OK;
  if (started < threads) {
    st = df_error(DF_ENOMEM, "fma_peak: could not start thread %d of %d", started + 1, threads);
  } else {
    /* all the flops over the wall time from the first start to the last end */
    double first = jobs[0].start, last = jobs[0].end, flops = 0;
    float sink = 0;
    for (int i = 0; i < threads; i++) {
      if (jobs[i].start < first) first = jobs[i].start;
      if (jobs[i].end > last) last = jobs[i].end;
      flops += (double)jobs[i].iterations * ACCUMULATORS * simd_info[kind].lanes * 2.0;
      sink += jobs[i].sink;
    }
    /* the accumulators converge to 1: a non-finite sum means a broken kernel */
    if (!isfinite(sink) || !(last > first)) st = df_error(DF_EINVAL, "fma_peak: the FMA loop gave no usable timing");
    else *gflops = flops / (last - first) / 1e9;
  }
  df_free(jobs);
  df_free(ids);
  return st;
}
