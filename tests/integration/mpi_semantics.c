/*
 * mpi_semantics: the MPI point-to-point guarantees an MPI library relies on its
 * transport for, checked through real MPI calls. Written to find transport
 * bugs (matching, ordering, rendezvous, cancel, truncation), not MPI bugs: run
 * it over the transport under test and compare with a known-good one.
 *
 *   mpirun -np 4 --mca pml cm --mca mtl ofi --mca mtl_ofi_provider_include mlx4 \
 *          -x FI_PROVIDER_PATH=build/plugin -x FI_MLX4_SIM=1 build/tests/mpi_semantics
 *
 * Pairwise tests use ranks 0 and 1 (the other ranks wait at the barrier that
 * separates tests); the all-to-all tests use every rank and are meant for 4 or
 * more (with fewer they still run, they just cover less). 2 ranks are enough
 * for the pairwise tests.
 *
 * Every check prints what went wrong, in which test, on which rank, and calls
 * MPI_Abort; MPI_COMM_WORLD returns errors (MPI_ERRORS_RETURN) so that a failing
 * MPI call is reported the same way. The last line on success is
 * "N passed, 0 failed" (plus ", K skipped" when -t or -x left tests out).
 * -h lists the tests.
 */
#include <mpi.h>

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MiB (1u << 20)

static int rank, nranks;
static const char *current_test = "setup";

static void failf(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "rank %d: FAILED in test '%s' (%s:%d): ", rank, current_test, file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    fflush(stderr);
    va_end(ap);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) failf(__FILE__, __LINE__, "`" #cond "` is false: " __VA_ARGS__);              \
    } while (0)

static const char *error_text(int rc)
{
    static char s[MPI_MAX_ERROR_STRING];
    int len;
    if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "error %d", rc);
    return s;
}

#define MPI_CHECK(call)                                                                            \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ != MPI_SUCCESS)                                                                    \
            failf(__FILE__, __LINE__, "%s returned %s", #call, error_text(rc_));                   \
    } while (0)

static int error_class(int rc)
{
    int cls = -1;
    MPI_Error_class(rc, &cls);
    return cls;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    CHECK(p != NULL, "cannot allocate %zu bytes", n);
    return p;
}

/* ---- message contents ------------------------------------------------------ */

/* splitmix64 */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* A seed names one message: the test, sender, receiver and a sequence number. */
static uint64_t seed(int test, int from, int to, long seq)
{
    return mix(mix(mix((uint64_t)test) ^ (uint64_t)from << 20 ^ (uint64_t)to) ^ (uint64_t)seq);
}

static void fill(void *buf, size_t len, uint64_t s)
{
    unsigned char *b = buf;
    uint64_t w = s;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        w += 0x9e3779b97f4a7c15ull;
        memcpy(b + i, &w, 8);
    }
    w += 0x9e3779b97f4a7c15ull;
    for (; i < len; i++, w >>= 8)
        b[i] = (unsigned char)w;
}

static long long first_mismatch(const void *buf, size_t len, uint64_t s)
{
    const unsigned char *b = buf;
    uint64_t w = s;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        w += 0x9e3779b97f4a7c15ull;
        if (memcmp(b + i, &w, 8) != 0) break;
    }
    if (i + 8 <= len) {
        unsigned char want[8];
        memcpy(want, &w, 8);
        for (size_t k = 0; k < 8; k++)
            if (b[i + k] != want[k]) return (long long)(i + k);
    }
    w += 0x9e3779b97f4a7c15ull;
    for (; i < len; i++, w >>= 8)
        if (b[i] != (unsigned char)w) return (long long)i;
    return -1;
}

/* Checks a received message: status source, tag and byte count, then data. */
#define EXPECT_MSG(buf, st, src, tag, len, sd, what)                                               \
    do {                                                                                           \
        int count_ = -1;                                                                           \
        MPI_Get_count((st), MPI_BYTE, &count_);                                                    \
        CHECK((st)->MPI_SOURCE == (src), "%s: source %d, expected %d", (what), (st)->MPI_SOURCE,   \
              (src));                                                                              \
        CHECK((st)->MPI_TAG == (tag), "%s: tag %d, expected %d", (what), (st)->MPI_TAG, (tag));    \
        CHECK((size_t)count_ == (size_t)(len), "%s: %d bytes received, expected %zu", (what),      \
              count_, (size_t)(len));                                                              \
        long long bad_ = first_mismatch((buf), (len), (sd));                                       \
        CHECK(bad_ < 0, "%s: wrong data at byte %lld of %zu", (what), bad_, (size_t)(len));        \
    } while (0)

#define EXPECT_DATA(buf, len, sd, what)                                                            \
    do {                                                                                           \
        long long bad_ = first_mismatch((buf), (len), (sd));                                       \
        CHECK(bad_ < 0, "%s: wrong data at byte %lld of %zu", (what), bad_, (size_t)(len));        \
    } while (0)

/* Polls until `done` is set, failing after 30 s instead of hanging. */
#define POLL_UNTIL(done, call, what)                                                               \
    do {                                                                                           \
        double deadline_ = MPI_Wtime() + 30;                                                       \
        for (;;) {                                                                                 \
            MPI_CHECK(call);                                                                       \
            if (done) break;                                                                       \
            CHECK(MPI_Wtime() < deadline_, "%s: nothing after 30 s", (what));                      \
        }                                                                                          \
    } while (0)

enum {
    T_SELF = 1,
    T_ZERO,
    T_ANY,
    T_ORDER,
    T_PROBE,
    T_CANCEL,
    T_TRUNC,
    T_MANY,
    T_LARGE,
    T_ALLTOALL,
    T_ALLPAIRS,
    T_TAGUB,
    T_COMM,
    T_SSEND,
};

/* ---- tests ------------------------------------------------------------------ */

