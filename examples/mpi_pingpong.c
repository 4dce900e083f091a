/*
 * mpi_pingpong: MPI point-to-point latency and bandwidth between two ranks,
 * with every received buffer checked.
 *
 * For each message size (0, 1, 2, 4, ... up to -m, 16 MiB by default):
 *   - latency: ping-pong between rank 0 and rank 1; reported as half the
 *     round-trip time, in microseconds;
 *   - bandwidth: rank 0 sends a window of non-blocking MPI_Isend, rank 1 has
 *     the matching MPI_Irecv posted and answers with one short ack; reported
 *     in MB/s (10^6 bytes per second).
 * With more ranks (an even number), ranks pair up, (0,1), (2,3), ..., and
 * every pair runs the same tests at the same time; the figures are rank 0's
 * pair's, plus the bandwidth of the slowest pair (bw_min).
 * Each size starts with a few untimed warm-up iterations. Iteration counts
 * shrink as messages grow so that a whole run takes a few seconds.
 *
 * Every message carries a pattern derived from (size, iteration, sender rank,
 * slot in the window) and the receiver checks all of its bytes and its length.
 * Filling and checking happen outside the timed part: before each timed
 * iteration rank 1 tells rank 0 with a zero-byte message that it is ready, so
 * neither side's checking is counted as transport time.
 *
 * Usage (any transport Open MPI offers; for this provider):
 *   mpirun -np 2 --mca pml cm --mca mtl ofi --mca mtl_ofi_provider_include mlx4 \
 *          -x FI_PROVIDER_PATH=build/plugin -x FI_MLX4_SIM=1 build/examples/mpi_pingpong
 *   mpirun -np 2 --mca pml ob1 --mca btl self,vader build/examples/mpi_pingpong -m 1M
 *
 * Options:
 *   -n ITERS   ping-pong iterations for small messages (default 1000); larger
 *              sizes and the bandwidth test scale down from it
 *   -m SIZE    largest message, bytes; suffixes K, M, G (powers of 1024)
 *   -f SIZE    smallest message other than 0 (default 1): sizes are 0, then
 *              SIZE, 2 x SIZE, ... up to -m
 *   -w WINDOW  largest bandwidth window (default 64; smaller for big messages
 *              so that a window fits in 64 MiB)
 *   -q         quiet: CSV only, one header line then one line per size:
 *              size,lat_iters,lat_us,bw_iters,window,bw_MBps,bw_min_MBps
 *
 * Exit status: 0 when every buffer checked out, 1 on any corrupted, short or
 * long message (the first few are described on stderr), 2 on bad usage.
 */
#include <mpi.h>

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { TAG_DATA = 1, TAG_READY = 2, TAG_ACK = 3 };

#define DEFAULT_MAX_SIZE (16u << 20)
#define DEFAULT_ITERS 1000
#define DEFAULT_WINDOW 64
#define WINDOW_BYTES (64u << 20) /* a bandwidth window never spans more than this */
#define LAT_FULL_ITERS_UPTO 8192 /* sizes up to this get the full -n iterations */
#define LAT_MIN_ITERS 10
#define BW_BYTES_PER_SIZE (128u << 20) /* bytes moved per size in the bandwidth test */
#define BW_MIN_ITERS 4
#define MAX_REPORTS 10 /* corrupted buffers described on stderr */

struct options {
    long iters;
    size_t min_size;
    size_t max_size;
    int window;
    int quiet;
};

static int my_rank;
/* Ranks work in pairs (0,1), (2,3), ...: the even rank of a pair measures
 * (sends in the bandwidth test), the odd one echoes and receives. */
static int my_peer;
static int measures;
static long n_checked, n_bad;

/* splitmix64: a cheap, well-mixed 64-bit hash. */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t pattern_seed(size_t size, long iter, int rank, int slot)
{
    return mix(mix(mix((uint64_t)size) ^ (uint64_t)iter) ^ ((uint64_t)rank << 32 | (unsigned)slot));
}

/* Word i of a message is seed + (i+1)*golden: position- and seed-dependent,
 * and fast enough to write and check at memory speed. */
static void fill(unsigned char *buf, size_t len, uint64_t seed)
{
    uint64_t w = seed;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        w += 0x9e3779b97f4a7c15ull;
        memcpy(buf + i, &w, 8);
    }
    w += 0x9e3779b97f4a7c15ull;
    for (; i < len; i++, w >>= 8)
        buf[i] = (unsigned char)w;
}

