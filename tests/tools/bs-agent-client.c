/* bs-agent-client: a pod's view of the agent's Unix socket, for the adversarial suite. It
 * says hello, asks for one chunk with a delegated SAS (common/agentproto), prints what came
 * back (status, and for a descriptor: the file it names and its owner, mode and size), and
 * then, if asked, attacks what it received as a root client would: --tamper tries to
 * rewrite the chunk through /proc/self/fd/N and through the file's path, to clear its
 * immutable flag and to unlink it; --forbid PATH fails if the descriptor is PATH's file.
 * It decides nothing about the agent; the calling case reads its output and exit status.
 *
 * usage: bs-agent-client --socket PATH --endpoint URL --account A --container C --blob B
 *          --chunk N --sas SAS [--tamper] [--forbid PATH]
 * exit: 0 descriptor received and (--tamper) every attack refused with EPERM, (--forbid) not
 *       PATH; 1 an attack succeeded or the forbidden file was served; 3 no descriptor
 *       (status printed); 2 usage or protocol error. */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "agentproto.h"
#include "clock.h"
#include "fetch.h"

#define DEADLINE_NS (30ull * 1000000000ull) /* the whole exchange */

struct args {
    const char *socket, *endpoint, *account, *container, *blob, *sas, *forbid;
    uint64_t chunk;
    int tamper;
};

static int usage(void)
{
    fprintf(stderr, "usage: bs-agent-client --socket PATH --endpoint URL --account A "
                    "--container C --blob B --chunk N --sas SAS [--tamper] [--forbid PATH]\n");
    return 2;
}

static int parse_args(int argc, char **argv, struct args *a)
{
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(k, "--tamper") == 0) {
            a->tamper = 1;
            continue;
        }
        if (!v)
            return -1;
        i++;
        if (strcmp(k, "--socket") == 0)
            a->socket = v;
        else if (strcmp(k, "--endpoint") == 0)
            a->endpoint = v;
        else if (strcmp(k, "--account") == 0)
            a->account = v;
        else if (strcmp(k, "--container") == 0)
            a->container = v;
        else if (strcmp(k, "--blob") == 0)
            a->blob = v;
        else if (strcmp(k, "--sas") == 0)
            a->sas = v;
        else if (strcmp(k, "--forbid") == 0)
            a->forbid = v;
        else if (strcmp(k, "--chunk") == 0)
            a->chunk = strtoull(v, NULL, 10);
        else
            return -1;
    }
    return a->socket && a->endpoint && a->account && a->container && a->blob && a->sas ? 0 : -1;
}