/* Messages to oneself, eager and large, blocking receive after Isend, and Sendrecv. */
static void test_self(void)
{
    const size_t sizes[] = {0, 1, 1000, 64 * 1024, 4 * MiB + 7};
    unsigned char *s = xmalloc(4 * MiB + 7), *r = xmalloc(4 * MiB + 7);
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        MPI_Request req;
        MPI_Status st;
        fill(s, sizes[i], seed(T_SELF, rank, rank, (long)i));
        MPI_CHECK(MPI_Isend(s, (int)sizes[i], MPI_BYTE, rank, 10, MPI_COMM_WORLD, &req));
        MPI_CHECK(MPI_Recv(r, (int)sizes[i], MPI_BYTE, rank, 10, MPI_COMM_WORLD, &st));
        MPI_CHECK(MPI_Wait(&req, MPI_STATUS_IGNORE));
        EXPECT_MSG(r, &st, rank, 10, sizes[i], seed(T_SELF, rank, rank, (long)i), "Isend/Recv");

        fill(s, sizes[i], seed(T_SELF, rank, rank, 100 + (long)i));
        MPI_CHECK(MPI_Sendrecv(s, (int)sizes[i], MPI_BYTE, rank, 11, r, (int)sizes[i], MPI_BYTE,
                               MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &st));
        EXPECT_MSG(r, &st, rank, 11, sizes[i], seed(T_SELF, rank, rank, 100 + (long)i), "Sendrecv");
    }
    free(s);
    free(r);
}

/* Zero-byte messages: status, untouched buffer, order by tag, Probe of them. */
static void test_zero_bytes(void)
{
    MPI_Status st;
    if (rank == 0) {
        MPI_Request reqs[100];
        MPI_CHECK(MPI_Send(NULL, 0, MPI_BYTE, 1, 5, MPI_COMM_WORLD));
        for (int i = 0; i < 100; i++)
            MPI_CHECK(MPI_Isend(NULL, 0, MPI_BYTE, 1, 100 + i, MPI_COMM_WORLD, &reqs[i]));
        MPI_CHECK(MPI_Waitall(100, reqs, MPI_STATUSES_IGNORE));
        MPI_CHECK(MPI_Probe(1, MPI_ANY_TAG, MPI_COMM_WORLD, &st));
        int count = -1;
        MPI_Get_count(&st, MPI_BYTE, &count);
        CHECK(count == 0 && st.MPI_TAG == 6, "probed count %d tag %d", count, st.MPI_TAG);
        MPI_CHECK(MPI_Recv(NULL, 0, MPI_BYTE, 1, 6, MPI_COMM_WORLD, &st));
    } else if (rank == 1) {
        unsigned char buf[16];
        memset(buf, 0xab, sizeof buf);
        MPI_CHECK(MPI_Recv(buf, sizeof buf, MPI_BYTE, 0, 5, MPI_COMM_WORLD, &st));
        EXPECT_MSG(buf, &st, 0, 5, 0, 0, "zero-byte into a 16-byte buffer");
        for (size_t i = 0; i < sizeof buf; i++)
            CHECK(buf[i] == 0xab, "byte %zu of the receive buffer was written", i);
        for (int i = 0; i < 100; i++) {
            MPI_CHECK(MPI_Recv(buf, sizeof buf, MPI_BYTE, 0, MPI_ANY_TAG, MPI_COMM_WORLD, &st));
            CHECK(st.MPI_TAG == 100 + i, "zero-byte message %d arrived as tag %d (order)", i,
                  st.MPI_TAG);
        }
        MPI_CHECK(MPI_Send(buf, 0, MPI_BYTE, 0, 6, MPI_COMM_WORLD));
    }
}

/* Every other rank sends to rank 0; rank 0 receives with ANY_SOURCE/ANY_TAG and
 * checks status against content, per-sender order, and that each came once.
 * Then tag selectivity with a given source and with ANY_SOURCE. */
static void test_any_source_tag(void)
{
    enum { PER_SENDER = 3 };
    const size_t sizes[PER_SENDER] = {16, 4096 + 16, 256 * 1024};
    if (rank == 0) {
        unsigned char *buf = xmalloc(256 * 1024);
        int *next = calloc((size_t)nranks, sizeof *next);
        for (int m = 0; m < (nranks - 1) * PER_SENDER; m++) {
            MPI_Status st;
            MPI_CHECK(MPI_Recv(buf, 256 * 1024, MPI_BYTE, MPI_ANY_SOURCE, MPI_ANY_TAG,
                               MPI_COMM_WORLD, &st));
            int src = st.MPI_SOURCE, j = st.MPI_TAG % 100;
            CHECK(src > 0 && src < nranks, "source %d", src);
            CHECK(st.MPI_TAG / 100 == src, "tag %d from source %d", st.MPI_TAG, src);
            CHECK(j == next[src], "from rank %d message %d arrived before message %d", src, j,
                  next[src]);
            next[src]++;
            EXPECT_MSG(buf, &st, src, st.MPI_TAG, sizes[j], seed(T_ANY, src, 0, j),
                       "ANY_SOURCE/ANY_TAG");
        }
        for (int src = 1; src < nranks; src++)
            CHECK(next[src] == PER_SENDER, "got %d messages from rank %d", next[src], src);
        free(next);

        /* Now (not earlier: the loop above takes any tag) rank 1 sends tags
         * 7, 3, 9 in that order, then 41 and 42. */
        MPI_CHECK(MPI_Send(NULL, 0, MPI_BYTE, 1, 8, MPI_COMM_WORLD));
        const int order[] = {7, 3, 9};
        for (int i = 0; i < 3; i++) {
            MPI_Status st;
            MPI_CHECK(MPI_Recv(buf, 64, MPI_BYTE, 1, MPI_ANY_TAG, MPI_COMM_WORLD, &st));
            EXPECT_MSG(buf, &st, 1, order[i], 64, seed(T_ANY, 1, 0, 10 + order[i]),
                       "ANY_TAG from rank 1");
        }
        MPI_Status st;
        MPI_CHECK(MPI_Recv(buf, 64, MPI_BYTE, MPI_ANY_SOURCE, 42, MPI_COMM_WORLD, &st));
        EXPECT_MSG(buf, &st, 1, 42, 64, seed(T_ANY, 1, 0, 42), "ANY_SOURCE, tag 42 (sent 2nd)");
        MPI_CHECK(MPI_Recv(buf, 64, MPI_BYTE, MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &st));
        EXPECT_MSG(buf, &st, 1, 41, 64, seed(T_ANY, 1, 0, 41), "ANY_SOURCE, ANY_TAG (tag 41)");
        free(buf);
    } else {
        unsigned char *buf = xmalloc(256 * 1024);
        for (int j = 0; j < PER_SENDER; j++) {
            fill(buf, sizes[j], seed(T_ANY, rank, 0, j));
            MPI_CHECK(MPI_Send(buf, (int)sizes[j], MPI_BYTE, 0, rank * 100 + j, MPI_COMM_WORLD));
        }
        if (rank == 1) {
            const int tags[] = {7, 3, 9, 41, 42};
            MPI_CHECK(MPI_Recv(NULL, 0, MPI_BYTE, 0, 8, MPI_COMM_WORLD, MPI_STATUS_IGNORE));
            for (int i = 0; i < 5; i++) {
                fill(buf, 64, seed(T_ANY, 1, 0, tags[i] < 40 ? 10 + tags[i] : tags[i]));
                MPI_CHECK(MPI_Send(buf, 64, MPI_BYTE, 0, tags[i], MPI_COMM_WORLD));
            }
        }
        free(buf);
    }
}

