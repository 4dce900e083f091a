/*
 * bench_rails: how fast a libfabric provider moves large transfers between two
 * processes on this host, and its 8-byte message rate: the mlx4 provider's
 * rail-striping benchmark. It uses only libfabric's public API and
 * fi_ext_mlx4.h, so it runs unchanged over other providers (shm,
 * 'tcp;ofi_rxm') for comparison.
 *
 * The program forks before any fi_* call; parent and child each open an
 * FI_EP_RDM endpoint on the same domain and exchange endpoint names, memory
 * keys and results over a socketpair. The parent times; the child is its peer:
 *
 *   tagged  the child fi_tsend()s SIZE-byte messages, WINDOW in flight; the
 *           parent keeps WINDOW fi_trecv()s posted (above the eager limit the
 *           mlx4 provider's rendezvous RDMA-READs into the posted buffer).
 *           Timed at the receiver, from its first post to its last completion.
 *   read    the parent fi_read()s SIZE bytes from the child's registered
 *           buffer, WINDOW in flight, timed from first post to last completion.
 *   write   the parent fi_write()s SIZE bytes into the child's buffer, the
 *           same way; a final tagged message then tells the child to check them.
 *   rate    the child sends 8-byte tagged messages (fi_tinject) in windows of
 *           64 that the parent acknowledges; messages per second at the parent.
 *
 * Every byte of the first transfer of each test and size (an untimed warm-up)
 * and of the last WINDOW transfers of every timed pass is checked. Senders
 * also write the pass and iteration number into one word per 4 KiB of every
 * transfer, and receiving buffers are poisoned first, so a page that a
 * transfer failed to deliver shows up. Rate messages carry their sequence
 * number, checked on every message.
 *
 * Usage:
 *   FI_PROVIDER_PATH=build/plugin FI_MLX4_SIM='mlx4_0:ib/fdr;mlx4_1:ib/qdr' \
 *       build/examples/bench_rails -p mlx4 -d mlx4_0+mlx4_1 -s 4M,16M
 *   build/examples/bench_rails -p shm -t tagged,read -s 64M
 *
 * Options:
 *   -p PROV     provider (default mlx4; e.g. shm, 'tcp;ofi_rxm')
 *   -d DOMAIN   domain name (mlx4_0+mlx4_1, mlx4_0, ...); default the first offered
 *   -f FABRIC   fabric name; default the first offered
 *   -t TESTS    comma-separated, from tagged,read,write,rate (default all four)
 *   -s SIZES    transfer sizes for tagged, read and write, comma-separated, with
 *               suffixes K, M, G (powers of 1024); default 4M,16M,64M
 *   -n ITERS    transfers (rate: messages) per measurement; by default enough to
 *               move 256 MiB and to take at least 0.5 s
 *   -w WINDOW   transfers in flight for tagged, read and write (default 2, max 64)
 *   -T SECONDS  give up after this long, in case something hangs (default 300)
 *
 * Output (stdout; '#' lines are comments), one line per measurement:
 *   result test=tagged size=4194304 iters=64 window=2 seconds=0.8123 MBps=330.4
 *          verified=yes stats=mlx4_0:1:tx=0,rx=167772160,ops=40,failovers=0,weight=0.619,
 *          up=1,striped=1;mlx4_1:1:...
 *   result test=rate size=8 iters=1048576 window=64 seconds=0.5012 msgps=2092138 verified=yes
 * stats=... then the domain's rails (query_rails): rail domain=mlx4_0+mlx4_1 rail=mlx4_0:1
 * effective_gbps=51.99 weight=0.619 rails domain=mlx4_0+mlx4_1 count=2 sum_effective_gbps=83.99
 * MBps is 10^6 bytes per second. stats are query_rail_stats counters, reset
 * before each measurement and summed over both processes: tx = bytes sent or
 * RDMA-written on the rail, rx = bytes RDMA-read over it, ops = work requests,
 * failovers, and the rail's weight and state.
 * Where the provider lacks these extension ops: "stats=n/a", "rails n/a (why)".
 *
 * Exit status: 0 success; 1 a libfabric call failed, data were wrong or the
 * peer process failed (the message on stderr says which); 2 bad usage;
 * 3 timed out (-T).
 *
 * This file holds the tests and the two roles; the plumbing (options, the
 * processes and their socketpair, libfabric objects, data patterns and their
 * checks, rail statistics) is in bench_common.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <rdma/fabric.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_ext_mlx4.h>
#include <rdma/fi_rma.h>
#include <rdma/fi_tagged.h>

#include "bench_common.h"

/* ---- the tests ---------------------------------------------------------- */

