/*
 * bench_msg: what a libfabric provider costs for small tagged messages
 * between processes on this host, and what every connected peer costs it:
 * the provider-level half of examples/bench_engine.sh (bench_device is the
 * device-level half). Uses only libfabric's public API (and fi_ext_mlx4.h to
 * count the mlx4 provider's rails), so it runs unchanged over any provider
 * with FI_EP_RDM and tagged messages: mlx4, shm, 'tcp;ofi_rxm'.
 *
 * The program forks before any fi_* call: the parent is the server, the
 * child its client, and with -N PEERS a third process opens PEERS more
 * endpoints (one domain, CQ and AV). Names travel over socketpairs and are
 * inserted with fi_av_insert. The parent times:
 *
 *   lat   ping-pong of SIZE-byte fi_tsend/fi_trecv (each receive posted
 *         before the message it waits for is sent): one-way latency = round
 *         trip / 2, each round trip timed; the median (and mean, min, 99th
 *         percentile) of ITERS round trips after a warm-up of ITERS/10.
 *   rate  the child sends SIZE-byte tagged messages in windows of WINDOW; the
 *         parent keeps a window of receives posted, reposts each as it
 *         completes, and acknowledges each window with one message, the next
 *         window following the acknowledgement; messages per second at the
 *         parent: WINDOW / the median time from one acknowledgement to the
 *         next (msgps; robust on a shared host) and all messages / all the
 *         time (msgps_all), after a warm-up of a tenth as many.
 *   mem   with -N PEERS: the parent's memory after its endpoint is open and
 *         connected to the client, and again once the PEERS endpoints have
 *         each exchanged a message with it (so their connections exist);
 *         the growth divided by PEERS and by the domain's rails.
 *
 * With -N PEERS, lat runs twice, back to back in the same processes: before
 * the peers connect (reported as peers=0) and after (peers=PEERS); rate runs
 * after. The peers stay connected and idle (their process drives progress
 * every 100 ms: it answers whatever the provider asks of it without taking a
 * core from the timed pair), so the figures show what idle peers cost the
 * server's data path.
 *
 * Every message carries its sequence number in its first 8 bytes and a
 * pattern derived from it in the rest; the receiver checks every byte, the
 * length and tag of every completion, and that messages arrive in order.
 *
 * Usage:
 *   FI_PROVIDER_PATH=build/plugin FI_MLX4_SIM=1 build/examples/bench_msg -p mlx4
 *   build/examples/bench_msg -p shm -t lat,rate
 *   FI_PROVIDER_PATH=build/plugin FI_MLX4_SIM=1 build/examples/bench_msg -t lat,mem -N 63
 *
 * Options:
 *   -p PROV     provider (default mlx4; also shm, 'tcp;ofi_rxm')
 *   -d DOMAIN   domain name; default the first offered
 *   -t TESTS    comma-separated from lat,rate,mem (default lat,rate)
 *   -s SIZE     message size, 8..4096 bytes, a multiple of 8 (default 8)
 *   -n ITERS    latency round trips (default 20000)
 *   -m MESSAGES rate messages (default 524288, rounded down to whole windows)
 *   -w WINDOW   rate window, 1..128 (default 64)
 *   -N PEERS    idle peers connected to the server first (default 0; mem needs >= 1)
 *   -I          send with fi_tinject instead of fi_tsend (SIZE within inject_size)
 *   -a          pin the server and the client to two different CPUs
 *   -T SECONDS  give up after this long (default 120)
 *
 * Output (stdout; '#' lines are comments), one line per measurement:
 *   result test=lat size=8 peers=0 iters=20000 usec=1.912 mean_usec=2.310 min_usec=1.601
 *          p99_usec=6.200 verified=yes
 *   result test=rate size=8 peers=0 iters=524288 window=64 seconds=0.2500 msgps=2197152
 *          msgps_all=2097152 verified=yes
 *   result test=mem peers=63 rails=1 bytes_per_peer_rail=20480 rss=... anon=... shmem=...
 *          shm_own=... (growth per peer per rail, bytes)
 * mem: rss, anon and shmem are the growth of the parent's VmRSS, RssAnon and
 * RssShmem (/proc/self/status); shm_own that of the pages allocated in the
 * software HCA's /dev/shm segments this process created (mlx4fi-sim-UID-PID-*:
 * queues and buffers that peers copy into; 0 for other providers).
 * bytes_per_peer_rail = anon + shm_own: private memory plus this process's
 * own shared segments, each page counted once.
 *
 * Exit status: 0 success; 1 a libfabric call failed, data were wrong or a
 * peer process failed (stderr says which); 2 bad usage; 3 timed out.
 *
 * This file holds the tests, the three roles and main; the plumbing
 * (processes, sockets, libfabric objects, posting, data checks, memory) is
 * in bench_msg_common.c.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <rdma/fabric.h>
#include <rdma/fi_eq.h>
#include <rdma/fi_errno.h>

#include "bench_msg_common.h"

/* ---- the tests ------------------------------------------------------------------- */