/* Non-overtaking: many messages of mixed sizes (eager and rendezvous for any
 * transport's threshold), one tag, must match in the order they were sent —
 * when all are unexpected, when all receives are posted first, and half/half. */
#define ORDER_N 300
static size_t order_size(long i)
{
    static const size_t sizes[] = {0, 1, 8, 64, 1000, 4096, 8192, 16384, 65536, 200000, MiB + 3};
    return sizes[mix((uint64_t)i * 7919) % (sizeof sizes / sizeof *sizes)];
}

static void test_order(void)
{
    size_t offs[ORDER_N + 1];
    offs[0] = 0;
    for (long i = 0; i < ORDER_N; i++)
        offs[i + 1] = offs[i] + order_size(i);
    unsigned char *buf = xmalloc(offs[ORDER_N]);
    MPI_Request *reqs = xmalloc(ORDER_N * sizeof *reqs);
    MPI_Status *sts = xmalloc(ORDER_N * sizeof *sts);
    const int tag = 77;

    for (int phase = 0; phase < 3; phase++) { /* unexpected, preposted, half and half */
        const int preposted = phase == 0 ? 0 : phase == 1 ? ORDER_N : ORDER_N / 2;
        if (rank == 0) {
            for (long i = 0; i < ORDER_N; i++)
                fill(buf + offs[i], order_size(i), seed(T_ORDER, 0, phase, i));
            MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD)); /* rank 1's receives are posted */
            for (long i = 0; i < ORDER_N; i++)
                MPI_CHECK(MPI_Isend(buf + offs[i], (int)order_size(i), MPI_BYTE, 1, tag,
                                    MPI_COMM_WORLD, &reqs[i]));
            MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD)); /* all are sent before rank 1 receives */
            MPI_CHECK(MPI_Waitall(ORDER_N, reqs, MPI_STATUSES_IGNORE));
        } else if (rank == 1) {
            memset(buf, 0, offs[ORDER_N]);
            for (long i = 0; i < preposted; i++)
                MPI_CHECK(MPI_Irecv(buf + offs[i], (int)order_size(i), MPI_BYTE, 0, tag,
                                    MPI_COMM_WORLD, &reqs[i]));
            MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
            MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
            int rc = MPI_Waitall(preposted, reqs, sts);
            for (long i = 0; i < preposted; i++) {
                char what[64];
                snprintf(what, sizeof what, "phase %d, preposted message %ld", phase, i);
                CHECK(rc == MPI_SUCCESS || sts[i].MPI_ERROR == MPI_SUCCESS, "%s: %s", what,
                      error_text(sts[i].MPI_ERROR));
                EXPECT_MSG(buf + offs[i], &sts[i], 0, tag, order_size(i),
                           seed(T_ORDER, 0, phase, i), what);
            }
            MPI_CHECK(rc);
            /* The rest are received one by one into a buffer big enough for any. */
            unsigned char *big = xmalloc(MiB + 3);
            for (long i = preposted; i < ORDER_N; i++) {
                char what[64];
                MPI_Status st;
                snprintf(what, sizeof what, "phase %d, message %ld", phase, i);
                MPI_CHECK(MPI_Recv(big, MiB + 3, MPI_BYTE, i % 2 ? MPI_ANY_SOURCE : 0, tag,
                                   MPI_COMM_WORLD, &st));
                EXPECT_MSG(big, &st, 0, tag, order_size(i), seed(T_ORDER, 0, phase, i), what);
            }
            free(big);
        } else {
            MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
            MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
        }
    }
    free(buf);
    free(reqs);
    free(sts);
}

