/*
 * Startup for QEMU's MPS2 AN386 (Cortex-M4F), linked with mps2_an386.ld and newlib's
 * rdimon.specs (semihosting: stdio and files on the host through QEMU -semihosting).
 *
 * Reset: copy .data from flash, zero .bss, enable the FPU (CP10/CP11), open the semihosting
 * handles, run main and exit with its status. A fault or stray interrupt exits QEMU with a
 * failure status instead of hanging. SysTick counts its wraps for mcu_ticks() (main.c).
 */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t __etext, __data_start__, __data_end__, __bss_start__, __bss_end__;
extern uint32_t __stack_top__;
extern int main(void);
extern void initialise_monitor_handles(void);

void Reset_Handler(void);
void Fault_Handler(void);
void SysTick_Handler(void);

volatile uint32_t mcu_systick_wraps;

typedef void (*handler_t)(void);

/* The vector table: the initial stack pointer, then the 15 Cortex-M exception handlers. */
__attribute__((section(".vectors"), used)) static const struct {
    uint32_t *stack;
    handler_t handlers[15];
} vectors = {
    &__stack_top__,
    {Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
     0, 0, 0, 0, Fault_Handler, Fault_Handler, 0, Fault_Handler, SysTick_Handler},
};

void Reset_Handler(void)
{
    uint32_t *src = &__etext, *dst = &__data_start__;
    while (dst < &__data_end__) {
        *dst++ = *src++;
    }
    for (dst = &__bss_start__; dst < &__bss_end__;) {
        *dst++ = 0;
    }
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20; /* CPACR: full access to CP10, CP11 */
    __asm volatile("dsb\n\tisb");
    initialise_monitor_handles();
    exit(main());
}

void Fault_Handler(void)
{
    /* semihosting SYS_EXIT (0x18) with a reason other than ApplicationExit: QEMU exits 1 */
    __asm volatile("mov r0, #0x18\n\tldr r1, =0x20023\n\tbkpt 0xab" ::: "r0", "r1");
    for (;;) {
    }
}

void SysTick_Handler(void)
{
    ++mcu_systick_wraps;
}

/* newlib's __libc_init_array / __libc_fini_array call these; C needs nothing here */
void _init(void);
void _fini(void);
void _init(void)
{
}
void _fini(void)
{
}
