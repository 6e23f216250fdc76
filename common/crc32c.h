/* CRC-32C (Castagnoli), the checksum every cached chunk block carries. Uses the SSE4.2
 * crc32 instruction when the CPU has it (checked once at run time), a table otherwise.
 * bs_crc32c(0, data, n) is the standard CRC-32C of data (check value of "123456789" is
 * 0xE3069283). It does nothing else. */
#ifndef BS_CRC32C_H
#define BS_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extends crc (0 to start) over n bytes. */
uint32_t bs_crc32c(uint32_t crc, const void *data, size_t n);

/* For tests and benchmarks: the table implementation whatever the CPU, and whether
 * bs_crc32c uses the CPU's instruction (1) or the table (0). */
uint32_t bs_crc32c_sw(uint32_t crc, const void *data, size_t n);
int bs_crc32c_hw(void);

#endif