/* MPI_Probe, MPI_Iprobe, MPI_Mprobe/MPI_Mrecv, MPI_Improbe/MPI_Imrecv, small and large. */
static void test_probe(void)
{
    const size_t big = 4 * MiB + 5;
    if (rank == 0) {
        struct {
            int tag;
            size_t len;
        } m[] = {
            {10, 100},         {11, big}, {12, 0},    /* Probe / Iprobe */
            {20, 4 * MiB + 1}, {20, 64},  {21, 1000}, /* Mprobe, then a Recv overtakes nothing */
            {22, 5 * MiB},                            /* Improbe + Imrecv */
        };
        enum { N = sizeof m / sizeof *m };
        unsigned char *bufs[N];
        MPI_Request reqs[N];
        for (int i = 0; i < N; i++) {
            bufs[i] = xmalloc(m[i].len);
            fill(bufs[i], m[i].len, seed(T_PROBE, 0, 1, i));
            MPI_CHECK(
                MPI_Isend(bufs[i], (int)m[i].len, MPI_BYTE, 1, m[i].tag, MPI_COMM_WORLD, &reqs[i]));
        }
        MPI_CHECK(MPI_Waitall(N, reqs, MPI_STATUSES_IGNORE));
        for (int i = 0; i < N; i++)
            free(bufs[i]);
    } else if (rank == 1) {
        MPI_Status st;
        int flag = 1, count = -1;
        MPI_CHECK(MPI_Iprobe(0, 99, MPI_COMM_WORLD, &flag, &st));
        CHECK(!flag, "Iprobe found a message with tag 99, which nobody sends");

        /* Probe by tag finds the large one although a smaller one came first. */
        MPI_CHECK(MPI_Probe(MPI_ANY_SOURCE, 11, MPI_COMM_WORLD, &st));
        MPI_Get_count(&st, MPI_BYTE, &count);
        CHECK(st.MPI_SOURCE == 0 && st.MPI_TAG == 11 && (size_t)count == big,
              "Probe: source %d tag %d count %d", st.MPI_SOURCE, st.MPI_TAG, count);
        unsigned char *buf = xmalloc((size_t)count);
        MPI_CHECK(MPI_Recv(buf, count, MPI_BYTE, st.MPI_SOURCE, st.MPI_TAG, MPI_COMM_WORLD, &st));
        EXPECT_MSG(buf, &st, 0, 11, big, seed(T_PROBE, 0, 1, 1), "Recv after Probe");
        free(buf);

        /* Iprobe with ANY_TAG must see the earliest remaining message, twice. */
        POLL_UNTIL(flag, MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &st),
                   "Iprobe");
        MPI_Get_count(&st, MPI_BYTE, &count);
        CHECK(st.MPI_TAG == 10 && count == 100, "Iprobe: tag %d count %d, expected 10 and 100",
              st.MPI_TAG, count);
        MPI_CHECK(MPI_Iprobe(0, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &st));
        CHECK(flag && st.MPI_TAG == 10, "a second Iprobe: flag %d tag %d", flag, st.MPI_TAG);
        unsigned char small[1000];
        MPI_CHECK(MPI_Recv(small, 100, MPI_BYTE, 0, 10, MPI_COMM_WORLD, &st));
        EXPECT_MSG(small, &st, 0, 10, 100, seed(T_PROBE, 0, 1, 0), "Recv after Iprobe");
        MPI_CHECK(MPI_Probe(0, MPI_ANY_TAG, MPI_COMM_WORLD, &st));
        MPI_Get_count(&st, MPI_BYTE, &count);
        CHECK(st.MPI_TAG == 12 && count == 0, "Probe: tag %d count %d, expected 12 and 0",
              st.MPI_TAG, count);
        MPI_CHECK(MPI_Recv(NULL, 0, MPI_BYTE, 0, 12, MPI_COMM_WORLD, &st));

        /* Mprobe takes the large message out of matching: the next Recv with the
         * same tag gets the one sent after it. */
        MPI_Message msg;
        MPI_CHECK(MPI_Mprobe(0, 20, MPI_COMM_WORLD, &msg, &st));
        MPI_Get_count(&st, MPI_BYTE, &count);
        CHECK((size_t)count == 4 * MiB + 1, "Mprobe: count %d", count);
        MPI_CHECK(MPI_Recv(small, 1000, MPI_BYTE, 0, 20, MPI_COMM_WORLD, &st));
        EXPECT_MSG(small, &st, 0, 20, 64, seed(T_PROBE, 0, 1, 4),
                   "Recv after Mprobe (must be the second tag-20 message)");
        buf = xmalloc((size_t)count);
        MPI_CHECK(MPI_Mrecv(buf, count, MPI_BYTE, &msg, &st));
        CHECK(msg == MPI_MESSAGE_NULL, "Mrecv did not reset the message handle");
        EXPECT_MSG(buf, &st, 0, 20, 4 * MiB + 1, seed(T_PROBE, 0, 1, 3), "Mrecv");
        free(buf);

        MPI_CHECK(MPI_Improbe(0, 98, MPI_COMM_WORLD, &flag, &msg, &st));
        CHECK(!flag, "Improbe found a message with tag 98, which nobody sends");
        POLL_UNTIL(flag, MPI_Improbe(0, 21, MPI_COMM_WORLD, &flag, &msg, &st), "Improbe");
        MPI_CHECK(MPI_Mrecv(small, 1000, MPI_BYTE, &msg, &st));
        EXPECT_MSG(small, &st, 0, 21, 1000, seed(T_PROBE, 0, 1, 5), "Mrecv after Improbe");

        MPI_CHECK(MPI_Mprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &msg, &st));
        MPI_Get_count(&st, MPI_BYTE, &count);
        CHECK(st.MPI_TAG == 22 && (size_t)count == 5 * MiB, "Mprobe: tag %d count %d", st.MPI_TAG,
              count);
        buf = xmalloc(5 * MiB);
        MPI_Request req;
        MPI_CHECK(MPI_Imrecv(buf, count, MPI_BYTE, &msg, &req));
        MPI_CHECK(MPI_Wait(&req, &st));
        EXPECT_MSG(buf, &st, 0, 22, 5 * MiB, seed(T_PROBE, 0, 1, 6), "Imrecv");
        free(buf);
    }
}

