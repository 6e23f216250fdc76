/* The model streamer's Azure cache-provider ABI, version 1, as the streamer looks it up with
 * dlsym. Written from the contract in docs/streamer-abi.md; this header declares, it does not
 * implement. Both version symbols must return BS_CACHE_ABI_VERSION. */
#ifndef BS_CACHE_ABI_H
#define BS_CACHE_ABI_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define BS_CACHE_ABI_VERSION 1u

typedef uint32_t (*bs_cache_abi_version_fn)(void);
typedef ssize_t (*bs_blob_read_fn)(const char *account, const char *container, const char *blob,
                                   void *buf, size_t offset, size_t length, char *error_buf,
                                   size_t error_buf_size);
typedef void (*bs_shutdown_fn)(void);

#define BS_ABI_EXPORT __attribute__((visibility("default")))

#endif