static fi_addr_t peer; /* server: the client; client: the server */
#define ACK_SLOT (SLOTS - 1)

static void lat_ping(int fd, unsigned peers)
{
    const uint64_t warm = opt.iters / 10 ? opt.iters / 10 : 1;
    struct fid_ep *ep = fab.eps[0];
    double *rtt = malloc(opt.iters * sizeof *rtt), sum = 0, med;
    uint64_t n = opt.iters;

    if (!rtt) die("out of memory");
    barrier(fd);
    for (uint64_t i = 0; i < warm + opt.iters; i++) {
        double t0 = now();
        post_recv(ep, 0, opt.size, TAG_PONG, i);
        post_send(ep, i % 2, opt.size, peer, TAG_PING, i);
        wait_op(&rx_ops[0]);
        verify(&rx_ops[0], rx_slot(0), opt.size, TAG_PONG, i, "pong");
        if (i >= warm) rtt[i - warm] = now() - t0;
    }
    wait_sends();
    qsort(rtt, n, sizeof *rtt, cmp_double);
    for (uint64_t i = 0; i < n; i++)
        sum += rtt[i];
    med = median_sorted(rtt, n);
    printf("result test=lat size=%zu peers=%u iters=%" PRIu64 " usec=%.3f mean_usec=%.3f "
           "min_usec=%.3f p99_usec=%.3f verified=yes\n",
           opt.size, peers, n, med / 2 * 1e6, sum / (double)n / 2 * 1e6, rtt[0] / 2 * 1e6,
           rtt[n * 99 / 100 < n ? n * 99 / 100 : n - 1] / 2 * 1e6);
    fflush(stdout);
    free(rtt);
}

static void lat_pong(int fd)
{
    const uint64_t warm = opt.iters / 10 ? opt.iters / 10 : 1;
    struct fid_ep *ep = fab.eps[0];

    post_recv(ep, 0, opt.size, TAG_PING, 0);
    barrier(fd);
    for (uint64_t i = 0; i < warm + opt.iters; i++) {
        wait_op(&rx_ops[0]);
        verify(&rx_ops[0], rx_slot(0), opt.size, TAG_PING, i, "ping");
        if (i + 1 < warm + opt.iters) post_recv(ep, 0, opt.size, TAG_PING, i + 1);
        post_send(ep, i % 2, opt.size, peer, TAG_PONG, i);
    }
    wait_sends();
}

/* rate, server: windows of messages, each receive reposted as it completes,
 * each window acknowledged. Returns the seconds in all; per_window (sorted)
 * gets each window's, from one acknowledgement to the next. */
static double rate_recv(int fd, uint64_t windows, double *per_window)
{
    struct fid_ep *ep = fab.eps[0];
    double t0, last;

    for (unsigned j = 0; j < opt.window; j++)
        post_recv(ep, j, opt.size, TAG_DATA, j);
    barrier(fd);
    t0 = last = now();
    for (uint64_t w = 0; w < windows; w++) {
        double t;
        for (unsigned j = 0; j < opt.window; j++) {
            uint64_t seq = w * opt.window + j;
            wait_op(&rx_ops[j]);
            verify(&rx_ops[j], rx_slot(j), opt.size, TAG_DATA, seq, "message");
            if (w + 1 < windows) post_recv(ep, j, opt.size, TAG_DATA, seq + opt.window);
        }
        post_send(ep, ACK_SLOT, 8, peer, TAG_ACK, w);
        t = now();
        per_window[w] = t - last;
        last = t;
    }
    wait_sends();
    qsort(per_window, windows, sizeof *per_window, cmp_double);
    return last - t0;
}