/* MPI_Cancel of posted receives; a cancelled receive must not take a later message. */
static void test_cancel(void)
{
    unsigned char *buf = xmalloc(2 * MiB);
    if (rank == 1) {
        MPI_Request req;
        MPI_Status st;
        int flag = 0;
        struct {
            int src, tag, len;
        } r[] = {{0, 30, 100}, {MPI_ANY_SOURCE, 31, 2 * MiB}, {0, MPI_ANY_TAG, 64}};
        for (int i = 0; i < 3; i++) {
            MPI_CHECK(MPI_Irecv(buf, r[i].len, MPI_BYTE, r[i].src, r[i].tag, MPI_COMM_WORLD, &req));
            MPI_CHECK(MPI_Cancel(&req));
            MPI_CHECK(MPI_Wait(&req, &st));
            MPI_CHECK(MPI_Test_cancelled(&st, &flag));
            CHECK(flag, "receive %d (source %d tag %d, %d bytes) was not cancelled", i, r[i].src,
                  r[i].tag, r[i].len);
        }
        /* Two receives for tag 32; cancel the first; the message goes to the second. */
        MPI_Request two[2];
        unsigned char *b2 = xmalloc(2 * MiB);
        MPI_CHECK(MPI_Irecv(buf, 2 * MiB, MPI_BYTE, 0, 32, MPI_COMM_WORLD, &two[0]));
        MPI_CHECK(MPI_Irecv(b2, 2 * MiB, MPI_BYTE, 0, 32, MPI_COMM_WORLD, &two[1]));
        MPI_CHECK(MPI_Cancel(&two[0]));
        MPI_CHECK(MPI_Wait(&two[0], &st));
        MPI_CHECK(MPI_Test_cancelled(&st, &flag));
        CHECK(flag, "the first of two tag-32 receives was not cancelled");
        MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD)); /* now rank 0 sends */
        MPI_CHECK(MPI_Recv(buf, 100, MPI_BYTE, 0, 30, MPI_COMM_WORLD, &st));
        EXPECT_MSG(buf, &st, 0, 30, 100, seed(T_CANCEL, 0, 1, 30), "tag 30 after cancel");
        MPI_CHECK(MPI_Wait(&two[1], &st));
        MPI_CHECK(MPI_Test_cancelled(&st, &flag));
        CHECK(!flag, "the second tag-32 receive reports cancelled");
        EXPECT_MSG(b2, &st, 0, 32, 2 * MiB, seed(T_CANCEL, 0, 1, 32), "tag 32 after cancel");
        MPI_CHECK(MPI_Recv(buf, 2 * MiB, MPI_BYTE, 0, 31, MPI_COMM_WORLD, &st));
        EXPECT_MSG(buf, &st, 0, 31, 2 * MiB, seed(T_CANCEL, 0, 1, 31), "tag 31 after cancel");
        free(b2);
    } else {
        MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
        if (rank == 0) {
            const struct {
                int tag, len;
            } m[] = {{30, 100}, {32, 2 * MiB}, {31, 2 * MiB}};
            for (int i = 0; i < 3; i++) {
                fill(buf, (size_t)m[i].len, seed(T_CANCEL, 0, 1, m[i].tag));
                MPI_CHECK(MPI_Send(buf, m[i].len, MPI_BYTE, 1, m[i].tag, MPI_COMM_WORLD));
            }
        }
    }
    free(buf);
}

/* A receive smaller than the message fails with MPI_ERR_TRUNCATE (eager and
 * rendezvous, blocking and not); the sender completes; later traffic works. */
static void test_truncate(void)
{
    MPI_Comm comm;
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm));
    MPI_CHECK(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
    const struct {
        int tag;
        size_t len;
    } m[] = {
        {40, 1000},   {41, 4 * MiB}, {42, 1000}, {43, 4 * MiB + 9}, /* truncated, then fine */
        {44, 64},     {45, 64},      {46, 64},                      /* Waitall, one truncated */
        {47, 300000},                                               /* Irecv+Wait truncated */
        {48, 8},
    };
    enum { N = sizeof m / sizeof *m };
    if (rank == 0) {
        unsigned char *bufs[N];
        MPI_Request reqs[N];
        MPI_Status sts[N];
        for (int i = 0; i < N; i++) {
            bufs[i] = xmalloc(m[i].len);
            fill(bufs[i], m[i].len, seed(T_TRUNC, 0, 1, m[i].tag));
            MPI_CHECK(MPI_Isend(bufs[i], (int)m[i].len, MPI_BYTE, 1, m[i].tag, comm, &reqs[i]));
        }
        int rc = MPI_Waitall(N, reqs, sts);
        for (int i = 0; rc != MPI_SUCCESS && i < N; i++)
            CHECK(sts[i].MPI_ERROR == MPI_SUCCESS, "send of tag %d failed: %s", m[i].tag,
                  error_text(sts[i].MPI_ERROR));
        MPI_CHECK(rc);
        for (int i = 0; i < N; i++)
            free(bufs[i]);
    } else if (rank == 1) {
        unsigned char *buf = xmalloc(4 * MiB + 9);
        MPI_Status st;
        int rc = MPI_Recv(buf, 100, MPI_BYTE, 0, 40, comm, &st);
        CHECK(error_class(rc) == MPI_ERR_TRUNCATE, "1000 B into 100 B returned %s", error_text(rc));
        rc = MPI_Recv(buf, MiB, MPI_BYTE, 0, 41, comm, &st);
        CHECK(error_class(rc) == MPI_ERR_TRUNCATE, "4 MiB into 1 MiB returned %s", error_text(rc));
        MPI_CHECK(MPI_Recv(buf, 1000, MPI_BYTE, 0, 42, comm, &st));
        EXPECT_MSG(buf, &st, 0, 42, 1000, seed(T_TRUNC, 0, 1, 42), "after truncation");
        MPI_CHECK(MPI_Recv(buf, 4 * MiB + 9, MPI_BYTE, 0, 43, comm, &st));
        EXPECT_MSG(buf, &st, 0, 43, 4 * MiB + 9, seed(T_TRUNC, 0, 1, 43), "after truncation");

        unsigned char b[3][64];
        MPI_Request reqs[3];
        MPI_Status sts[3];
        for (int i = 0; i < 3; i++)
            MPI_CHECK(MPI_Irecv(b[i], i == 1 ? 32 : 64, MPI_BYTE, 0, 44 + i, comm, &reqs[i]));
        rc = MPI_Waitall(3, reqs, sts);
        CHECK(error_class(rc) == MPI_ERR_IN_STATUS, "Waitall with one truncated returned %s",
              error_text(rc));
        CHECK(error_class(sts[1].MPI_ERROR) == MPI_ERR_TRUNCATE, "truncated one's status: %s",
              error_text(sts[1].MPI_ERROR));
        for (int i = 0; i < 3; i += 2) {
            CHECK(sts[i].MPI_ERROR == MPI_SUCCESS, "status %d: %s", i,
                  error_text(sts[i].MPI_ERROR));
            EXPECT_MSG(b[i], &sts[i], 0, 44 + i, 64, seed(T_TRUNC, 0, 1, 44 + i),
                       "Waitall beside a truncated receive");
        }

        MPI_Request req;
        MPI_CHECK(MPI_Irecv(buf, 1000, MPI_BYTE, 0, 47, comm, &req));
        rc = MPI_Wait(&req, &st);
        CHECK(error_class(rc) == MPI_ERR_TRUNCATE,
              "300000 B into Irecv of 1000 B: Wait "
              "returned %s",
              error_text(rc));
        MPI_CHECK(MPI_Recv(buf, 8, MPI_BYTE, 0, 48, comm, &st));
        EXPECT_MSG(buf, &st, 0, 48, 8, seed(T_TRUNC, 0, 1, 48), "last message");
        free(buf);
    }
    MPI_CHECK(MPI_Comm_free(&comm));
}