/* tagged, parent: receives; returns the seconds from first post to last completion. */
static double tagged_recv(const struct pass *p)
{
    double t0 = now();

    for (uint64_t i = 0; i < p->iters + p->window; i++) {
        unsigned s = i % p->window;
        struct op *op = &fab.rx[s];
        if (i >= p->window) { /* the transfer i - window, in this slot, is complete */
            uint64_t prev = i - p->window;
            wait_op(op);
            if (op->len != p->size || op->tag != make_tag(TAG_DATA, p->number, prev))
                die("tagged transfer %" PRIu64 " completed with %" PRIu64 " bytes, tag "
                    "0x%" PRIx64 " (expected %" PRIu64 ", 0x%" PRIx64 ")",
                    prev, op->len, op->tag, p->size, make_tag(TAG_DATA, p->number, prev));
        }
        if (i < p->iters)
            POST(fi_trecv(fab.ep, slot(&fab.dst, s), p->size, fab.dst.desc, FI_ADDR_UNSPEC,
                          make_tag(TAG_DATA, p->number, i), 0, &op->ctx),
                 op, "fi_trecv");
    }
    return now() - t0;
}

/* tagged, child: sends, stamping each transfer. */
static void tagged_send(const struct pass *p)
{
    for (uint64_t i = 0; i < p->iters; i++) {
        unsigned s = i % p->window;
        struct op *op = &fab.tx[s];
        wait_op(op);
        put_stamps(slot(&fab.src, s), p->size, stamp_word(p->number, i));
        POST(fi_tsend(fab.ep, slot(&fab.src, s), p->size, fab.src.desc, fab.peer,
                      make_tag(TAG_DATA, p->number, i), &op->ctx),
             op, "fi_tsend");
    }
    wait_all(fab.tx, p->window);
}

/* read or write, parent: WINDOW RMA operations in flight. */
static double rma(const struct pass *p)
{
    bool read = p->test == TEST_READ;
    double t0 = now();

    for (uint64_t i = 0; i < p->iters; i++) {
        unsigned s = i % p->window;
        struct op *op = &fab.tx[s];
        uint64_t offset = (uint64_t)s * fab.stride;
        wait_op(op);
        if (read) {
            put_stamps(slot(&fab.dst, s), p->size, POISON_WORD); /* must be read anew */
            POST(fi_read(fab.ep, slot(&fab.dst, s), p->size, fab.dst.desc, fab.peer,
                         fab.peer_src.addr + offset, fab.peer_src.key, &op->ctx),
                 op, "fi_read");
        } else {
            put_stamps(slot(&fab.src, s), p->size, stamp_word(p->number, i));
            POST(fi_write(fab.ep, slot(&fab.src, s), p->size, fab.src.desc, fab.peer,
                          fab.peer_dst.addr + offset, fab.peer_dst.key, &op->ctx),
                 op, "fi_write");
        }
    }
    wait_all(fab.tx, p->window);
    return now() - t0;
}

/* A zero-byte tagged message that must have left before we go on. */
static void send_ctl(uint64_t tag)
{
    POST(fi_tsend(fab.ep, fab.ctl.buf, 0, fab.ctl.desc, fab.peer, tag, &fab.ctl_tx.ctx),
         &fab.ctl_tx, "fi_tsend(control)");
    wait_op(&fab.ctl_tx);
}

static void post_ctl_recv(uint64_t tag)
{
    POST(fi_trecv(fab.ep, fab.ctl.buf + CTL_SIZE / 2, 0, fab.ctl.desc, FI_ADDR_UNSPEC, tag, 0,
                  &fab.ctl_rx.ctx),
         &fab.ctl_rx, "fi_trecv(control)");
}

/* rate, parent: receives windows of 8-byte messages, acknowledges each. */
static double rate_recv(const struct pass *p)
{
    uint64_t windows = p->iters / RATE_WINDOW, tag = make_tag(TAG_DATA, p->number, 0);
    double t0 = now(), t = 0;

    for (uint64_t w = 0; w <= windows; w++) {
        if (w > 0) {
            for (unsigned j = 0; j < RATE_WINDOW; j++) {
                uint64_t seq, want = (w - 1) * RATE_WINDOW + j;
                wait_op(&fab.rx[j]);
                memcpy(&seq, fab.ctl.buf + 8 * j, 8);
                if (fab.rx[j].len != RATE_SIZE || fab.rx[j].tag != tag || seq != want)
                    die("rate message %" PRIu64 ": %" PRIu64 " bytes, tag 0x%" PRIx64
                        ", sequence %" PRIu64 " (out of order or corrupted)",
                        want, fab.rx[j].len, fab.rx[j].tag, seq);
            }
        }
        if (w < windows) {
            for (unsigned j = 0; j < RATE_WINDOW; j++)
                POST(fi_trecv(fab.ep, fab.ctl.buf + 8 * j, RATE_SIZE, fab.ctl.desc, FI_ADDR_UNSPEC,
                              tag, 0, &fab.rx[j].ctx),
                     &fab.rx[j], "fi_trecv");
        } else {
            t = now() - t0;
        }
        if (w > 0) inject(fab.ctl.buf, 0, make_tag(TAG_ACK, p->number, w - 1));
    }
    return t;
}

