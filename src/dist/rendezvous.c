/* TCP rendezvous of several hosts (plain sockets): the master listens on --master-port and sends
 * every node that connects a header ("ANVLRDZV", u32 length) and the bytes (the NCCL unique id);
 * clients retry connecting until their deadline. Every wait is bounded by the caller's timeout. */
#include "core/status.h"
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char k_magic[8] = {'A', 'N', 'V', 'L', 'R', 'D', 'Z', 'V'};

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int left_ms(long long deadline) {
    long long l = deadline - now_ms();
    return l < 0 ? 0 : l > 1 << 30 ? 1 << 30 : (int)l;
}

/* Sends or receives exactly n bytes before the deadline; 0 on success, else -1 (errno, or ETIMEDOUT). */
static int xfer(int fd, void *p, size_t n, int sending, long long deadline) {
    char *b = p;
    while (n) {
        struct pollfd pf = {.fd = fd, .events = sending ? POLLOUT : POLLIN};
        int r = poll(&pf, 1, left_ms(deadline));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (r == 0) errno = ETIMEDOUT;
            return -1;
        }
        ssize_t k = sending ? send(fd, b, n, MSG_NOSIGNAL) : recv(fd, b, n, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            if (k == 0) errno = ECONNRESET;
            return -1;
        }
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

av_status av_rdzv_serve(const char *addr, int port, const void *data, size_t len, int n_clients, int timeout_ms) {
    if (port < 1 || port > 65535) return av_fail(AV_ERR_ARG, "rendezvous: --master-port %d is not a port (1..65535)", port);
    if (len > 1 << 20) return av_fail(AV_ERR_ARG, "rendezvous: %zu bytes is too much to hand out", len);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return av_fail(AV_ERR_IO, "rendezvous: socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 64) != 0) {
        av_status st = av_fail(AV_ERR_IO, "rendezvous: master %s: cannot listen on port %d: %s", addr ? addr : "*", port, strerror(errno));
        close(fd);
        return st;
    }
    long long deadline = now_ms() + timeout_ms;
    unsigned char hdr[12];
    memcpy(hdr, k_magic, 8);
    uint32_t l = (uint32_t)len;
    for (int i = 0; i < 4; i++) hdr[8 + i] = (unsigned char)(l >> (8 * i));
    av_status st = AV_OK;
    for (int served = 0; served < n_clients && st == AV_OK;) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int r = poll(&pf, 1, left_ms(deadline));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            st = av_fail(AV_ERR_IO, "rendezvous: master port %d: %d of %d nodes connected within %.1f s", port, served, n_clients,
                         timeout_ms / 1000.0);
            break;
        }
        int c = accept(fd, NULL, NULL);
        if (c < 0) continue;
        if (xfer(c, hdr, sizeof hdr, 1, deadline) || xfer(c, (void *)data, len, 1, deadline))
            st = av_fail(AV_ERR_IO, "rendezvous: master port %d: sending the id to node %d failed: %s", port, served + 1, strerror(errno));
        close(c);
        served++;
    }
    close(fd);
    return st;
}

/* One connection attempt to addr:port; returns the socket or -1 (errno set). */
static int try_connect(const char *addr, int port, long long deadline, char *why, size_t cap) {
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int g = getaddrinfo(addr, ps, &hints, &res);
    if (g) {
        snprintf(why, cap, "%s", gai_strerror(g));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            snprintf(why, cap, "%s", strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    (void)deadline;
    return fd;
}

av_status av_rdzv_fetch(const char *addr, int port, void *data, size_t len, int timeout_ms) {
    if (!addr || !*addr) return av_fail(AV_ERR_ARG, "rendezvous: --master-addr is required");
    if (port < 1 || port > 65535) return av_fail(AV_ERR_ARG, "rendezvous: --master-port %d is not a port (1..65535)", port);
    long long deadline = now_ms() + timeout_ms;
    char why[256] = "timed out";
    int fd = -1;
    for (;;) {
        fd = try_connect(addr, port, deadline, why, sizeof why);
        if (fd >= 0 || left_ms(deadline) == 0) break;
        int nap = left_ms(deadline) < 100 ? left_ms(deadline) : 100;
        struct timespec ts = {0, (long)nap * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (fd < 0)
        return av_fail(AV_ERR_IO, "rendezvous: cannot reach the master %s:%d within %.1f s (%s)", addr, port, timeout_ms / 1000.0, why);
    unsigned char hdr[12];
    av_status st = AV_OK;
    if (xfer(fd, hdr, sizeof hdr, 0, deadline))
        st = av_fail(AV_ERR_IO, "rendezvous: master %s:%d: no id received: %s", addr, port, strerror(errno));
    else if (memcmp(hdr, k_magic, 8))
        st = av_fail(AV_ERR_FORMAT, "rendezvous: %s:%d is not an anvil master (wrong greeting)", addr, port);
    else {
        uint32_t l = 0;
        for (int i = 0; i < 4; i++) l |= (uint32_t)hdr[8 + i] << (8 * i);
        if (l != len) st = av_fail(AV_ERR_FORMAT, "rendezvous: master %s:%d sends %u bytes, expected %zu", addr, port, l, len);
        else if (xfer(fd, data, len, 0, deadline))
            st = av_fail(AV_ERR_IO, "rendezvous: master %s:%d: id cut short: %s", addr, port, strerror(errno));
    }
    close(fd);
    return st;
}