/* 1000 non-blocking sends and 1000 receives each way at once, mixed sizes and
 * tags, half the receives posted before the sends and half after. */
#define MANY_N 1000
static size_t many_size(int i)
{
    return i % 4 == 3 ? 65536 + (size_t)i : 8 + (size_t)(i % 7) * 24;
}

static void test_many_outstanding(void)
{
    if (rank > 1) return;
    const int peer = 1 - rank;
    size_t offs[MANY_N + 1];
    offs[0] = 0;
    for (int i = 0; i < MANY_N; i++)
        offs[i + 1] = offs[i] + many_size(i);
    unsigned char *sbuf = xmalloc(offs[MANY_N]), *rbuf = xmalloc(offs[MANY_N]);
    memset(rbuf, 0, offs[MANY_N]);
    MPI_Request *reqs = xmalloc(2 * MANY_N * sizeof *reqs);
    MPI_Status *sts = xmalloc(2 * MANY_N * sizeof *sts);
    for (int i = 0; i < MANY_N; i++)
        fill(sbuf + offs[i], many_size(i), seed(T_MANY, rank, peer, i));
    for (int i = 0; i < MANY_N / 2; i++)
        MPI_CHECK(MPI_Irecv(rbuf + offs[i], (int)many_size(i), MPI_BYTE, peer, i % 17,
                            MPI_COMM_WORLD, &reqs[i]));
    for (int i = 0; i < MANY_N; i++)
        MPI_CHECK(MPI_Isend(sbuf + offs[i], (int)many_size(i), MPI_BYTE, peer, i % 17,
                            MPI_COMM_WORLD, &reqs[MANY_N + i]));
    for (int i = MANY_N / 2; i < MANY_N; i++)
        MPI_CHECK(MPI_Irecv(rbuf + offs[i], (int)many_size(i), MPI_BYTE, peer, i % 17,
                            MPI_COMM_WORLD, &reqs[i]));
    MPI_CHECK(MPI_Waitall(2 * MANY_N, reqs, sts));
    for (int i = 0; i < MANY_N; i++) {
        char what[48];
        snprintf(what, sizeof what, "message %d of %d", i, MANY_N);
        EXPECT_MSG(rbuf + offs[i], &sts[i], peer, i % 17, many_size(i), seed(T_MANY, peer, rank, i),
                   what);
    }
    free(sbuf);
    free(rbuf);
    free(reqs);
    free(sts);
}

/* Large messages both ways at once, page-aligned and not, expected and not. */
static void test_large(void)
{
    if (rank > 1) return;
    const int peer = 1 - rank;
    const size_t len[] = {8 * MiB, 4 * MiB + 13, 16 * MiB};
    const size_t off[] = {0, 3, 1}; /* misalignment of the send and receive buffers */
    for (int k = 0; k < 3; k++) {
        unsigned char *s = xmalloc(len[k] + 16), *r = xmalloc(len[k] + 16);
        unsigned char *sp = s + off[k], *rp = r + (off[k] ? off[k] + 2 : 0);
        MPI_Request reqs[2];
        MPI_Status st[2];
        fill(sp, len[k], seed(T_LARGE, rank, peer, k));
        memset(r, 0, len[k] + 16);
        if (k == 2) { /* the receive is posted after the data has been offered */
            MPI_CHECK(MPI_Isend(sp, (int)len[k], MPI_BYTE, peer, 60 + k, MPI_COMM_WORLD, &reqs[1]));
            MPI_CHECK(MPI_Send(NULL, 0, MPI_BYTE, peer, 59, MPI_COMM_WORLD));
            MPI_CHECK(MPI_Recv(NULL, 0, MPI_BYTE, peer, 59, MPI_COMM_WORLD, MPI_STATUS_IGNORE));
            MPI_CHECK(MPI_Irecv(rp, (int)len[k], MPI_BYTE, MPI_ANY_SOURCE, 60 + k, MPI_COMM_WORLD,
                                &reqs[0]));
        } else {
            MPI_CHECK(MPI_Irecv(rp, (int)len[k], MPI_BYTE, peer, 60 + k, MPI_COMM_WORLD, &reqs[0]));
            MPI_CHECK(MPI_Isend(sp, (int)len[k], MPI_BYTE, peer, 60 + k, MPI_COMM_WORLD, &reqs[1]));
        }
        MPI_CHECK(MPI_Waitall(2, reqs, st));
        char what[48];
        snprintf(what, sizeof what, "%zu-byte message at offset %zu", len[k], off[k]);
        EXPECT_MSG(rp, &st[0], peer, 60 + k, len[k], seed(T_LARGE, peer, rank, k), what);
        for (unsigned char *p = r; p < rp; p++)
            CHECK(*p == 0, "%s: byte before the receive buffer written", what);
        for (size_t i = 0; i < 4; i++)
            CHECK(rp[len[k] + i] == 0, "%s: byte %zu past the receive buffer written", what, i);
        free(s);
        free(r);
    }
}