/* rate, child: windows of 8-byte messages carrying their sequence number. */
static void rate_send(const struct pass *p)
{
    uint64_t windows = p->iters / RATE_WINDOW, tag = make_tag(TAG_DATA, p->number, 0);

    for (uint64_t w = 0; w < windows; w++) {
        post_ctl_recv(make_tag(TAG_ACK, p->number, w));
        for (unsigned j = 0; j < RATE_WINDOW; j++) {
            uint64_t seq = w * RATE_WINDOW + j;
            if (fab.inject_rate) {
                inject(&seq, RATE_SIZE, tag);
                continue;
            }
            wait_op(&fab.tx[j]);
            char *buf = fab.ctl.buf + CTL_SIZE / 4 + 8 * j;
            memcpy(buf, &seq, 8);
            POST(fi_tsend(fab.ep, buf, RATE_SIZE, fab.ctl.desc, fab.peer, tag, &fab.tx[j].ctx),
                 &fab.tx[j], "fi_tsend");
        }
        wait_op(&fab.ctl_rx);
    }
    wait_all(fab.tx, RATE_WINDOW);
}

/* ---- the two roles ------------------------------------------------------ */

/* Parent: runs one pass with the child; returns the measured seconds and the
 * summed per-rail statistics (*nstats 0 when there are none). */
static double run_pass(const struct pass *p, struct fi_mlx4_rail_stats *stats, uint32_t *nstats)
{
    struct peer_report report;
    uint32_t go = 1, ready;
    double seconds = 0;
    bool have_stats;

    sock_send(p, sizeof *p);
    sock_recv(&ready, sizeof ready);
    if (p->test == TEST_TAGGED || p->test == TEST_READ) poison_slots(&fab.dst, p);
    if (p->test == TEST_WRITE)
        for (unsigned s = 0; s < p->window; s++)
            unstamp(slot(&fab.src, s), fab.stride);
    have_stats = stats_reset() == 0;
    sock_send(&go, sizeof go);

    switch (p->test) {
    case TEST_TAGGED:
        seconds = tagged_recv(p);
        check_slots(&fab.dst, p, false);
        break;
    case TEST_READ:
    case TEST_WRITE:
        seconds = rma(p);
        send_ctl(make_tag(TAG_DONE, p->number, 0)); /* the child may now check */
        if (p->test == TEST_READ) check_slots(&fab.dst, p, true);
        break;
    case TEST_RATE:
        seconds = rate_recv(p);
        break;
    }

    sock_recv(&report, sizeof report);
    if (!have_stats || stats_query(stats, nstats) || report.stats_ret) {
        *nstats = 0;
        return seconds;
    }
    stats_add(stats, nstats, report.stats, report.nstats < MAX_RAILS ? report.nstats : MAX_RAILS);
    return seconds;
}

/* Child: serves passes until the parent says quit. */
static void serve(void)
{
    struct pass p;
    struct peer_report report;
    uint32_t go, ready = 1;
    int reset;

    for (;;) {
        sock_recv(&p, sizeof p);
        if (p.quit) return;
        if (p.test >= NUM_TESTS || p.window > MAX_WINDOW ||
            (p.test != TEST_RATE && (p.window > opt.window || p.size > opt.max_size)))
            die("the parent asked for a pass this process was not set up for");
        if (p.test == TEST_TAGGED || p.test == TEST_READ)
            for (unsigned s = 0; s < p.window; s++)
                unstamp(slot(&fab.src, s), fab.stride);
        if (p.test == TEST_READ)
            for (unsigned s = 0; s < p.window; s++)
                put_stamps(slot(&fab.src, s), p.size, stamp_word(p.number, READ_ITER));
        if (p.test == TEST_WRITE) poison_slots(&fab.dst, &p);
        if (p.test == TEST_READ || p.test == TEST_WRITE)
            post_ctl_recv(make_tag(TAG_DONE, p.number, 0));
        reset = stats_reset();
        sock_send(&ready, sizeof ready);
        sock_recv(&go, sizeof go);

        switch (p.test) {
        case TEST_TAGGED:
            tagged_send(&p);
            break;
        case TEST_READ:
        case TEST_WRITE:
            wait_op(&fab.ctl_rx); /* progress for the parent's RMA until it is done */
            if (p.test == TEST_WRITE) check_slots(&fab.dst, &p, false);
            break;
        case TEST_RATE:
            rate_send(&p);
            break;
        }
        memset(&report, 0, sizeof report);
        report.stats_ret = reset ? reset : stats_query(report.stats, &report.nstats);
        sock_send(&report, sizeof report);
    }
}

