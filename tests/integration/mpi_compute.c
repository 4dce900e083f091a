/*
 * mpi_compute: ranks that alternate compute phases (no MPI calls at all for
 * seconds) with communication, the way real MPI codes run. Every rank sends
 * an eager-sized and a rendezvous-sized message to every other rank each
 * round; some ranks stop calling MPI at the worst moments:
 *
 *   round 0  first contact: the last rank computes before its first MPI call
 *            (a late starter); rank 0 computes right after posting its first
 *            sends (its connection requests are out, its answers not read)
 *   round 1  rank 1 computes in the middle of its rendezvous transfers
 *            (after a few MPI_Test calls)
 *   round 2  every rank computes after posting: nobody is listening
 *   round 3+ rank (round % n) computes after posting
 *
 * Every message is checked byte for byte and in order (two messages per pair
 * and round share a tag, so a reordering is seen). Errors are returned
 * (MPI_ERRORS_RETURN), reported with the rank and round, and abort the job.
 *
 *   mpirun -np 4 --mca pml cm --mca mtl ofi --mca mtl_ofi_provider_include mlx4 \
 *          -x FI_PROVIDER_PATH=build/plugin -x FI_MLX4_SIM=1 build/tests/mpi_compute -c 60
 *
 * Options: -c SECONDS  length of a compute phase (default 1.0)
 *          -r ROUNDS   rounds (default 4)
 *          -e BYTES    eager-sized message (default 100)
 *          -z BYTES    rendezvous-sized message (default 1 MiB)
 * The last line on success is "compute: R rounds of S s, N messages verified".
 */
#include <mpi.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int rank, nranks, round_no = -1;

#define CHECK_MPI(call)                                                                            \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ != MPI_SUCCESS) {                                                                  \
            char s_[MPI_MAX_ERROR_STRING];                                                         \
            int l_ = 0;                                                                            \
            MPI_Error_string(rc_, s_, &l_);                                                        \
            fprintf(stderr, "rank %d round %d: %s failed: %s\n", rank, round_no, #call, s_);       \
            fflush(stderr);                                                                        \
            MPI_Abort(MPI_COMM_WORLD, 1);                                                          \
        }                                                                                          \
    } while (0)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The compute phase: no MPI call for this long. (It sleeps rather than spins
 * so that oversubscribed ranks leave the cores to the others; to the
 * provider both are the same: nobody calls into it.) */
static void compute(double seconds)
{
    double end = now() + seconds;
    while (now() < end) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
}

static uint8_t byte_at(int rnd, int src, int dst, int k, size_t i)
{
    return (uint8_t)(i * 7 + (size_t)rnd * 31 + (size_t)src * 101 + (size_t)dst * 13 +
                     (size_t)k * 3 + (i >> 10));
}

static void fill(uint8_t *b, size_t len, int rnd, int src, int dst, int k)
{
    for (size_t i = 0; i < len; ++i)
        b[i] = byte_at(rnd, src, dst, k, i);
}