/* MPI_Alltoall and MPI_Alltoallv over every rank, with verified data. */
static void test_alltoall(void)
{
    const int counts[] = {1, 1000, 256 * 1024}; /* ints per pair: up to 1 MiB */
    for (int c = 0; c < 3; c++) {
        int n = counts[c];
        int *s = xmalloc((size_t)n * nranks * sizeof(int));
        int *r = xmalloc((size_t)n * nranks * sizeof(int));
        for (int dst = 0; dst < nranks; dst++)
            for (int i = 0; i < n; i++)
                s[(size_t)dst * n + i] =
                    (int)(mix(((uint64_t)rank << 40) ^ ((uint64_t)dst << 32) ^ (uint64_t)i) &
                          0x7fffffff);
        MPI_CHECK(MPI_Alltoall(s, n, MPI_INT, r, n, MPI_INT, MPI_COMM_WORLD));
        for (int src = 0; src < nranks; src++)
            for (int i = 0; i < n; i++) {
                int want = (int)(mix(((uint64_t)src << 40) ^ ((uint64_t)rank << 32) ^ (uint64_t)i) &
                                 0x7fffffff);
                CHECK(r[(size_t)src * n + i] == want,
                      "Alltoall of %d ints: element %d from rank %d is %d, expected %d", n, i, src,
                      r[(size_t)src * n + i], want);
            }
        free(s);
        free(r);
    }

    /* Alltoallv: rank a sends (a + 2b) * 1000 + 1 bytes to rank b. */
    int *scount = xmalloc(nranks * sizeof(int)), *sdispl = xmalloc(nranks * sizeof(int));
    int *rcount = xmalloc(nranks * sizeof(int)), *rdispl = xmalloc(nranks * sizeof(int));
    int stotal = 0, rtotal = 0;
    for (int p = 0; p < nranks; p++) {
        scount[p] = (rank + 2 * p) * 1000 + 1;
        rcount[p] = (p + 2 * rank) * 1000 + 1;
        sdispl[p] = stotal;
        rdispl[p] = rtotal;
        stotal += scount[p];
        rtotal += rcount[p];
    }
    unsigned char *s = xmalloc((size_t)stotal), *r = xmalloc((size_t)rtotal);
    for (int p = 0; p < nranks; p++)
        fill(s + sdispl[p], (size_t)scount[p], seed(T_ALLTOALL, rank, p, 0));
    MPI_CHECK(
        MPI_Alltoallv(s, scount, sdispl, MPI_BYTE, r, rcount, rdispl, MPI_BYTE, MPI_COMM_WORLD));
    for (int p = 0; p < nranks; p++) {
        char what[48];
        snprintf(what, sizeof what, "Alltoallv block from rank %d", p);
        EXPECT_DATA(r + rdispl[p], (size_t)rcount[p], seed(T_ALLTOALL, p, rank, 0), what);
    }
    free(s);
    free(r);
    free(scount);
    free(sdispl);
    free(rcount);
    free(rdispl);
}

/* Every rank exchanges with every rank (itself included) by Isend/Irecv:
 * round 0 with receives posted first, round 1 with sends first. Some pairs
 * move 2 MiB, others about 1 KB. */
static size_t pair_size(int from, int to)
{
    return (from * 7 + to * 3) % 4 == 0 ? 2 * MiB + (size_t)from : 1000 + (size_t)(10 * from + to);
}

static void test_all_pairs(void)
{
    size_t *roff = xmalloc((nranks + 1) * sizeof *roff),
           *soff = xmalloc((nranks + 1) * sizeof *soff);
    roff[0] = soff[0] = 0;
    for (int p = 0; p < nranks; p++) {
        roff[p + 1] = roff[p] + pair_size(p, rank);
        soff[p + 1] = soff[p] + pair_size(rank, p);
    }
    unsigned char *s = xmalloc(soff[nranks]), *r = xmalloc(roff[nranks]);
    MPI_Request *reqs = xmalloc(2 * nranks * sizeof *reqs);
    MPI_Status *sts = xmalloc(2 * nranks * sizeof *sts);
    for (int round = 0; round < 2; round++) {
        for (int p = 0; p < nranks; p++)
            fill(s + soff[p], pair_size(rank, p), seed(T_ALLPAIRS, rank, p, round));
        memset(r, 0, roff[nranks]);
        for (int k = 0; k < 2; k++) {
            if ((k == 0) == (round == 0))
                for (int i = 0; i < nranks; i++) { /* receive from rank-1, rank-2, ... */
                    int p = (rank - i + nranks) % nranks;
                    MPI_CHECK(MPI_Irecv(r + roff[p], (int)pair_size(p, rank), MPI_BYTE, p, 70,
                                        MPI_COMM_WORLD, &reqs[p]));
                }
            else
                for (int i = 0; i < nranks; i++) { /* send to rank+1, rank+2, ... */
                    int p = (rank + i) % nranks;
                    MPI_CHECK(MPI_Isend(s + soff[p], (int)pair_size(rank, p), MPI_BYTE, p, 70,
                                        MPI_COMM_WORLD, &reqs[nranks + p]));
                }
        }
        MPI_CHECK(MPI_Waitall(2 * nranks, reqs, sts));
        for (int p = 0; p < nranks; p++) {
            char what[64];
            snprintf(what, sizeof what, "round %d, from rank %d", round, p);
            EXPECT_MSG(r + roff[p], &sts[p], p, 70, pair_size(p, rank),
                       seed(T_ALLPAIRS, p, rank, round), what);
        }
    }
    free(s);
    free(r);
    free(roff);
    free(soff);
    free(reqs);
    free(sts);
}

/* The largest tag the library promises (MPI_TAG_UB) must travel intact and
 * match only itself: the transport must carry all of its bits. */
static void test_tag_ub(void)
{
    int *ub = NULL, flag = 0;
    MPI_CHECK(MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag));
    CHECK(flag && *ub >= 32767, "MPI_TAG_UB is %d", flag ? *ub : -1);
    const int tags[] = {*ub, *ub - 1, 0, *ub & 0x5555, *ub >> 1, 1 << 14};
    enum { N = sizeof tags / sizeof *tags };
    if (rank == 0) {
        for (int i = 0; i < N; i++) {
            unsigned char b[32];
            fill(b, sizeof b, seed(T_TAGUB, 0, 1, i));
            MPI_CHECK(MPI_Send(b, sizeof b, MPI_BYTE, 1, tags[i], MPI_COMM_WORLD));
        }
    } else if (rank == 1) {
        for (int i = N - 1; i >= 0; i--) { /* in reverse, each by its exact tag */
            unsigned char b[32];
            MPI_Status st;
            MPI_CHECK(MPI_Recv(b, sizeof b, MPI_BYTE, 0, tags[i], MPI_COMM_WORLD, &st));
            EXPECT_MSG(b, &st, 0, tags[i], sizeof b, seed(T_TAGUB, 0, 1, i), "tag");
        }
    }
}

/* Same source and tag on two communicators: each receive matches only its own
 * communicator's message, whichever was sent first. */