/* Returns the offset of the first wrong byte, or -1 when all are right. */
static long long first_mismatch(const unsigned char *buf, size_t len, uint64_t seed)
{
    uint64_t w = seed;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        w += 0x9e3779b97f4a7c15ull;
        if (memcmp(buf + i, &w, 8) != 0) break;
    }
    if (i + 8 <= len) { /* find the byte inside the bad word */
        unsigned char want[8];
        memcpy(want, &w, 8);
        for (size_t k = 0; k < 8; k++)
            if (buf[i + k] != want[k]) return (long long)(i + k);
    }
    w += 0x9e3779b97f4a7c15ull;
    for (; i < len; i++, w >>= 8)
        if (buf[i] != (unsigned char)w) return (long long)i;
    return -1;
}

/* Checks one received message: its length, then every byte. */
static void check(const unsigned char *buf, const MPI_Status *st, size_t size, long iter, int from,
                  int slot, const char *test)
{
    int count = -1;
    MPI_Get_count(st, MPI_BYTE, &count);
    n_checked++;
    long long bad = -1;
    if ((size_t)count == size)
        bad = first_mismatch(buf, size, pattern_seed(size, iter, from, slot));
    if ((size_t)count == size && bad < 0) return;
    if (n_bad++ < MAX_REPORTS) {
        if ((size_t)count != size)
            fprintf(stderr,
                    "rank %d: %s: size %zu, iteration %ld, slot %d: received %d bytes instead "
                    "of %zu\n",
                    my_rank, test, size, iter, slot, count, size);
        else
            fprintf(stderr,
                    "rank %d: %s: size %zu, iteration %ld, slot %d: wrong data at byte %lld "
                    "(0x%02x)\n",
                    my_rank, test, size, iter, slot, bad, buf[bad]);
    }
}

