/* libFuzzer target: the chunk file trailer parser (agent/trailer.h). The input is a whole
 * chunk file as the restart scan finds it on disk (untrusted: anything with write access to
 * the disk may have written it): the foot is read from its end, then the trailer. What is
 * accepted must be exactly what bs_trailer_build writes for the parsed fields. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "trailer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < BS_TRAILER_FOOT)
        return 0;
    uint32_t tlen = 0;
    if (bs_trailer_foot(data + size - BS_TRAILER_FOOT, size, &tlen))
        return 0;
    if (tlen > size)
        abort(); /* the foot check bounds the trailer by the file */
    const unsigned char *t = data + size - tlen;
    struct bs_trailer tr;
    if (bs_trailer_parse(t, tlen, size, &tr))
        return 0;
    if (tr.data_len + tlen != size || tr.enc < t || tr.enc + tr.enclen > t + tlen ||
        tr.crcs + 4 * (size_t)tr.nblocks > t + tlen || tr.sha256 < tr.crcs ||
        tr.sha256 + BS_CHUNK_SHA256 > t + tlen - BS_TRAILER_FOOT)
        abort();
    uint32_t *crcs = malloc(4 * (size_t)tr.nblocks + 1);
    unsigned char *again = malloc(tlen);
    if (!crcs || !again)
        abort();
    for (uint32_t i = 0; i < tr.nblocks; i++)
        crcs[i] = bs_get_le32(tr.crcs + 4 * (size_t)i);
    if (bs_trailer_len(tr.enclen, tr.nblocks) != tlen)
        abort();
    bs_trailer_build(again, tr.block_size, tr.data_len, tr.index, tr.enc, tr.enclen, crcs,
                     tr.nblocks, tr.sha256);
    if (memcmp(again, t, tlen) != 0)
        abort();
    free(crcs);
    free(again);
    return 0;
}