static int connect_agent(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return -1;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* One request/answer on sock; the answer's JSON in *msg (caller frees), a descriptor in *fd. */
static int exchange(int sock, const char *json, char **msg, size_t *len, int *fd, uint64_t deadline)
{
    int rc = json ? bs_proto_send(sock, json, -1, deadline) : -ENOMEM;
    return rc ? rc : bs_proto_recv(sock, msg, len, fd, deadline);
}

/* Reports one attack; returns 1 if it worked (the chunk could be changed), else 0. */
static int report(const char *what, int rc, int err)
{
    if (rc == 0) {
        printf("attack=%s result=SUCCEEDED\n", what);
        return 1;
    }
    printf("attack=%s result=refused errno=%s\n", what, strerrorname_np(err));
    return err == EPERM ? 0 : 1; /* anything but EPERM: not the protection we claim */
}

static int tamper(int cfd, const char *path)
{
    int worked = 0;
    char proc[64];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", cfd);
    int wfd = open(proc, O_RDWR | O_CLOEXEC);
    int err = errno;
    if (wfd >= 0) {
        unsigned char b = 0;
        if (pread(wfd, &b, 1, 0) == 1) {
            b ^= 0xff;
            if (pwrite(wfd, &b, 1, 0) != 1)
                err = errno;
        }
        close(wfd);
    }
    worked += report("reopen-proc-fd-rdwr", wfd >= 0 ? 0 : -1, err);
    wfd = open(path, O_RDWR | O_CLOEXEC);
    err = errno;
    if (wfd >= 0)
        close(wfd);
    worked += report("open-path-rdwr", wfd >= 0 ? 0 : -1, err);
    int flags = 0, rc = ioctl(cfd, FS_IOC_GETFLAGS, &flags);
    if (rc == 0 && (flags & FS_IMMUTABLE_FL)) {
        flags &= ~FS_IMMUTABLE_FL;
        rc = ioctl(cfd, FS_IOC_SETFLAGS, &flags);
        worked += report("clear-immutable", rc, errno);
    } else {
        printf("attack=clear-immutable result=not-immutable\n");
        worked++;
    }
    rc = unlink(path);
    worked += report("unlink-path", rc, errno);
    return worked;
}

int main(int argc, char **argv)
{
    struct args a = {0};
    if (parse_args(argc, argv, &a) < 0)
        return usage();
    uint64_t deadline = bs_now_ns() + DEADLINE_NS;
    int sock = connect_agent(a.socket);
    if (sock < 0) {
        fprintf(stderr, "bs-agent-client: cannot connect to %s: %s\n", a.socket, strerror(errno));
        return 2;
    }
    char *msg = NULL, err[256];
    size_t len = 0;
    int fd = -1;
    struct bs_hello h;
    char *hello = bs_proto_encode_hello_req();
    int rc = exchange(sock, hello, &msg, &len, &fd, deadline);
    free(hello);
    if (rc == 0)
        rc = bs_proto_decode_hello(msg, len, &h, err, sizeof(err));
    free(msg);
    msg = NULL;
    if (fd >= 0)
        close(fd);
    if (rc) {
        fprintf(stderr, "bs-agent-client: hello failed (%d)\n", rc);
        return 2;
    }
    static struct bs_chunk_req req;
    static struct bs_chunk_reply rep;
    snprintf(req.account, sizeof(req.account), "%s", a.account);
    snprintf(req.container, sizeof(req.container), "%s", a.container);
    snprintf(req.blob, sizeof(req.blob), "%s", a.blob);
    req.chunk = a.chunk;
    req.auth.kind = BS_AUTH_SAS;
    snprintf(req.auth.endpoint, sizeof(req.auth.endpoint), "%s", a.endpoint);
    snprintf(req.auth.account, sizeof(req.auth.account), "%s", a.account);
    snprintf(req.auth.secret, sizeof(req.auth.secret), "%s", a.sas);
    char *json = bs_proto_encode_req(&req);
    fd = -1;
    rc = exchange(sock, json, &msg, &len, &fd, deadline);
    free(json);
    if (rc == 0)
        rc = bs_proto_decode_reply(msg, len, &rep, err, sizeof(err));
    free(msg);
    close(sock);
    if (rc) {
        fprintf(stderr, "bs-agent-client: chunk request failed (%d)\n", rc);
        return 2;
    }
    printf("status=%s length=%llu reason=\"%s\"\n", bs_chunk_status_name(rep.status),
           (unsigned long long)rep.length, rep.reason);
    if (fd < 0) {
        printf("descriptor=none\n");
        return 3;
    }
    char path[4096] = "";
    char proc[64];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(proc, path, sizeof(path) - 1);
    path[n > 0 ? n : 0] = '\0';
    struct stat st;
    fstat(fd, &st);
    printf("descriptor=%s uid=%u mode=%04o size=%lld\n", path, (unsigned)st.st_uid,
           (unsigned)(st.st_mode & 07777), (long long)st.st_size);
    int bad = 0;
    struct stat fs;
    if (a.forbid && stat(a.forbid, &fs) == 0 && fs.st_dev == st.st_dev && fs.st_ino == st.st_ino) {
        printf("served=FORBIDDEN file %s\n", a.forbid);
        bad = 1;
    }
    if (a.tamper)
        bad += tamper(fd, path);
    close(fd);
    return bad ? 1 : 0;
}
