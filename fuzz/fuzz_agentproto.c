/* libFuzzer target: the agent's and the shim's decoders of protocol messages (untrusted: any
 * local process can write to the agent's socket, and the shim reads what the agent answers). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agentproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct bs_chunk_req req;
    static struct bs_chunk_reply rep;
    struct bs_hello h;
    char err[256], op[16];
    const char *s = (const char *)data;
    bs_proto_decode_op(s, size, op, sizeof(op), err, sizeof(err));
    if (bs_proto_decode_req(s, size, &req, err, sizeof(err)) == 0) {
        /* What was accepted must round-trip and never carry a line break in the secret. */
        if (strpbrk(req.auth.secret, "\r\n"))
            abort();
        char *json = bs_proto_encode_req(&req);
        if (!json)
            abort();
        free(json);
    }
    if (bs_proto_decode_reply(s, size, &rep, err, sizeof(err)) == 0 &&
        (rep.status == BS_CHUNK_HIT || rep.status == BS_CHUNK_FILLED) &&
        rep.ncrcs != (rep.length + rep.block_size - 1) / rep.block_size)
        abort();
    bs_proto_decode_hello(s, size, &h, err, sizeof(err));
    return 0;
}