static void verify(const uint8_t *b, size_t len, int rnd, int src, int dst, int k)
{
    for (size_t i = 0; i < len; ++i)
        if (b[i] != byte_at(rnd, src, dst, k, i)) {
            fprintf(stderr,
                    "rank %d round %d: message %d from rank %d wrong at byte %zu of %zu "
                    "(0x%02x, expected 0x%02x)\n",
                    rank, rnd, k, src, i, len, b[i], byte_at(rnd, src, dst, k, i));
            fflush(stderr);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
}

int main(int argc, char **argv)
{
    double seconds = 1.0;
    int rounds = 4;
    size_t small = 100, large = 1u << 20;
    int opt;
    while ((opt = getopt(argc, argv, "c:r:e:z:")) != -1) {
        switch (opt) {
        case 'c':
            seconds = atof(optarg);
            break;
        case 'r':
            rounds = atoi(optarg);
            break;
        case 'e':
            small = (size_t)atol(optarg);
            break;
        case 'z':
            large = (size_t)atol(optarg);
            break;
        default:
            fprintf(stderr, "usage: %s [-c seconds] [-r rounds] [-e bytes] [-z bytes]\n", argv[0]);
            return 2;
        }
    }
    MPI_Init(&argc, &argv);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    if (nranks < 2) {
        fprintf(stderr, "mpi_compute needs at least 2 ranks\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    const int peers = nranks - 1, per_pair = 2; /* an eager-sized, then a rendezvous-sized one */
    const size_t sizes[2] = {small, large};
    uint8_t **sbuf = calloc((size_t)peers * per_pair, sizeof *sbuf);
    uint8_t **rbuf = calloc((size_t)peers * per_pair, sizeof *rbuf);
    MPI_Request *req = calloc((size_t)peers * per_pair * 2, sizeof *req);
    if (!sbuf || !rbuf || !req) MPI_Abort(MPI_COMM_WORLD, 3);
    for (int i = 0; i < peers * per_pair; ++i) {
        sbuf[i] = malloc(sizes[i % per_pair]);
        rbuf[i] = malloc(sizes[i % per_pair]);
        if (!sbuf[i] || !rbuf[i]) MPI_Abort(MPI_COMM_WORLD, 3);
    }
    long verified = 0;
    double t0 = now();
    for (round_no = 0; round_no < rounds; ++round_no) {
        const int rnd = round_no;
        const int away = rnd == 2 ? -2 : rnd % nranks;        /* -2: everybody */
        if (rnd == 0 && rank == nranks - 1) compute(seconds); /* late starter */
        int nreq = 0;
        /* Receives first, both messages of a pair under one tag: order matters. */
        for (int p = 0, i = 0; p < nranks; ++p) {
            if (p == rank) continue;
            for (int k = 0; k < per_pair; ++k, ++i) {
                memset(rbuf[i], 0, sizes[k]);
                CHECK_MPI(MPI_Irecv(rbuf[i], (int)sizes[k], MPI_BYTE, p, rnd, MPI_COMM_WORLD,
                                    &req[nreq++]));
            }
        }
        for (int p = 0, i = 0; p < nranks; ++p) {
            if (p == rank) continue;
            for (int k = 0; k < per_pair; ++k, ++i) {
                fill(sbuf[i], sizes[k], rnd, rank, p, k);
                CHECK_MPI(MPI_Isend(sbuf[i], (int)sizes[k], MPI_BYTE, p, rnd, MPI_COMM_WORLD,
                                    &req[nreq++]));
            }
        }
        if (away == -2 || (rank == away && rnd != 1)) compute(seconds);
        if (rank == away && rnd == 1) { /* in the middle of its rendezvous transfers */
            int done = 0;
            for (int t = 0; t < 50 && !done; ++t)
                CHECK_MPI(MPI_Testall(nreq, req, &done, MPI_STATUSES_IGNORE));
            compute(seconds);
        }
        MPI_Status *st = calloc((size_t)nreq, sizeof *st);
        int rc = MPI_Waitall(nreq, req, st);
        if (rc != MPI_SUCCESS) {
            for (int i = 0; i < nreq; ++i)
                if (st[i].MPI_ERROR != MPI_SUCCESS && st[i].MPI_ERROR != MPI_ERR_PENDING) {
                    char s[MPI_MAX_ERROR_STRING];
                    int l = 0;
                    MPI_Error_string(st[i].MPI_ERROR, s, &l);
                    fprintf(stderr, "rank %d round %d: request %d failed: %s\n", rank, rnd, i, s);
                }
            fflush(stderr);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        free(st);
        for (int p = 0, i = 0; p < nranks; ++p) {
            if (p == rank) continue;
            for (int k = 0; k < per_pair; ++k, ++i) {
                verify(rbuf[i], sizes[k], rnd, p, rank, k);
                ++verified;
            }
        }
    }
    long total = 0;
    CHECK_MPI(MPI_Reduce(&verified, &total, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD));
    if (rank == 0)
        printf("compute: %d rounds of %.2f s, %ld messages verified in %.1f s\n", rounds, seconds,
               total, now() - t0);
    for (int i = 0; i < peers * per_pair; ++i) {
        free(sbuf[i]);
        free(rbuf[i]);
    }
    free(sbuf);
    free(rbuf);
    free(req);
    MPI_Finalize();
    return 0;
}