static void test_comm_isolation(void)
{
    MPI_Comm a, b;
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &a));
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &b));
    const size_t len[2] = {100, 3 * MiB};
    for (int k = 0; k < 2; k++) {
        unsigned char *bufs[2] = {xmalloc(len[k]), xmalloc(len[k])};
        if (rank == 0) {
            MPI_Request reqs[2];
            for (int c = 0; c < 2; c++) {
                fill(bufs[c], len[k], seed(T_COMM, 0, c, k));
                MPI_CHECK(MPI_Isend(bufs[c], (int)len[k], MPI_BYTE, 1, 7, c ? b : a, &reqs[c]));
            }
            MPI_CHECK(MPI_Waitall(2, reqs, MPI_STATUSES_IGNORE));
        } else if (rank == 1) {
            MPI_Status st;
            for (int c = 1; c >= 0; c--) { /* b first, although a's was sent first */
                MPI_CHECK(MPI_Recv(bufs[c], (int)len[k], MPI_BYTE, MPI_ANY_SOURCE, MPI_ANY_TAG,
                                   c ? b : a, &st));
                EXPECT_MSG(bufs[c], &st, 0, 7, len[k], seed(T_COMM, 0, c, k),
                           c ? "message on the second communicator"
                             : "message on the first communicator");
            }
        }
        free(bufs[0]);
        free(bufs[1]);
    }
    MPI_CHECK(MPI_Comm_free(&a));
    MPI_CHECK(MPI_Comm_free(&b));
}

/* A synchronous send must not complete before its receive is matched. */
static void test_ssend(void)
{
    const size_t len[2] = {100, 2 * MiB};
    for (int k = 0; k < 2; k++) {
        unsigned char *buf = xmalloc(len[k]);
        if (rank == 0) {
            MPI_Request req;
            int done = 0;
            fill(buf, len[k], seed(T_SSEND, 0, 1, k));
            MPI_CHECK(MPI_Issend(buf, (int)len[k], MPI_BYTE, 1, 50, MPI_COMM_WORLD, &req));
            double until = MPI_Wtime() + 0.1;
            while (MPI_Wtime() < until) {
                MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
                CHECK(!done, "Issend of %zu bytes completed before any receive was posted", len[k]);
            }
            MPI_CHECK(MPI_Send(NULL, 0, MPI_BYTE, 1, 51, MPI_COMM_WORLD));
            MPI_CHECK(MPI_Wait(&req, MPI_STATUS_IGNORE));
        } else if (rank == 1) {
            MPI_Status st;
            MPI_CHECK(MPI_Recv(NULL, 0, MPI_BYTE, 0, 51, MPI_COMM_WORLD, &st));
            MPI_CHECK(MPI_Recv(buf, (int)len[k], MPI_BYTE, 0, 50, MPI_COMM_WORLD, &st));
            EXPECT_MSG(buf, &st, 0, 50, len[k], seed(T_SSEND, 0, 1, k), "Issend");
        }
        free(buf);
    }
}

/* ---- driver ------------------------------------------------------------------ */

struct test {
    const char *name;
    void (*run)(void);
};

static const struct test tests[] = {
    {"message to self", test_self},
    {"zero-byte messages", test_zero_bytes},
    {"MPI_ANY_SOURCE and MPI_ANY_TAG", test_any_source_tag},
    {"non-overtaking order, mixed sizes", test_order},
    {"Probe, Iprobe, Mprobe/Mrecv, Improbe/Imrecv", test_probe},
    {"MPI_Cancel of posted receives", test_cancel},
    {"MPI_ERR_TRUNCATE, then traffic continues", test_truncate},
    {"1000 outstanding Isend/Irecv each way", test_many_outstanding},
    {"large messages (4-16 MiB), misaligned", test_large},
    {"MPI_TAG_UB and other tags", test_tag_ub},
    {"communicator isolation", test_comm_isolation},
    {"synchronous send waits for its receive", test_ssend},
    {"MPI_Alltoall and MPI_Alltoallv", test_alltoall},
    {"all-pairs Isend/Irecv exchange", test_all_pairs},
};

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: mpirun -np 4 %s [-t NAME] [-x NAME]...\n"
            "  -t NAME  run only the tests whose name contains NAME\n"
            "  -x NAME  skip the tests whose name contains NAME (repeatable), e.g. to\n"
            "           leave out a test a transport is known to fail\n"
            "tests:\n",
            prog);
    for (size_t i = 0; i < sizeof tests / sizeof *tests; i++)
        fprintf(stderr, "  %s\n", tests[i].name);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);

    const char *only = NULL, *skip[16];
    int nskip = 0, c, bad_usage = 0;
    opterr = rank == 0; /* one complaint, not one per rank */
    while ((c = getopt(argc, argv, "t:x:h")) != -1) {
        if (c == 't')
            only = optarg;
        else if (c == 'x' && nskip < 16)
            skip[nskip++] = optarg;
        else
            bad_usage = 1;
    }
    if (bad_usage || optind != argc || nranks < 2) {
        if (rank == 0) {
            if (nranks < 2) fprintf(stderr, "mpi_semantics needs at least 2 ranks (4 for all)\n");
            usage(argv[0]);
        }
        MPI_Finalize();
        return 2;
    }
    if (rank == 0 && nranks < 4)
        printf("# %d ranks: the all-to-all tests run but cover more with 4 or more\n", nranks);

    int passed = 0, skipped = 0;
    for (size_t i = 0; i < sizeof tests / sizeof *tests; i++) {
        int run = !only || strstr(tests[i].name, only);
        for (int k = 0; k < nskip; k++)
            if (strstr(tests[i].name, skip[k])) run = 0;
        if (!run) {
            skipped++;
            if (rank == 0) printf("skipped - %s\n", tests[i].name);
            continue;
        }
        current_test = tests[i].name;
        MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
        double t0 = MPI_Wtime();
        tests[i].run();
        MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
        passed++;
        if (rank == 0) {
            printf("passed - %s (%.2f s)\n", tests[i].name, MPI_Wtime() - t0);
            fflush(stdout);
        }
    }
    if (rank == 0) {
        if (skipped)
            printf("%d passed, 0 failed, %d skipped\n", passed, skipped);
        else
            printf("%d passed, 0 failed\n", passed);
    }
    MPI_Finalize();
    return 0;
}