static void *alloc_buffer(size_t len)
{
    void *p = NULL;
    if (posix_memalign(&p, 4096, len ? len : 1) != 0) {
        fprintf(stderr, "rank %d: cannot allocate %zu bytes\n", my_rank, len);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    memset(p, 0, len); /* fault the pages in now, not while timing */
    return p;
}

static long lat_iters(const struct options *o, size_t size)
{
    if (size <= LAT_FULL_ITERS_UPTO) return o->iters;
    long n = (long)((double)o->iters * LAT_FULL_ITERS_UPTO / (double)size);
    return n < LAT_MIN_ITERS ? LAT_MIN_ITERS : n;
}

static int window_for(const struct options *o, size_t size)
{
    size_t w = size ? WINDOW_BYTES / size : (size_t)o->window;
    if (w > (size_t)o->window) w = (size_t)o->window;
    return w < 1 ? 1 : (int)w;
}

static long bw_iters(const struct options *o, size_t size, int window)
{
    long cap = o->iters / 10 < BW_MIN_ITERS ? BW_MIN_ITERS : o->iters / 10;
    long n = size ? (long)(BW_BYTES_PER_SIZE / ((double)size * window)) : cap;
    if (n > cap) n = cap;
    return n < BW_MIN_ITERS ? BW_MIN_ITERS : n;
}

static long warmup(long iters)
{
    long w = iters / 10;
    return w < 2 ? 2 : w;
}

/* Half round trip, in seconds, averaged over the timed iterations. Rank 0
 * measures; rank 1 echoes. Iterations below zero are the warm-up. */
static double run_latency(size_t size, long iters, unsigned char *sbuf, unsigned char *rbuf)
{
    const int peer = my_peer;
    double total = 0;
    MPI_Status st;
    for (long i = -warmup(iters); i < iters; i++) {
        fill(sbuf, size, pattern_seed(size, i, my_rank, 0));
        if (measures) {
            MPI_Recv(NULL, 0, MPI_BYTE, peer, TAG_READY, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            double t0 = MPI_Wtime();
            MPI_Send(sbuf, (int)size, MPI_BYTE, peer, TAG_DATA, MPI_COMM_WORLD);
            MPI_Recv(rbuf, (int)size, MPI_BYTE, peer, TAG_DATA, MPI_COMM_WORLD, &st);
            double t = MPI_Wtime() - t0;
            if (i >= 0) total += t;
        } else {
            MPI_Send(NULL, 0, MPI_BYTE, peer, TAG_READY, MPI_COMM_WORLD);
            MPI_Recv(rbuf, (int)size, MPI_BYTE, peer, TAG_DATA, MPI_COMM_WORLD, &st);
            MPI_Send(sbuf, (int)size, MPI_BYTE, peer, TAG_DATA, MPI_COMM_WORLD);
        }
        check(rbuf, &st, size, i, peer, 0, "latency");
    }
    return total / (double)iters / 2;
}

/* Seconds spent in the timed windows (the measuring rank's clock). It sends,
 * its peer receives into `window` separate buffers and acks each window. */
static double run_bandwidth(size_t size, long iters, int window, unsigned char *wbuf)
{
    MPI_Request *reqs = malloc(sizeof *reqs * (size_t)window);
    MPI_Status *sts = malloc(sizeof *sts * (size_t)window);
    double total = 0;
    if (!reqs || !sts) MPI_Abort(MPI_COMM_WORLD, 2);
    for (long i = -warmup(iters); i < iters; i++) {
        if (measures) {
            for (int w = 0; w < window; w++)
                fill(wbuf + (size_t)w * size, size, pattern_seed(size, i, my_rank, w + 1));
            MPI_Recv(NULL, 0, MPI_BYTE, my_peer, TAG_READY, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            double t0 = MPI_Wtime();
            for (int w = 0; w < window; w++)
                MPI_Isend(wbuf + (size_t)w * size, (int)size, MPI_BYTE, my_peer, TAG_DATA,
                          MPI_COMM_WORLD, &reqs[w]);
            MPI_Waitall(window, reqs, MPI_STATUSES_IGNORE);
            MPI_Recv(NULL, 0, MPI_BYTE, my_peer, TAG_ACK, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            double t = MPI_Wtime() - t0;
            if (i >= 0) total += t;
        } else {
            for (int w = 0; w < window; w++)
                MPI_Irecv(wbuf + (size_t)w * size, (int)size, MPI_BYTE, my_peer, TAG_DATA,
                          MPI_COMM_WORLD, &reqs[w]);
            MPI_Send(NULL, 0, MPI_BYTE, my_peer, TAG_READY, MPI_COMM_WORLD);
            MPI_Waitall(window, reqs, sts);
            MPI_Send(NULL, 0, MPI_BYTE, my_peer, TAG_ACK, MPI_COMM_WORLD);
            for (int w = 0; w < window; w++)
                check(wbuf + (size_t)w * size, &sts[w], size, i, my_peer, w + 1, "bandwidth");
        }
    }
    free(reqs);
    free(sts);
    return total;
}

/* The sizes measured: 0, min_size doubling (powers of two by default), then
 * max_size itself if the doubling steps over it. */
static size_t next_size(size_t size, const struct options *o)
{
    if (size == o->max_size) return 0; /* done */
    size = size == 0 ? o->min_size : size * 2;
    return size > o->max_size ? o->max_size : size;
}

static int parse_size(const char *s, size_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 0);
    switch (*end) {
    case 'k':
    case 'K':
        v <<= 10;
        end++;
        break;
    case 'm':
    case 'M':
        v <<= 20;
        end++;
        break;
    case 'g':
    case 'G':
        v <<= 30;
        end++;
        break;
    default:
        break;
    }
    if (end == s || *end != '\0' || v > (unsigned long long)INT32_MAX) return -1;
    *out = (size_t)v;
    return 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
    int c;
    opterr = my_rank == 0; /* one complaint, not one per rank */
    while ((c = getopt(argc, argv, "n:f:m:w:qh")) != -1) {
        switch (c) {
        case 'n':
            o->iters = strtol(optarg, NULL, 0);
            if (o->iters < 1) return -1;
            break;
        case 'm':
            if (parse_size(optarg, &o->max_size) != 0) return -1;
            break;
        case 'f':
            if (parse_size(optarg, &o->min_size) != 0 || o->min_size == 0) return -1;
            break;
        case 'w':
            o->window = atoi(optarg);
            if (o->window < 1) return -1;
            break;
        case 'q':
            o->quiet = 1;
            break;
        default:
            return -1;
        }
    }
    return optind == argc ? 0 : -1;
}

static void human_size(size_t n, char *out, size_t len)
{
    if (n >= (1u << 20) && n % (1u << 20) == 0)
        snprintf(out, len, "%zu MiB", n >> 20);
    else if (n >= 1024 && n % 1024 == 0)
        snprintf(out, len, "%zu KiB", n >> 10);
    else
        snprintf(out, len, "%zu B", n);
}

static void print_banner(const struct options *o)
{
    char lib[MPI_MAX_LIBRARY_VERSION_STRING], host[2][MPI_MAX_PROCESSOR_NAME] = {{0}};
    int len;
    MPI_Get_library_version(lib, &len);
    lib[strcspn(lib, ",\n")] = '\0';
    MPI_Get_processor_name(host[0], &len);
    if (my_rank == 1)
        MPI_Send(host[0], MPI_MAX_PROCESSOR_NAME, MPI_CHAR, 0, TAG_DATA, MPI_COMM_WORLD);
    else if (my_rank == 0)
        MPI_Recv(host[1], MPI_MAX_PROCESSOR_NAME, MPI_CHAR, 1, TAG_DATA, MPI_COMM_WORLD,
                 MPI_STATUS_IGNORE);
    if (my_rank != 0 || o->quiet) return;
    printf("# mpi_pingpong: %s; rank 0 on %s, rank 1 on %s\n", lib, host[0], host[1]);
    printf("# latency = half round trip; bandwidth = window of MPI_Isend, 1 MB = 10^6 B;\n"
           "# every received byte is checked\n");
    printf("%10s %8s %8s %12s %8s %6s %14s\n", "size", "", "iters", "latency(us)", "iters",
           "window", "bandwidth(MB/s)");
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int nranks;
    MPI_Comm_rank(MPI_COMM_WORLD, &my_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    my_peer = my_rank ^ 1;
    measures = (my_rank & 1) == 0;

    struct options o = {DEFAULT_ITERS, 1, DEFAULT_MAX_SIZE, DEFAULT_WINDOW, 0};
    if (parse_options(argc, argv, &o) != 0) {
        if (my_rank == 0)
            fprintf(stderr,
                    "usage: mpirun -np 2 (or any even number) %s [-n iters] [-f min_size[K|M|G]] "
                    "[-m max_size[K|M|G]] [-w window] [-q]\n",
                    argv[0]);
        MPI_Finalize();
        return 2;
    }
    if (nranks < 2 || nranks % 2) {
        if (my_rank == 0)
            fprintf(stderr, "mpi_pingpong needs an even number of ranks, not %d\n", nranks);
        MPI_Finalize();
        return 2;
    }

    size_t wbytes = 0;
    for (size_t s = next_size(0, &o); s != 0; s = next_size(s, &o)) {
        size_t b = s * (size_t)window_for(&o, s);
        if (b > wbytes) wbytes = b;
    }
    unsigned char *sbuf = alloc_buffer(o.max_size);
    unsigned char *rbuf = alloc_buffer(o.max_size);
    unsigned char *wbuf = alloc_buffer(wbytes);

    print_banner(&o);
    if (my_rank == 0 && o.quiet)
        printf("size,lat_iters,lat_us,bw_iters,window,bw_MBps,bw_min_MBps\n");

    for (size_t size = 0;;) {
        long li = lat_iters(&o, size);
        int win = window_for(&o, size);
        long bi = bw_iters(&o, size, win);
        double lat = run_latency(size, li, sbuf, rbuf);
        double secs = size ? run_bandwidth(size, bi, win, wbuf) : 0;
        double mbps = secs > 0 ? (double)size * win * bi / secs / 1e6 : 0;
        /* The slowest pair took the longest (echoing ranks add 0). */
        double mine = measures ? secs : 0, slowest = 0;
        MPI_Reduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        double min_mbps = slowest > 0 ? (double)size * win * bi / slowest / 1e6 : 0;
        if (my_rank == 0) {
            char h[32];
            human_size(size, h, sizeof h);
            if (o.quiet)
                printf("%zu,%ld,%.3f,%ld,%d,%.1f,%.1f\n", size, li, lat * 1e6, size ? bi : 0,
                       size ? win : 0, mbps, min_mbps);
            else if (size && nranks > 2)
                printf("%10zu %8s %8ld %12.2f %8ld %6d %14.1f (slowest of %d pairs %.1f)\n", size,
                       h, li, lat * 1e6, bi, win, mbps, nranks / 2, min_mbps);
            else if (size)
                printf("%10zu %8s %8ld %12.2f %8ld %6d %14.1f\n", size, h, li, lat * 1e6, bi, win,
                       mbps);
            else
                printf("%10zu %8s %8ld %12.2f %8s %6s %14s\n", size, h, li, lat * 1e6, "-", "-",
                       "-");
            fflush(stdout);
        }
        if ((size = next_size(size, &o)) == 0) break;
    }

    long totals[2] = {n_checked, n_bad}, sums[2];
    MPI_Reduce(totals, sums, 2, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    MPI_Bcast(sums, 2, MPI_LONG, 0, MPI_COMM_WORLD);
    if (my_rank == 0) {
        if (sums[1] == 0) {
            if (!o.quiet) printf("# all %ld received messages verified\n", sums[0]);
        } else {
            fprintf(stderr, "mpi_pingpong: FAILED: %ld of %ld received messages were wrong\n",
                    sums[1], sums[0]);
        }
    }
    free(sbuf);
    free(rbuf);
    free(wbuf);
    MPI_Finalize();
    return sums[1] == 0 ? 0 : 1;
}
