/* AdamW for the CPU in one pass over a flat fp32 partition: the clipping multiply, the moments, the
 * decoupled weight decay, the update, and the bf16 copy of the new weights, each element read and
 * written once. Called through ctypes by interbert/training/cpu_adamw.py, which compiles this file
 * with the system C compiler (no torch headers); the caller splits the range across threads.
 *
 * The arithmetic is that of torch.optim.AdamW(fused=True) on a CPU, operation for operation as its
 * vectorized body computes it (where it multiplies and adds, a fused multiply-add, as the compiler
 * builds it), so the results are bit-identical to it there; its scalar tail (the last elements of a
 * range that fill no vector) rounds without fused multiply-adds and may differ by an ulp. The
 * scalars are computed in double by the caller and rounded to float once; the elementwise math:
 *     g  = grad * grad_multiplier                     (the global-norm clipping, as a multiply)
 *     p  = p * (1 - lr * weight_decay)
 *     m  = m + (1 - beta1) * (g - m)                  (a lerp, one fused multiply-add; for
 *                                                      1 - beta1 >= 0.5 it is g - beta1 * (g - m))
 *     v  = v * beta2 + ((1 - beta2) * g) * g           (one fused multiply-add)
 *     p  = p - step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps),   step_size = lr / (1 - beta1^t)
 *     lp = bf16(p), rounded to nearest even (NaN stays NaN), as torch's .to(torch.bfloat16)
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define INTERBERT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define INTERBERT_CLONES
#endif

static inline uint16_t bf16_round(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    /* NaN: keep it a quiet NaN, as c10::BFloat16 does, instead of rounding its payload away */
    uint32_t nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
    return (uint16_t)(nan ? 0x7FC0u : rounded);
}

INTERBERT_CLONES
void interbert_adamw_step(float *param, const float *grad, float *exp_avg, float *exp_avg_sq, uint16_t *lp,
                          int64_t count, float grad_multiplier, float decay, float exp_avg_weight,
                          float beta2, float exp_avg_sq_weight, float step_size, float bias_correction2_sqrt,
                          float eps)
{
    int small_weight = fabsf(exp_avg_weight) < 0.5f;
    float lerp = small_weight ? exp_avg_weight : exp_avg_weight - 1.0f;
    for (int64_t i = 0; i < count; i++) {
        float g = grad[i] * grad_multiplier;
        float p = param[i] * decay;
        float m = fmaf(lerp, g - exp_avg[i], small_weight ? exp_avg[i] : g);
        float v = fmaf(exp_avg_sq_weight * g, g, exp_avg_sq[i] * beta2);
        float denom = sqrtf(v) / bias_correction2_sqrt + eps;
        p = p - step_size * m / denom;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        param[i] = p;
        if (lp)
            lp[i] = bf16_round(p);
    }
}
