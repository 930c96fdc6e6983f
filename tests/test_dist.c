/* src/dist: the host communicator (sums and means over 4 threads, in rank order, size mismatch and
 * abort as errors), batch sharding (rows and targets split, T cut, none lost), and the TCP
 * rendezvous on loopback (rank 0 serves a 128-byte id to ranks 1..3; unreachable master and
 * missing nodes time out with clear errors). */
#include "test.h"
#include "anvil.h"
#include "dist/dp.h"
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>

#define NR 4
typedef struct {
    av_comm *c;
    int mismatch, abort_me;
    float buf[1000];
    double d[3];
    av_status st, st_mean, st_bad;
    char err[512];
} rank_arg;

static void *rank_main(void *p) {
    rank_arg *a = p;
    int r = av_comm_rank(a->c);
    for (int i = 0; i < 1000; i++) a->buf[i] = (float)(r + 1) * (float)i;
    a->d[0] = r, a->d[1] = 1, a->d[2] = 0.5;
    a->st = av_comm_allreduce_sum(a->c, a->buf, 1000);
    if (a->st == AV_OK) a->st = av_comm_allreduce_host_f64(a->c, a->d, 3);
    float m[8];
    for (int i = 0; i < 8; i++) m[i] = (float)r;
    a->st_mean = av_comm_allreduce_mean(a->c, m, 8);
    if (a->st_mean == AV_OK && m[3] != 1.5f) a->st_mean = AV_ERR_ARG; /* (0+1+2+3)/4 */
    if (a->abort_me) {
        av_comm_abort(a->c);
        a->st_bad = AV_ERR_DEVICE;
    } else if (a->mismatch >= 0) {
        a->st_bad = av_comm_allreduce_sum(a->c, a->buf, r == a->mismatch ? 10 : 20);
    }
    snprintf(a->err, sizeof a->err, "%s", a->st_bad != AV_OK ? av_last_error() : "");
    return NULL;
}

static void test_host_comm(void) {
    av_comm *c[NR];
    rank_arg a[NR];
    pthread_t th[NR];
    CHECK_OK(av_comm_host_new(c, NR));
    for (int i = 0; i < NR; i++) {
        memset(&a[i], 0, sizeof a[i]);
        a[i].c = c[i];
        a[i].mismatch = 2;
        pthread_create(&th[i], NULL, rank_main, &a[i]);
    }
    for (int i = 0; i < NR; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < NR; i++) {
        CHECK(a[i].st == AV_OK, "rank %d", i);
        CHECK(a[i].buf[7] == 70.0f && a[i].buf[999] == 9990.0f, "rank %d sum %g %g", i, a[i].buf[7], a[i].buf[999]);
        CHECK(a[i].d[0] == 6 && a[i].d[1] == 4 && a[i].d[2] == 2, "rank %d f64 %g %g %g", i, a[i].d[0], a[i].d[1], a[i].d[2]);
        CHECK(a[i].st_mean == AV_OK, "rank %d mean", i);
        CHECK(a[i].st_bad == AV_ERR_ARG && strstr(a[i].err, "elements"), "rank %d mismatch: %s", i, a[i].err);
        av_comm_free(c[i]);
    }
    /* one rank aborts: the others' next collective returns instead of waiting */
    CHECK_OK(av_comm_host_new(c, NR));
    for (int i = 0; i < NR; i++) {
        memset(&a[i], 0, sizeof a[i]);
        a[i].c = c[i];
        a[i].mismatch = -2; /* everyone reduces 10 vs 20... not used: */
        a[i].abort_me = i == 1;
        if (i != 1) a[i].mismatch = NR; /* equal sizes: only the abort stops them */
        pthread_create(&th[i], NULL, rank_main, &a[i]);
    }
    for (int i = 0; i < NR; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < NR; i++) {
        if (i == 1) continue;
        CHECK(a[i].st_bad == AV_ERR_DEVICE && strstr(a[i].err, "aborted"), "rank %d after abort: %s", i, a[i].err);
    }
    for (int i = 0; i < NR; i++) av_comm_free(c[i]);
    av_comm *one;
    CHECK_OK(av_comm_host_new(&one, 1));
    float x[3] = {1, 2, 3};
    CHECK_OK(av_comm_allreduce_mean(one, x, 3));
    CHECK(x[2] == 3.0f, "one rank keeps its values");
    av_comm_free(one);
    CHECK(av_comm_host_new(c, 0) == AV_ERR_ARG, "0 workers refused");
}

