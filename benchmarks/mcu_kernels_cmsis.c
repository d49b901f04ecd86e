/*
 * One layer through CMSIS-NN on QEMU mps2-an386, for benchmarks/mcu_kernels.py: the measuring
 * stick beside qcc's kernel of the same shape. Built with the same flags as qcc's firmware,
 * linked with backends/c/mcu's startup and linker script; CMSIS-NN picks its own best kernel
 * for the shape (the *_wrapper_s8 entry points; arm_fully_connected_s8 for a Gemm).
 *
 * The layer comes from -D flags: KIND (0 conv, 1 depthwise conv, 2 fully connected), IN_H,
 * IN_W, IN_C, OUT_H, OUT_W, OUT_C, K_H, K_W, S_H, S_W, P_H, P_W. Data are pseudo-random codes;
 * the instruction count does not depend on them. Prints "ticks T status S buffer B".
 */
#include <stdint.h>
#include <stdio.h>

#include "arm_nnfunctions.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SYSTICK_SPAN 0x1000000u

extern volatile uint32_t mcu_systick_wraps;

#if KIND == 0
#define FILTER_SIZE (OUT_C * K_H * K_W * IN_C)
#elif KIND == 1
#define FILTER_SIZE (OUT_C * K_H * K_W)
#else
#define FILTER_SIZE (OUT_C * IN_C)
#endif
#define BUFFER_BYTES 65536

static int8_t input[IN_H * IN_W * IN_C];
static int8_t output[OUT_H * OUT_W * OUT_C];
static int8_t filter[FILTER_SIZE];
static int32_t bias[OUT_C], mult[OUT_C], shift[OUT_C];
static int64_t buffer[BUFFER_BYTES / 8];

static uint32_t seed = 1u;

static int8_t next_code(void)
{
    seed = seed * 1664525u + 1013904223u;
    return (int8_t)(seed >> 24);
}

static uint64_t ticks(void)
{
    uint32_t wraps, count;
    do {
        wraps = mcu_systick_wraps;
        count = SYST_CVR;
    } while (wraps != mcu_systick_wraps);
    return (uint64_t)wraps * SYSTICK_SPAN + (SYSTICK_SPAN - 1u - count);
}

int main(void)
{
    cmsis_nn_context ctx = {buffer, BUFFER_BYTES};
    const cmsis_nn_dims in = {1, IN_H, IN_W, IN_C};
    const cmsis_nn_dims out = {1, OUT_H, OUT_W, OUT_C};
    const cmsis_nn_dims bias_dims = {1, 1, 1, OUT_C};
    cmsis_nn_per_channel_quant_params quant = {mult, shift};
    int32_t i, needed = 0;
    arm_cmsis_nn_status status;
    uint64_t t0, t1;
    for (i = 0; i < (int32_t)sizeof input; ++i) {
        input[i] = next_code();
    }
    for (i = 0; i < FILTER_SIZE; ++i) {
        filter[i] = next_code();
    }
    for (i = 0; i < OUT_C; ++i) {
        bias[i] = next_code() * 16;
        mult[i] = 1288490189; /* 0.6 * 2^31 */
        shift[i] = -9;
    }
    SYST_RVR = SYSTICK_SPAN - 1u;
    SYST_CVR = 0u;
    SYST_CSR = 7u;
    while (SYST_CVR == 0u) {
    }
    mcu_systick_wraps = 0u;
#if KIND == 0
    {
        const cmsis_nn_conv_params params = {128, -128, {S_W, S_H}, {P_W, P_H}, {1, 1},
                                             {-128, 127}};
        const cmsis_nn_dims filter_dims = {OUT_C, K_H, K_W, IN_C};
        needed = arm_convolve_wrapper_s8_get_buffer_size(&params, &in, &filter_dims, &out);
        t0 = ticks();
        status = arm_convolve_wrapper_s8(&ctx, &params, &quant, &in, input, &filter_dims, filter,
                                         &bias_dims, bias, &out, output);
        t1 = ticks();
    }
#elif KIND == 1
    {
        const cmsis_nn_dw_conv_params params = {128, -128, 1, {S_W, S_H}, {P_W, P_H}, {1, 1},
                                                {-128, 127}};
        const cmsis_nn_dims filter_dims = {1, K_H, K_W, OUT_C};
        needed = arm_depthwise_conv_wrapper_s8_get_buffer_size(&params, &in, &filter_dims, &out);
        t0 = ticks();
        status = arm_depthwise_conv_wrapper_s8(&ctx, &params, &quant, &in, input, &filter_dims,
                                               filter, &bias_dims, bias, &out, output);
        t1 = ticks();
    }
#else
    {
        const cmsis_nn_fc_params params = {128, 0, -128, {-128, 127}};
        const cmsis_nn_per_tensor_quant_params tensor_quant = {1288490189, -9};
        const cmsis_nn_dims filter_dims = {IN_C, 1, 1, OUT_C};
        const cmsis_nn_dims fc_in = {1, 1, 1, IN_C};
        const cmsis_nn_dims fc_out = {1, 1, 1, OUT_C};
        needed = arm_fully_connected_s8_get_buffer_size(&filter_dims);
        /* the kernel sums are computed ahead of time (TFLite Micro's Prepare), outside the count */
        arm_vector_sum_s8((int32_t *)(void *)buffer, IN_C, OUT_C, filter, 128, 0, bias);
        t0 = ticks();
        status = arm_fully_connected_s8(&ctx, &params, &tensor_quant, &fc_in, input, &filter_dims,
                                        filter, &bias_dims, bias, &fc_out, output);
        t1 = ticks();
    }
#endif
    printf("ticks %lu status %d buffer %ld\n", (unsigned long)(t1 - t0), (int)status,
           (long)needed);
    return needed > BUFFER_BYTES || status != ARM_CMSIS_NN_SUCCESS;
}