/* rate, client: windows of messages, each window acknowledged before the next. */
static void rate_send(int fd, uint64_t windows)
{
    struct fid_ep *ep = fab.eps[0];

    barrier(fd);
    for (uint64_t w = 0; w < windows; w++) {
        post_recv(ep, ACK_SLOT, 8, TAG_ACK, w);
        for (unsigned j = 0; j < opt.window; j++)
            post_send(ep, j, opt.size, peer, TAG_DATA, w * opt.window + j);
        wait_op(&rx_ops[ACK_SLOT]);
        verify(&rx_ops[ACK_SLOT], rx_slot(ACK_SLOT), 8, TAG_ACK, w, "acknowledgement");
    }
    wait_sends();
}

static void rate(int fd)
{
    const uint64_t windows = opt.messages / opt.window;
    const uint64_t warm = windows / 10 ? windows / 10 : 1;
    double t, *per_window;

    if (role == CLIENT) {
        rate_send(fd, warm);
        rate_send(fd, windows);
        return;
    }
    per_window = malloc(windows * sizeof *per_window);
    if (!per_window) die("out of memory");
    (void)rate_recv(fd, warm, per_window);
    t = rate_recv(fd, windows, per_window);
    printf("result test=rate size=%zu peers=%u iters=%" PRIu64 " window=%u seconds=%.4f msgps=%.0f "
           "msgps_all=%.0f verified=yes\n",
           opt.size, opt.peers, windows * opt.window, opt.window, t,
           opt.window / median_sorted(per_window, windows), (double)(windows * opt.window) / t);
    free(per_window);
    fflush(stdout);
}
/* ---- the idle peers -------------------------------------------------------------- */

static fi_addr_t *crowd_addrs; /* server: the idle peers' addresses */

/* server: connects the peers process's endpoints (each sends a hello, gets a reply). */
static void connect_crowd(void)
{
    int fd = kid_sock[CROWD - 1];
    struct fid_ep *ep = fab.eps[0];
    char ok;

    crowd_addrs = calloc(opt.peers, sizeof *crowd_addrs);
    if (!crowd_addrs) die("out of memory");
    if (recv_names(fd, crowd_addrs, opt.peers) != opt.peers)
        die("the peers process offered fewer than %u names", opt.peers);
    send_names(fd);
    /* Hellos come in any order; each is checked against the address it came
     * from by its number. A window of receives at a time. */
    for (unsigned base = 0; base < opt.peers; base += MAX_WINDOW) {
        unsigned n = opt.peers - base < MAX_WINDOW ? opt.peers - base : MAX_WINDOW;
        for (unsigned j = 0; j < n; j++)
            post_recv(ep, j, 8, TAG_HELLO, base + j);
        for (unsigned j = 0; j < n; j++) {
            wait_op(&rx_ops[j]);
            verify(&rx_ops[j], rx_slot(j), 8, TAG_HELLO, base + j, "hello");
            post_send(ep, j, 8, crowd_addrs[base + j], TAG_REPLY, base + j);
        }
        wait_sends();
    }
    sock_recv(fd, &ok, 1); /* every reply arrived, checked */
}

/* The peers process: opt.peers endpoints, each exchanges one message with the
 * server, then all stay idle (progress every 100 ms) until told to go. */
