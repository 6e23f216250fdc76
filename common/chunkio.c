/* Chunk bytes: full reads and block checks (see chunkio.h). */
#include "chunkio.h"

#include <errno.h>
#include <unistd.h>

#include "crc32c.h"

int bs_pread_full(int fd, void *buf, size_t n, uint64_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            return -EIO;
        got += (size_t)r;
    }
    return 0;
}

int bs_chunk_verify(const uint32_t *crcs, uint32_t ncrcs, uint32_t block_size, uint64_t chunk_len,
                    uint64_t off, const void *data, size_t len)
{
    if (block_size == 0 || (block_size & (block_size - 1)) || (!crcs && ncrcs) || (!data && len) ||
        ncrcs != chunk_len / block_size + (chunk_len % block_size != 0))
        return -EINVAL;
    if (off > chunk_len || len > chunk_len - off || off % block_size ||
        ((off + len) % block_size && off + len != chunk_len))
        return -EINVAL;
    const unsigned char *p = data;
    for (uint64_t i = off / block_size; len; i++) {
        size_t n = len < block_size ? len : block_size;
        if (bs_crc32c(0, p, n) != crcs[i])
            return -EBADMSG;
        p += n;
        len -= n;
    }
    return 0;
}
