/* Reset for a Cortex-M4F (the MPS2 AN386 board, or a real part with its memory in the linker script): enable
 * the FPU, copy .data from flash, then newlib's _start (bss, semihosting argv, main, exit). */
#include <stdint.h>
#include <string.h>

extern uint32_t _estack, _sidata, _sdata, _edata;
extern void _start(void);

void Reset_Handler(void) {
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;  /* CPACR: full access to CP10 and CP11 (the FPU) */
    __asm volatile("dsb\n\tisb");
    memcpy(&_sdata, &_sidata, (size_t)((uint8_t *)&_edata - (uint8_t *)&_sdata));
    _start();
    for (;;) {}
}

static void Fault_Handler(void) {
    for (;;) {}
}

__attribute__((section(".isr_vector"), used)) const void *const vector_table[16] = {
    &_estack, (const void *)Reset_Handler, (const void *)Fault_Handler, (const void *)Fault_Handler,
    (const void *)Fault_Handler, (const void *)Fault_Handler, (const void *)Fault_Handler,
};
