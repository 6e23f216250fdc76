/* libFuzzer target: frame reading as the shim reads the agent's answers (and the agent reads
 * any local process's requests): the input is written to one end of a Unix socketpair,
 * optionally with a descriptor attached, then every frame bs_proto_recv takes from the other
 * end is decoded as a reply, a hello and an op. Nothing may crash, leak a descriptor or
 * accept a frame over the size limit. */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "agentproto.h"
#include "clock.h"

#define MAX_INPUT (BS_PROTO_MAX_FRAME + 64)

/* Writes data into s, the first byte's worth with a descriptor attached when asked. */
static void feed(int s, const uint8_t *data, size_t size, int with_fd)
{
    size_t off = 0;
    if (with_fd && size) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        union {
            struct cmsghdr h;
            char buf[CMSG_SPACE(sizeof(int))];
        } ctl;
        memset(&ctl, 0, sizeof(ctl));
        struct iovec v = {(void *)data, 1};
        struct msghdr m = {0};
        m.msg_iov = &v;
        m.msg_iovlen = 1;
        m.msg_control = ctl.buf;
        m.msg_controllen = sizeof(ctl.buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
        if (fd >= 0 && sendmsg(s, &m, MSG_NOSIGNAL) == 1)
            off = 1;
        if (fd >= 0)
            close(fd);
    }
    while (off < size) {
        ssize_t n = send(s, data + off, size - off, MSG_NOSIGNAL);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct bs_chunk_reply rep;
    if (size < 1 || size > MAX_INPUT)
        return 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return 0;
    int buf = 4 * MAX_INPUT;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
    feed(sv[0], data + 1, size - 1, data[0] & 1);
    shutdown(sv[0], SHUT_WR);
    uint64_t deadline = bs_now_ns() + 1000000000ull;
    for (int frames = 0; frames < 64; frames++) {
        char *msg = NULL, err[256], op[16];
        size_t len = 0;
        int fd = -1;
        int rc = bs_proto_recv(sv[1], &msg, &len, &fd, deadline);
        if (rc != 0) {
            if (msg || fd >= 0)
                abort(); /* a failed read hands nothing over */
            break;
        }
        if (len > BS_PROTO_MAX_FRAME || msg[len] != '\0')
            abort();
        struct bs_hello h;
        if (bs_proto_decode_reply(msg, len, &rep, err, sizeof(err)) == 0 &&
            (rep.status == BS_CHUNK_HIT || rep.status == BS_CHUNK_FILLED) &&
            (rep.ncrcs > BS_PROTO_MAX_CRCS ||
             rep.ncrcs != (rep.length + rep.block_size - 1) / rep.block_size))
            abort();
        if (bs_proto_decode_hello(msg, len, &h, err, sizeof(err)) == 0 &&
            (h.block_size == 0 || h.chunk_size % h.block_size ||
             h.chunk_size / h.block_size > BS_PROTO_MAX_CRCS))
            abort();
        bs_proto_decode_op(msg, len, op, sizeof(op), err, sizeof(err));
        bs_proto_is_busy(msg, len);
        free(msg);
        if (fd >= 0)
            close(fd);
    }
    close(sv[0]);
    close(sv[1]);
    return 0;
}