static void test_shard(void) {
    /* 5 rows, T = 6; row i has i+2 targets at the front (row 0: 2 ... row 4: 6) */
    int32_t ids[30], tg[30];
    av_comm *c[2];
    CHECK_OK(av_comm_host_new(c, 2));
    int total_rows = 0, total_tg = 0;
    for (int r = 0; r < 2; r++) {
        for (int i = 0; i < 5; i++)
            for (int t = 0; t < 6; t++) ids[i * 6 + t] = 100 * i + t, tg[i * 6 + t] = t < i + 2 ? 1000 * i + t : -1;
        av_batch b = {.B = 5, .T = 6, .ids = ids, .targets = tg, .n_targets = 2 + 3 + 4 + 5 + 6, .cap = 30};
        int n_all = 0;
        CHECK_OK(av_dp_shard_batch(c[r], &b, &n_all));
        CHECK(n_all == 20, "n_all %d", n_all);
        int nt = 0;
        for (int i = 0; i < b.B * b.T; i++) nt += b.targets[i] >= 0;
        CHECK(nt == b.n_targets, "rank %d targets %d vs %d", r, nt, b.n_targets);
        total_rows += b.B;
        total_tg += b.n_targets;
        if (r == 0) CHECK(b.B == 2 && b.T == 3 && ids[3] == 100 && tg[4] == 1001, "rank 0: B %d T %d", b.B, b.T);
        if (r == 1) CHECK(b.B == 3 && b.T == 6 && ids[0] == 200 && tg[17] == 4005, "rank 1: B %d T %d", b.B, b.T);
    }
    CHECK(total_rows == 5 && total_tg == 20, "rows %d targets %d", total_rows, total_tg);
    for (int r = 0; r < 2; r++) av_comm_free(c[r]);
}

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof sa;
    bind(fd, (struct sockaddr *)&sa, sizeof sa);
    getsockname(fd, (struct sockaddr *)&sa, &l);
    close(fd);
    return ntohs(sa.sin_port);
}

typedef struct {
    int port, timeout_ms;
    uint8_t id[AV_COMM_ID_BYTES];
    av_status st;
    char err[512];
} client_arg;

static void *client_main(void *p) {
    client_arg *a = p;
    a->st = av_rdzv_fetch("127.0.0.1", a->port, a->id, sizeof a->id, a->timeout_ms);
    snprintf(a->err, sizeof a->err, "%s", a->st ? av_last_error() : "");
    return NULL;
}

static double secs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_rendezvous(void) {
    int port = free_port();
    uint8_t id[AV_COMM_ID_BYTES];
    for (int i = 0; i < AV_COMM_ID_BYTES; i++) id[i] = (uint8_t)(i * 7 + 3);
    client_arg ca[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) { /* clients start first: they retry until the master listens */
        memset(&ca[i], 0, sizeof ca[i]);
        ca[i].port = port;
        ca[i].timeout_ms = 10000;
        pthread_create(&th[i], NULL, client_main, &ca[i]);
    }
    struct timespec nap = {0, 200000000};
    nanosleep(&nap, NULL);
    CHECK_OK(av_rdzv_serve("127.0.0.1", port, id, sizeof id, 3, 10000));
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        CHECK(ca[i].st == AV_OK, "client %d: %s", i, ca[i].err);
        CHECK(!memcmp(ca[i].id, id, sizeof id), "client %d got the id", i);
    }
    /* nobody listens: the client gives up after its timeout with the address in the message */
    int dead = free_port();
    client_arg c = {.port = dead, .timeout_ms = 500};
    double t0 = secs();
    client_main(&c);
    double el = secs() - t0;
    printf("unreachable master: %s (%.2f s)\n", c.err, el);
    CHECK(c.st == AV_ERR_IO && strstr(c.err, "127.0.0.1") && strstr(c.err, "cannot reach"), "%s", c.err);
    CHECK(el >= 0.45 && el < 5, "gave up after %.2f s", el);
    /* the master waits for 2 nodes, 1 comes: a timeout naming the count */
    port = free_port();
    memset(&ca[0], 0, sizeof ca[0]);
    ca[0].port = port;
    ca[0].timeout_ms = 5000;
    pthread_create(&th[0], NULL, client_main, &ca[0]);
    av_status st = av_rdzv_serve("127.0.0.1", port, id, sizeof id, 2, 700);
    printf("missing node: %s\n", av_last_error());
    CHECK(st == AV_ERR_IO && strstr(av_last_error(), "1 of 2"), "%s", av_last_error());
    pthread_join(th[0], NULL);
    CHECK(ca[0].st == AV_OK, "the node that came got the id: %s", ca[0].err);
    CHECK(av_rdzv_fetch("127.0.0.1", 0, id, sizeof id, 100) == AV_ERR_ARG, "port 0 refused");
    CHECK(av_rdzv_fetch("no-such-host.invalid", 1234, id, sizeof id, 300) == AV_ERR_IO, "unknown host: %s", av_last_error());
}

int main(void) {
    test_host_comm();
    test_shard();
    test_rendezvous();
    return TEST_SUMMARY();
}