static void crowd_main(void)
{
    fi_addr_t server;
    char ok = 1;
    unsigned base, j, n;

    /* The software HCA reserves 256 MiB of shared memory per device and
     * process by default, and each mlx4 endpoint takes about 8 MiB of it
     * (its receive and bounce buffers): this process's many endpoints need
     * more. A reservation, not memory: only pages in use cost anything. */
    if (!getenv("FI_MLX4_SIM_ARENA_MB")) {
        char mb[32];
        snprintf(mb, sizeof mb, "%u", 256 + 16 * opt.peers);
        setenv("FI_MLX4_SIM_ARENA_MB", mb, 1);
    }
    open_objects(opt.peers, 1);
    send_names(up_sock);
    if (recv_names(up_sock, &server, 1) != 1) die("no server name");
    for (base = 0; base < opt.peers; base += MAX_WINDOW) {
        n = opt.peers - base < MAX_WINDOW ? opt.peers - base : MAX_WINDOW;
        for (j = 0; j < n; j++) {
            post_recv(fab.eps[base + j], j, 8, TAG_REPLY, base + j);
            post_send(fab.eps[base + j], j, 8, server, TAG_HELLO, base + j);
        }
        for (j = 0; j < n; j++) {
            wait_op(&rx_ops[j]);
            verify(&rx_ops[j], rx_slot(j), 8, TAG_REPLY, base + j, "reply");
        }
        wait_sends();
    }
    sock_send(up_sock, &ok, 1);
    for (;;) {
        struct pollfd pfd = {up_sock, POLLIN, 0};
        struct fi_cq_tagged_entry e[CQ_BATCH];
        ssize_t r = fi_cq_read(fab.cq, e, CQ_BATCH);
        if (r == -FI_EAVAIL) cq_error();
        if (r < 0 && r != -FI_EAGAIN) die("fi_cq_read failed: %s", fi_strerror((int)-r));
        if (r > 0) die("an idle peer got %zd unexpected completion(s)", r);
        if (poll(&pfd, 1, 100) > 0) break; /* the server says go (or is gone) */
    }
    sock_recv(up_sock, &ok, 1);
    close_objects();
}

/* ---- the client and the server --------------------------------------------------- */

static void server_main(void)
{
    int fd = kid_sock[CLIENT - 1];
    struct mem m0, m1;

    if (opt.pin) pin_self();
    open_objects(1, (size_t)opt.peers + 1);
    if (recv_names(fd, &peer, 1) != 1) die("no client name");
    send_names(fd);
    printf("# bench_msg: provider %s, domain %s, %u rail(s), size %zu, %s, %u idle peer(s), "
           "pid %d\n",
           fab.info->fabric_attr->prov_name, fab.info->domain_attr->name, fab.rails, opt.size,
           opt.inject ? "fi_tinject" : "fi_tsend", opt.peers, (int)getpid());
    fflush(stdout);
    if (opt.peers) {
        /* The baseline: the endpoint open and its connection to the client made. */
        post_recv(fab.eps[0], 0, 8, TAG_HELLO, 0);
        barrier(fd);
        wait_op(&rx_ops[0]);
        verify(&rx_ops[0], rx_slot(0), 8, TAG_HELLO, 0, "hello");
        post_send(fab.eps[0], 0, 8, peer, TAG_REPLY, 0);
        wait_sends();
        if (opt.lat) lat_ping(fd, 0); /* the same pair before the peers, to compare */
        m0 = mem_now();
        connect_crowd();
        m1 = mem_now();
        if (opt.mem) {
            double div = (double)opt.peers * fab.rails;
            printf("result test=mem peers=%u rails=%u bytes_per_peer_rail=%.0f rss=%.0f anon=%.0f "
                   "shmem=%.0f shm_own=%.0f verified=yes\n",
                   opt.peers, fab.rails,
                   (double)(m1.anon - m0.anon + m1.shm_own - m0.shm_own) / div,
                   (double)(m1.rss - m0.rss) / div, (double)(m1.anon - m0.anon) / div,
                   (double)(m1.shmem - m0.shmem) / div, (double)(m1.shm_own - m0.shm_own) / div);
            fflush(stdout);
        }
    }
    if (opt.lat) lat_ping(fd, opt.peers);
    if (opt.rate) rate(fd);
    barrier(fd);
    if (opt.peers) {
        char go = 1;
        sock_send(kid_sock[CROWD - 1], &go, 1);
    }
    close_objects();
}

