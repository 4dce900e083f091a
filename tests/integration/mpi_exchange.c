/*
 * mpi_exchange: every rank sends large messages to every other rank and
 * checks every byte it receives, so that each rank's traffic covers the
 * rendezvous path with every peer. Used by test_mpi_rails.sh, which reads
 * the provider's per-rail statistics (FI_MLX4_RAIL_STATS) afterwards.
 *
 *   mpirun -np 4 ... mpi_exchange [-s SIZE] [-n COUNT]
 *
 * First a warm-up: one 8-byte message to and from every peer, then 100
 * barriers. The provider connects a peer's first rail on first contact and
 * its other rails after that, while both sides make progress; a large
 * message planned before they are up goes over the rails already connected,
 * so the warm-up keeps the measured split about striping, not about
 * connection timing. The warm-up bytes go on one rail per peer; they are
 * a few hundred bytes against megabytes.
 *
 * Then, for shift d = 1 .. nranks-1, rank r sends COUNT messages of SIZE
 * bytes (default 8 of 4 MiB) to (r + d) mod nranks and receives as many from
 * (r - d) mod nranks, all posted at once. Exit status 0 when every message
 * arrived whole and right ("exchange ok: ..." on rank 0), 1 otherwise.
 */
#include <mpi.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t word(int from, int to, int msg, size_t i)
{
    uint64_t x = ((uint64_t)from << 48) ^ ((uint64_t)to << 32) ^ ((uint64_t)msg << 24) ^ i;
    x *= 0x9e3779b97f4a7c15ull;
    return x ^ (x >> 29);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, n;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    size_t size = 4u << 20;
    int count = 8, c;
    while ((c = getopt(argc, argv, "s:n:")) != -1) {
        if (c == 's')
            size = strtoull(optarg, NULL, 0);
        else if (c == 'n')
            count = atoi(optarg);
        else {
            if (rank == 0) fprintf(stderr, "usage: mpi_exchange [-s SIZE] [-n COUNT]\n");
            MPI_Finalize();
            return 2;
        }
    }
    size_t words = size / 8;
    if (words == 0 || count <= 0) {
        if (rank == 0) fprintf(stderr, "mpi_exchange: SIZE >= 8 and COUNT >= 1\n");
        MPI_Finalize();
        return 2;
    }
    uint64_t *sbuf = malloc((size_t)count * words * 8);
    uint64_t *rbuf = malloc((size_t)count * words * 8);
    MPI_Request *req = malloc(2 * (size_t)count * sizeof *req);
    if (!sbuf || !rbuf || !req) {
        fprintf(stderr, "rank %d: out of memory\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (int d = 1; d < n; ++d) {
        uint64_t out = (uint64_t)rank, in = 0;
        MPI_Sendrecv(&out, 1, MPI_UINT64_T, (rank + d) % n, 0, &in, 1, MPI_UINT64_T,
                     (rank - d + n) % n, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
    for (int i = 0; i < 100; ++i)
        MPI_Barrier(MPI_COMM_WORLD);

    long bad = 0, checked = 0;
    for (int d = 1; d < n; ++d) {
        int to = (rank + d) % n, from = (rank - d + n) % n;
        for (int m = 0; m < count; ++m)
            for (size_t i = 0; i < words; ++i)
                sbuf[(size_t)m * words + i] = word(rank, to, m, i);
        memset(rbuf, 0, (size_t)count * words * 8);
        for (int m = 0; m < count; ++m) {
            MPI_Irecv(rbuf + (size_t)m * words, (int)words, MPI_UINT64_T, from, m, MPI_COMM_WORLD,
                      &req[m]);
            MPI_Isend(sbuf + (size_t)m * words, (int)words, MPI_UINT64_T, to, m, MPI_COMM_WORLD,
                      &req[count + m]);
        }
        MPI_Waitall(2 * count, req, MPI_STATUSES_IGNORE);
        for (int m = 0; m < count; ++m) {
            ++checked;
            for (size_t i = 0; i < words; ++i)
                if (rbuf[(size_t)m * words + i] != word(from, rank, m, i)) {
                    if (bad < 5)
                        fprintf(stderr, "rank %d: message %d from %d wrong at word %zu\n", rank, m,
                                from, i);
                    ++bad;
                    break;
                }
        }
    }
    long totals[2] = {checked, bad}, sums[2] = {0, 0};
    MPI_Reduce(totals, sums, 2, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        if (sums[1] == 0)
            printf("exchange ok: %d ranks, %ld messages of %zu bytes checked\n", n, sums[0], size);
        else
            fprintf(stderr, "mpi_exchange: FAILED: %ld of %ld messages wrong\n", sums[1], sums[0]);
    }
    MPI_Bcast(sums, 2, MPI_LONG, 0, MPI_COMM_WORLD);
    free(sbuf);
    free(rbuf);
    free(req);
    MPI_Finalize();
    return sums[1] == 0 ? 0 : 1;
}