/* Parent: the iteration count of the first timed pass. */
static uint64_t initial_iters(enum test t, size_t size)
{
    uint64_t n;

    if (opt.iters)
        n = opt.iters;
    else if (t == TEST_RATE)
        n = 256 * RATE_WINDOW;
    else
        n = (TARGET_BYTES + size - 1) / size;
    return n;
}

/* Parent: warm up, then measure, lengthening the pass until it lasts long enough. */
static void measure(enum test t, size_t size, uint32_t *pass_number)
{
    struct fi_mlx4_rail_stats stats[MAX_RAILS];
    uint32_t nstats = 0;
    struct pass p = {.test = t, .size = size};
    double seconds;
    uint64_t iters = initial_iters(t, size);
    unsigned window = t == TEST_RATE ? RATE_WINDOW : opt.window;

    /* Warm-up: connections, registration caches; its data are checked too. */
    p.iters = t == TEST_RATE ? RATE_WINDOW : 1;
    p.window = p.iters < window ? (uint32_t)p.iters : window;
    p.number = ++*pass_number;
    run_pass(&p, stats, &nstats);

    for (;;) {
        if (t == TEST_RATE) iters = (iters + RATE_WINDOW - 1) / RATE_WINDOW * RATE_WINDOW;
        if (iters > MAX_ITERS) iters = MAX_ITERS;
        p.iters = iters;
        p.window = iters < window ? (uint32_t)iters : window;
        p.number = ++*pass_number;
        seconds = run_pass(&p, stats, &nstats);
        if (opt.iters || seconds >= TARGET_SECONDS * 0.9 || iters == MAX_ITERS) break;
        iters =
            (uint64_t)((double)iters * TARGET_SECONDS * 1.1 / (seconds > 1e-6 ? seconds : 1e-6)) +
            1;
    }

    printf("result test=%s size=%zu iters=%" PRIu64 " window=%u seconds=%.4f", test_names[t],
           t == TEST_RATE ? (size_t)RATE_SIZE : size, p.iters, p.window, seconds);
    if (t == TEST_RATE)
        printf(" msgps=%.0f", (double)p.iters / seconds);
    else
        printf(" MBps=%.1f", (double)p.iters * (double)size / seconds / 1e6);
    printf(" verified=yes");
    print_stats(stats, nstats);
    printf("\n");
    fflush(stdout);
}

/* Parent: every chosen test at every size, then the domain's rails. */
static void lead(void)
{
    uint32_t pass_number = 0;
    struct pass quit = {.quit = 1};
    int status;

    printf("# bench_rails: provider %s, fabric %s, domain %s, window %u, pid %d\n",
           fab.info->fabric_attr->prov_name, fab.info->fabric_attr->name,
           fab.info->domain_attr->name, opt.window, (int)getpid());
    if (!EXT_HAS(query_rail_stats) || !EXT_HAS(reset_rail_stats))
        printf("# per-rail statistics n/a: %s\n",
               fab.ext ? "the provider's ops lack query_rail_stats/reset_rail_stats" : fab.ext_why);
    fflush(stdout);
    for (int t = 0; t < NUM_TESTS; t++) {
        if (!opt.run[t]) continue;
        if (t == TEST_RATE)
            measure(TEST_RATE, RATE_SIZE, &pass_number);
        else
            for (int i = 0; i < opt.nsizes; i++)
                measure(t, opt.sizes[i], &pass_number);
    }
    sock_send(&quit, sizeof quit);
    print_rails();

    if (waitpid(proc.child, &status, 0) != proc.child) die("waitpid: %s", strerror(errno));
    proc.child = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status))
        die("the child process failed (status 0x%x)", status);
}

int main(int argc, char **argv)
{
    parse_options(argc, argv);
    fork_peer(); /* before any fi_* call */
    arm_timeout();

    open_objects();
    fab.stride = (opt.max_size + 4095) / 4096 * 4096;
    if (fab.stride == 0) fab.stride = 4096;
    register_region(&fab.src, fab.stride * opt.window, FI_SEND | FI_WRITE | FI_REMOTE_READ, 1);
    register_region(&fab.dst, fab.stride * opt.window, FI_RECV | FI_READ | FI_REMOTE_WRITE, 2);
    register_region(&fab.ctl, CTL_SIZE, FI_SEND | FI_RECV, 3);
    for (unsigned s = 0; s < opt.window; s++)
        fill_body(slot(&fab.src, s), fab.stride);
    connect_peer();

    if (proc.parent)
        lead();
    else
        serve();

    close_objects();
    close(proc.sock);
    return EXIT_SUCCESS;
}