/* client, with -N: the exchange that makes the server's baseline connection. */
static void client_hello(void)
{
    post_recv(fab.eps[0], 0, 8, TAG_REPLY, 0);
    barrier(up_sock);
    post_send(fab.eps[0], 0, 8, peer, TAG_HELLO, 0);
    wait_op(&rx_ops[0]);
    verify(&rx_ops[0], rx_slot(0), 8, TAG_REPLY, 0, "reply");
    wait_sends();
}

static void client_main(void)
{
    if (opt.pin) pin_self();
    open_objects(1, 1);
    send_names(up_sock);
    if (recv_names(up_sock, &peer, 1) != 1) die("no server name");
    if (opt.peers) {
        client_hello();
        if (opt.lat) lat_pong(up_sock);
    }
    if (opt.lat) lat_pong(up_sock);
    if (opt.rate) rate(up_sock);
    barrier(up_sock);
    close_objects();
}

/* ---- options --------------------------------------------------------------------- */

static _Noreturn void usage(const char *why)
{
    if (why) fprintf(stderr, "bench_msg: %s\n", why);
    fprintf(stderr,
            "usage: bench_msg [-p PROV] [-d DOMAIN] [-t lat,rate,mem] [-s SIZE] [-n ITERS]\n"
            "                 [-m MESSAGES] [-w WINDOW] [-N PEERS] [-I] [-a] [-T SECONDS]\n");
    exit(2);
}

static uint64_t number(const char *s, uint64_t lo, uint64_t hi, const char *why)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi) usage(why);
    return v;
}

static void parse_options(int argc, char **argv)
{
    char *list, *tok, *save;
    int c;

    while ((c = getopt(argc, argv, "p:d:t:s:n:m:w:N:IaT:h")) != -1) {
        switch (c) {
        case 'p':
            opt.prov = optarg;
            break;
        case 'd':
            opt.domain = optarg;
            break;
        case 't':
            opt.lat = opt.rate = opt.mem = false;
            list = strdup(optarg);
            for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                if (!strcmp(tok, "lat"))
                    opt.lat = true;
                else if (!strcmp(tok, "rate"))
                    opt.rate = true;
                else if (!strcmp(tok, "mem"))
                    opt.mem = true;
                else
                    usage("-t: tests are lat, rate and mem");
            }
            free(list);
            break;
        case 's':
            opt.size = number(optarg, 8, MAX_SIZE, "-s: size is 8 to 4096 bytes, a multiple of 8");
            if (opt.size % 8) usage("-s: size is 8 to 4096 bytes, a multiple of 8");
            break;
        case 'n':
            opt.iters = number(optarg, 1, 1ull << 31, "-n: round trips are 1 to 2^31");
            break;
        case 'm':
            opt.messages = number(optarg, 1, 1ull << 40, "-m: messages are 1 to 2^40");
            break;
        case 'w':
            opt.window = (unsigned)number(optarg, 1, MAX_WINDOW, "-w: window is 1 to 128");
            break;
        case 'N':
            opt.peers = (unsigned)number(optarg, 0, MAX_PEERS, "-N: peers are 0 to 1024");
            break;
        case 'I':
            opt.inject = true;
            break;
        case 'a':
            opt.pin = true;
            break;
        case 'T':
            opt.timeout = (unsigned)number(optarg, 1, 86400, "-T: seconds are 1 to 86400");
            break;
        default:
            usage(NULL);
        }
    }
    if (optind < argc) usage("unexpected argument");
    if (opt.mem && !opt.peers) usage("-t mem needs -N PEERS (1 or more)");
    if (opt.messages < opt.window) usage("-m: fewer messages than one window");
}

int main(int argc, char **argv)
{
    parse_options(argc, argv);
    /* Before any fi_* call: libfabric is initialized separately in each process. */
    spawn(CLIENT, client_main);
    if (opt.peers) spawn(CROWD, crowd_main);
    arm_timeout();
    server_main();
    alarm(0);
    for (int i = 0; i < 2; i++) {
        int st;
        if (kids[i] <= 0) continue;
        if (waitpid(kids[i], &st, 0) != kids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            kids[i] = 0;
            die("the %s process failed (status 0x%x)", role_names[i + 1], st);
        }
        kids[i] = 0;
    }
    return EXIT_SUCCESS;
}
