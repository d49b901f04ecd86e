/*
 * Per-function SysTick ticks on QEMU mps2-an386, for a library built with
 * -finstrument-functions (qcc eval --mcu-layers; not part of the shipped firmware).
 *
 * GCC calls __cyg_profile_func_enter / _exit around every function of the instrumented
 * source, inlined or not (this_fn is the function's address, which nm names). Each function's
 * calls and inclusive ticks are summed; at exit one line per function is printed:
 *   qcc-function 0xADDRESS CALLS TICKS
 * Under -icount shift=0 one tick is 40 instructions (main.c). The hooks read the counter as
 * late (enter) and as early (exit) as they can, so a function's ticks hold its own
 * instructions plus a few of the hooks'.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SYSTICK_SPAN 0x1000000u
#define MAX_FUNCTIONS 1024

extern volatile uint32_t mcu_systick_wraps;

static struct {
    void *fn;
    uint32_t calls;
    uint64_t ticks;
    uint64_t start;
} functions[MAX_FUNCTIONS];
static int used, registered;

__attribute__((no_instrument_function)) static uint64_t now(void)
{
    uint32_t wraps, count;
    do {
        wraps = mcu_systick_wraps;
        count = SYST_CVR;
    } while (wraps != mcu_systick_wraps);
    return (uint64_t)wraps * SYSTICK_SPAN + (SYSTICK_SPAN - 1u - count);
}

__attribute__((no_instrument_function)) static void print_functions(void)
{
    int i;
    for (i = 0; i < used; ++i) {
        printf("qcc-function %p %lu %llu\n", functions[i].fn, (unsigned long)functions[i].calls,
               (unsigned long long)functions[i].ticks);
    }
}

__attribute__((no_instrument_function)) static int slot(void *fn)
{
    int i;
    for (i = 0; i < used; ++i) {
        if (functions[i].fn == fn) {
            return i;
        }
    }
    if (used == MAX_FUNCTIONS) {
        return -1;
    }
    if (!registered) {
        registered = 1;
        atexit(print_functions);
    }
    functions[used].fn = fn;
    return used++;
}

__attribute__((no_instrument_function)) void __cyg_profile_func_enter(void *fn, void *site)
{
    int i = slot(fn);
    (void)site;
    if (i >= 0) {
        functions[i].start = now();
    }
}

__attribute__((no_instrument_function)) void __cyg_profile_func_exit(void *fn, void *site)
{
    uint64_t t = now();
    int i = slot(fn);
    (void)site;
    if (i >= 0) {
        functions[i].ticks += t - functions[i].start;
        functions[i].calls += 1u;
    }
}
