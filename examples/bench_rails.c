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
 */
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_ext_mlx4.h>
#include <rdma/fi_rma.h>
#include <rdma/fi_tagged.h>

enum test { TEST_TAGGED, TEST_READ, TEST_WRITE, TEST_RATE, NUM_TESTS };
static const char *const test_names[NUM_TESTS] = {"tagged", "read", "write", "rate"};

#define MAX_SIZES 32
#define MAX_WINDOW 64
#define MAX_RAILS 16
#define RATE_SIZE 8
#define RATE_WINDOW 64
#define TARGET_BYTES (256ull << 20) /* a measurement moves at least this ... */
#define TARGET_SECONDS 0.5          /* ... and lasts at least about this long */
#define MAX_ITERS (1ull << 31)      /* iteration numbers travel in 32 tag bits */
#define STAMP_STRIDE 4096           /* one pass/iteration stamp per 4 KiB */
#define POISON_BYTE 0xa5
#define POISON_WORD 0xa5a5a5a5a5a5a5a5ull
#define CTL_SIZE 4096 /* rate messages and control messages live here */

/* Tags: bits 60..63 say what a message is, 32..59 the pass, 0..31 the iteration. */
#define TAG_DATA (1ull << 60)
#define TAG_ACK (2ull << 60)
#define TAG_DONE (3ull << 60)

static uint64_t make_tag(uint64_t kind, uint32_t pass, uint64_t iter)
{
    return kind | ((uint64_t)(pass & 0x0fffffff) << 32) | (iter & 0xffffffffu);
}

struct options {
    const char *prov, *domain, *fabric;
    bool run[NUM_TESTS];
    size_t sizes[MAX_SIZES];
    int nsizes;
    size_t max_size;
    uint64_t iters; /* 0: automatic */
    unsigned window;
    unsigned timeout;
};

static struct options opt = {
    .prov = "mlx4",
    .run = {true, true, true, true},
    .sizes = {4u << 20, 16u << 20, 64u << 20},
    .nsizes = 3,
    .window = 2,
    .timeout = 300,
};

/* Which process this is and how to reach the other one. */
static struct {
    bool parent;
    pid_t child;      /* parent: the child's pid, 0 once reaped */
    pid_t parent_pid; /* child: the parent it watches */
    int sock;         /* our end of the socketpair */
    const char *name; /* "parent" or "child", for messages */
} proc;

/* ---- failing loudly ----------------------------------------------------- */

static void stop_child(void)
{
    if (proc.parent && proc.child > 0) {
        kill(proc.child, SIGKILL);
        waitpid(proc.child, NULL, 0);
        proc.child = 0;
    }
}

static void die(const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    fprintf(stderr, "bench_rails (%s): ", proc.name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    stop_child();
    _exit(EXIT_FAILURE); /* no exit handlers: libfabric objects may be mid-operation */
}

static void check(long ret, const char *call)
{
    if (ret) die("%s failed: %s (%ld)", call, fi_strerror((int)-ret), ret);
}

static char timeout_msg[128];

static void on_alarm(int sig)
{
    ssize_t r = write(STDERR_FILENO, timeout_msg, strlen(timeout_msg));

    (void)sig;
    (void)r;
    stop_child(); /* kill and waitpid are async-signal-safe */
    _exit(3);
}

/* Dies when the other process is gone, so a dead peer is an error, not a hang. */
static void check_peer(void)
{
    int status;

    if (!proc.parent) {
        if (getppid() != proc.parent_pid) die("the parent process went away");
        return;
    }
    if (waitpid(proc.child, &status, WNOHANG) == proc.child) {
        proc.child = 0;
        if (WIFSIGNALED(status)) die("the child process was killed by signal %d", WTERMSIG(status));
        die("the child process exited with status %d", WEXITSTATUS(status));
    }
}

/* ---- the socketpair ----------------------------------------------------- */

/* The peer closed its end of the socket: it has exited, or is exiting. */
static void peer_gone(void)
{
    int status;

    if (!proc.parent || proc.child <= 0 || waitpid(proc.child, &status, 0) != proc.child)
        die("the peer process went away");
    proc.child = 0;
    if (WIFSIGNALED(status)) die("the child process was killed by signal %d", WTERMSIG(status));
    die("the child process exited early, with status %d", WEXITSTATUS(status));
}

static void sock_send(const void *buf, size_t len)
{
    const char *p = buf;

    while (len) {
        ssize_t n = send(proc.sock, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            check_peer();
            die("send to the peer process: %s", strerror(errno));
        }
        p += n;
        len -= (size_t)n;
    }
}

static void sock_recv(void *buf, size_t len)
{
    char *p = buf;

    while (len) {
        ssize_t n = recv(proc.sock, p, len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("receive from the peer process: %s", strerror(errno));
        if (n == 0) peer_gone();
        p += n;
        len -= (size_t)n;
    }
}

/* ---- libfabric objects -------------------------------------------------- */

/* A registered buffer and how the peer addresses it. */
struct region {
    char *buf; /* owned, freed at exit */
    size_t len;
    struct fid_mr *mr;
    void *desc;
    uint64_t key;  /* remote key */
    uint64_t addr; /* target address for the peer: virtual, or 0 (offsets) */
};

/* What the peer needs to reach our regions. */
struct region_ref {
    uint64_t addr, key;
};

/* One posted operation; the CQ entry's op_context points back to it. */
struct op {
    struct fi_context2 ctx; /* first: providers with FI_CONTEXT(2) use it */
    bool busy;              /* posted, no completion yet */
    uint64_t len, tag;      /* from a receive's completion */
};

static struct {
    struct fi_info *info;
    struct fid_fabric *fabric;
    struct fid_domain *domain;
    struct fid_cq *cq;
    struct fid_av *av;
    struct fid_ep *ep;
    fi_addr_t peer;
    struct fi_mlx4_domain_ops *ext; /* NULL when the provider has no such ops */
    char ext_why[96];               /* ... and why */
    bool inject_rate;               /* RATE_SIZE fits fi_tinject */
    size_t stride;                  /* bytes between window slots */
    struct region src;              /* what we send/expose for reading: a pattern */
    struct region dst;              /* where we receive/read into/are written to */
    struct region ctl;              /* rate and control messages */
    struct region_ref peer_src, peer_dst;
    struct op tx[MAX_WINDOW], rx[MAX_WINDOW], ctl_tx, ctl_rx;
} fab;

/* An extension op is usable only if the provider's table reaches it and sets it. */
#define EXT_HAS(member)                                                                            \
    (fab.ext &&                                                                                    \
     fab.ext->size >= offsetof(struct fi_mlx4_domain_ops, member) + sizeof(fab.ext->member) &&     \
     fab.ext->member)

static void open_objects(void)
{
    struct fi_info *hints = fi_allocinfo();
    struct fi_cq_attr cq_attr = {.format = FI_CQ_FORMAT_TAGGED, .wait_obj = FI_WAIT_NONE};
    struct fi_av_attr av_attr = {.count = 1};
    int ret;

    if (!hints) die("fi_allocinfo: out of memory");
    hints->caps = FI_TAGGED | FI_MSG | FI_RMA;
    hints->mode = FI_CONTEXT | FI_CONTEXT2; /* every op passes a struct fi_context2 */
    hints->ep_attr->type = FI_EP_RDM;
    hints->domain_attr->mr_mode = FI_MR_VIRT_ADDR | FI_MR_PROV_KEY | FI_MR_ALLOCATED | FI_MR_LOCAL;
    hints->domain_attr->threading = FI_THREAD_DOMAIN;
    hints->tx_attr->msg_order = FI_ORDER_SAS; /* rate messages are checked in order */
    hints->rx_attr->msg_order = FI_ORDER_SAS;
    hints->fabric_attr->prov_name = strdup(opt.prov);
    if (opt.domain) hints->domain_attr->name = strdup(opt.domain);
    if (opt.fabric) hints->fabric_attr->name = strdup(opt.fabric);

    ret = fi_getinfo(FI_VERSION(1, 17), NULL, NULL, 0, hints, &fab.info);
    fi_freeinfo(hints);
    if (ret)
        die("fi_getinfo found no RDM endpoint with tagged messages and RMA for provider "
            "'%s'%s%s: %s",
            opt.prov, opt.domain ? ", domain " : "", opt.domain ? opt.domain : "",
            fi_strerror(-ret));

    check(fi_fabric(fab.info->fabric_attr, &fab.fabric, NULL), "fi_fabric");
    check(fi_domain(fab.fabric, fab.info, &fab.domain, NULL), "fi_domain");
    ret = fi_open_ops(&fab.domain->fid, FI_MLX4_DOMAIN_OPS_V1, 0, (void **)&fab.ext, NULL);
    if (ret) {
        fab.ext = NULL;
        snprintf(fab.ext_why, sizeof fab.ext_why, "fi_open_ops(%s): %s", FI_MLX4_DOMAIN_OPS_V1,
                 fi_strerror(-ret));
    }
    check(fi_cq_open(fab.domain, &cq_attr, &fab.cq, NULL), "fi_cq_open");
    av_attr.type = fab.info->domain_attr->av_type;
    check(fi_av_open(fab.domain, &av_attr, &fab.av, NULL), "fi_av_open");
    check(fi_endpoint(fab.domain, fab.info, &fab.ep, NULL), "fi_endpoint");
    check(fi_ep_bind(fab.ep, &fab.cq->fid, FI_TRANSMIT | FI_RECV), "fi_ep_bind(cq)");
    check(fi_ep_bind(fab.ep, &fab.av->fid, 0), "fi_ep_bind(av)");
    check(fi_enable(fab.ep), "fi_enable");
    fab.inject_rate = fab.info->tx_attr->inject_size >= RATE_SIZE;
}

static void register_region(struct region *r, size_t len, uint64_t access, uint64_t key)
{
    int mr_mode = fab.info->domain_attr->mr_mode;

    if (posix_memalign((void **)&r->buf, 4096, len)) die("cannot allocate %zu bytes", len);
    memset(r->buf, POISON_BYTE, len); /* touch every page before anything is timed */
    r->len = len;
    /* requested_key matters only without FI_MR_PROV_KEY (shm, for one). */
    check(fi_mr_reg(fab.domain, r->buf, len, access, 0, key, 0, &r->mr, NULL), "fi_mr_reg");
    r->desc = fi_mr_desc(r->mr);
    r->key = fi_mr_key(r->mr);
    if (r->key == FI_KEY_NOTAVAIL)
        die("the provider uses raw memory keys (FI_MR_RAW), which this program does not handle");
    r->addr = (mr_mode & FI_MR_VIRT_ADDR) ? (uint64_t)(uintptr_t)r->buf : 0;
}

static void close_fid(struct fid *f, const char *what)
{
    if (f) check(fi_close(f), what);
}

static void close_objects(void)
{
    close_fid(&fab.ep->fid, "fi_close(ep)");
    close_fid(&fab.av->fid, "fi_close(av)");
    close_fid(&fab.src.mr->fid, "fi_close(mr)");
    close_fid(&fab.dst.mr->fid, "fi_close(mr)");
    close_fid(&fab.ctl.mr->fid, "fi_close(mr)");
    close_fid(&fab.cq->fid, "fi_close(cq)");
    close_fid(&fab.domain->fid, "fi_close(domain)");
    close_fid(&fab.fabric->fid, "fi_close(fabric)");
    fi_freeinfo(fab.info);
    free(fab.src.buf);
    free(fab.dst.buf);
    free(fab.ctl.buf);
}

/* Swaps endpoint names and region keys with the peer; inserts its address. */
static void connect_peer(void)
{
    char name[512];
    size_t len = sizeof name;
    uint64_t peer_len;
    struct region_ref mine[2] = {{fab.src.addr, fab.src.key}, {fab.dst.addr, fab.dst.key}};
    struct region_ref theirs[2];
    int ret;

    check(fi_getname(&fab.ep->fid, name, &len), "fi_getname");
    peer_len = len;
    sock_send(&peer_len, sizeof peer_len);
    sock_send(name, len);
    sock_send(mine, sizeof mine);
    sock_recv(&peer_len, sizeof peer_len);
    if (peer_len > sizeof name)
        die("the peer's endpoint name is too long (%" PRIu64 " bytes)", peer_len);
    sock_recv(name, peer_len);
    sock_recv(theirs, sizeof theirs);
    fab.peer_src = theirs[0];
    fab.peer_dst = theirs[1];
    ret = fi_av_insert(fab.av, name, 1, &fab.peer, 0, NULL);
    if (ret != 1)
        die("fi_av_insert of the peer's address: %s (%d)",
            ret < 0 ? fi_strerror(-ret) : "not inserted", ret);
}

/* ---- completions -------------------------------------------------------- */

static void cq_error(void)
{
    struct fi_cq_err_entry err = {0};
    ssize_t ret = fi_cq_readerr(fab.cq, &err, 0);

    if (ret < 0) die("fi_cq_readerr failed: %s", fi_strerror((int)-ret));
    die("an operation completed with an error: %s (%d); provider says: %s", fi_strerror(err.err),
        err.err, fi_cq_strerror(fab.cq, err.prov_errno, err.err_data, NULL, 0));
}

/* Reaps completions (and drives the provider's progress). */
static void progress(void)
{
    static unsigned idle;
    struct fi_cq_tagged_entry e[16];
    ssize_t n = fi_cq_read(fab.cq, e, 16);

    if (n == -FI_EAGAIN) {
        /* Both processes poll; on a busy or small host they may share a
         * core, and the one waiting must let the other run. */
        if (++idle % 16 == 0) sched_yield();
        if (idle % 65536 == 0) check_peer();
        return;
    }
    if (n == -FI_EAVAIL) cq_error();
    if (n < 0) die("fi_cq_read failed: %s", fi_strerror((int)-n));
    for (ssize_t i = 0; i < n; i++) {
        struct op *op = e[i].op_context;
        op->len = e[i].len;
        op->tag = e[i].tag;
        op->busy = false;
    }
}

static void wait_op(struct op *op)
{
    while (op->busy)
        progress();
}

/* Posts an operation, driving progress while the provider says "again". */
#define POST(call, op, what)                                                                       \
    do {                                                                                           \
        ssize_t ret_;                                                                              \
        (op)->busy = true;                                                                         \
        while ((ret_ = (call)) == -FI_EAGAIN)                                                      \
            progress();                                                                            \
        if (ret_) die("%s failed: %s (%zd)", what, fi_strerror((int)-ret_), ret_);                 \
    } while (0)

/* fi_tinject: no completion, but may also say "again". */
static void inject(const void *buf, size_t len, uint64_t tag)
{
    ssize_t ret;

    while ((ret = fi_tinject(fab.ep, buf, len, fab.peer, tag)) == -FI_EAGAIN)
        progress();
    if (ret) die("fi_tinject failed: %s (%zd)", fi_strerror((int)-ret), ret);
}

/* ---- data patterns ------------------------------------------------------ */

/* Word k of every transfer, except the stamp words (one per STAMP_STRIDE). */
static uint64_t body_word(uint64_t k)
{
    uint64_t z = k * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t stamp_word(uint32_t pass, uint64_t iter)
{
    return 0x5354000000000000ull ^ ((uint64_t)pass << 32) ^ iter;
}

#define READ_ITER 0xffffffffu /* the stamp of data that is read, not sent */

static char *slot(const struct region *r, unsigned s)
{
    return r->buf + (size_t)s * fab.stride;
}

static void fill_body(char *p, size_t len)
{
    size_t k;

    for (k = 0; k < len / 8; k++) {
        uint64_t w = body_word(k);
        memcpy(p + 8 * k, &w, 8);
    }
    if (len % 8) {
        uint64_t w = body_word(k);
        memcpy(p + 8 * k, &w, len % 8);
    }
}

static void put_stamps(char *p, size_t len, uint64_t stamp)
{
    for (size_t off = 0; off + 8 <= len; off += STAMP_STRIDE)
        memcpy(p + off, &stamp, 8);
}

/* Puts the body pattern back where earlier passes stamped a source slot, so
 * that a transfer ending inside a stamp word still carries the body there. */
static void unstamp(char *p, size_t len)
{
    for (size_t off = 0; off + 8 <= len; off += STAMP_STRIDE) {
        uint64_t w = body_word(off / 8);
        memcpy(p + off, &w, 8);
    }
}

/* Checks every byte of one received transfer. */
static void check_data(const char *p, size_t len, uint64_t stamp, const char *test, uint64_t iter)
{
    size_t k, words = len / 8;

    for (k = 0; k < words; k++) {
        bool is_stamp = k % (STAMP_STRIDE / 8) == 0;
        uint64_t want = is_stamp ? stamp : body_word(k), got;
        memcpy(&got, p + 8 * k, 8);
        if (got != want)
            die("%s, %zu bytes, transfer %" PRIu64 ": wrong data at byte %zu: "
                "0x%016" PRIx64 " instead of 0x%016" PRIx64 "%s",
                test, len, iter, 8 * k, got, want,
                is_stamp ? " (the transfer's stamp: a page not delivered?)" : "");
    }
    if (len % 8) {
        uint64_t want = body_word(k);
        if (memcmp(p + 8 * k, &want, len % 8))
            die("%s, %zu bytes, transfer %" PRIu64 ": wrong data in the last %zu bytes", test, len,
                iter, len % 8);
    }
}

/* ---- one measurement pass ----------------------------------------------- */

/* What the parent tells the child before a pass. */
struct pass {
    uint32_t test;
    uint32_t quit;   /* 1: no more passes */
    uint32_t number; /* counts passes from 1; part of tags and stamps */
    uint32_t window;
    uint64_t size, iters;
};

/* What the child reports after a pass. */
struct peer_report {
    int32_t stats_ret; /* 0, or why its statistics are missing */
    uint32_t nstats;
    struct fi_mlx4_rail_stats stats[MAX_RAILS];
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The last transfer that used slot s: transfer i goes to slot i % window. */
static uint64_t last_iter(const struct pass *p, unsigned s)
{
    return s + (uint64_t)p->window * ((p->iters - 1 - s) / p->window);
}

static void poison_slots(const struct region *r, const struct pass *p)
{
    for (unsigned s = 0; s < p->window; s++)
        memset(slot(r, s), POISON_BYTE, p->size);
}

static void check_slots(const struct region *r, const struct pass *p, bool read)
{
    for (unsigned s = 0; s < p->window; s++) {
        uint64_t i = last_iter(p, s);
        check_data(slot(r, s), p->size, stamp_word(p->number, read ? READ_ITER : i),
                   test_names[p->test], i);
    }
}

static void wait_all(struct op *ops, unsigned n)
{
    for (unsigned s = 0; s < n; s++)
        wait_op(&ops[s]);
}

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

/* ---- rail statistics ---------------------------------------------------- */

static int stats_reset(void)
{
    return EXT_HAS(reset_rail_stats) ? fab.ext->reset_rail_stats(fab.domain) : -FI_ENOSYS;
}

static int stats_query(struct fi_mlx4_rail_stats *stats, uint32_t *n)
{
    size_t count = MAX_RAILS;
    int ret;

    *n = 0;
    if (!EXT_HAS(query_rail_stats)) return -FI_ENOSYS;
    ret = fab.ext->query_rail_stats(fab.domain, stats, &count);
    if (ret && ret != -FI_ETOOSMALL) return ret;
    *n = count < MAX_RAILS ? (uint32_t)count : MAX_RAILS;
    return 0;
}

/* Adds the peer's counters to ours, rail by rail (matched by device and port). */
static void stats_add(struct fi_mlx4_rail_stats *sum, uint32_t *n,
                      const struct fi_mlx4_rail_stats *more, uint32_t nmore)
{
    for (uint32_t i = 0; i < nmore; i++) {
        uint32_t j;
        for (j = 0; j < *n; j++)
            if (!strncmp(sum[j].device, more[i].device, sizeof sum[j].device) &&
                sum[j].port == more[i].port)
                break;
        if (j == *n) {
            if (*n == MAX_RAILS) continue;
            sum[j] = more[i];
            sum[j].tx_bytes = sum[j].rx_bytes = sum[j].ops = sum[j].failovers = 0;
            (*n)++;
        }
        sum[j].tx_bytes += more[i].tx_bytes;
        sum[j].rx_bytes += more[i].rx_bytes;
        sum[j].ops += more[i].ops;
        sum[j].failovers += more[i].failovers;
    }
}

static void print_stats(const struct fi_mlx4_rail_stats *s, uint32_t n)
{
    if (n == 0) {
        printf(" stats=n/a");
        return;
    }
    printf(" stats=");
    for (uint32_t i = 0; i < n; i++)
        printf("%s%.*s:%u:tx=%" PRIu64 ",rx=%" PRIu64 ",ops=%" PRIu64 ",failovers=%" PRIu64
               ",weight=%.3f,up=%u,striped=%u",
               i ? ";" : "", (int)sizeof s[i].device, s[i].device, s[i].port, s[i].tx_bytes,
               s[i].rx_bytes, s[i].ops, s[i].failovers, s[i].weight, s[i].up, s[i].striped);
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

/* Parent: the domain's rails and their summed effective rate. */
static void print_rails(void)
{
    struct fi_mlx4_rail_attr rails[MAX_RAILS];
    size_t count = MAX_RAILS;
    const char *dom = fab.info->domain_attr->name;
    double sum = 0;
    int ret;

    if (!EXT_HAS(query_rails)) {
        printf("rails domain=%s n/a (%s)\n", dom,
               fab.ext ? "the provider's ops have no query_rails" : fab.ext_why);
        return;
    }
    ret = fab.ext->query_rails(fab.domain, rails, &count);
    if (ret == -FI_ETOOSMALL)
        count = MAX_RAILS;
    else if (ret) {
        printf("rails domain=%s n/a (query_rails: %s)\n", dom, fi_strerror(-ret));
        return;
    }
    for (size_t i = 0; i < count; i++) {
        printf("rail domain=%s rail=%.*s:%u effective_gbps=%.2f weight=%.3f\n", dom,
               (int)sizeof rails[i].device, rails[i].device, rails[i].port, rails[i].effective_gbps,
               rails[i].weight);
        sum += rails[i].effective_gbps;
    }
    printf("rails domain=%s count=%zu sum_effective_gbps=%.2f\n", dom, count, sum);
}

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

/* ---- options ------------------------------------------------------------ */

static void usage(const char *why)
{
    if (why) fprintf(stderr, "bench_rails: %s\n", why);
    fprintf(stderr,
            "usage: bench_rails [-p PROV] [-d DOMAIN] [-f FABRIC] [-t TESTS] [-s SIZES]\n"
            "                   [-n ITERS] [-w WINDOW] [-T SECONDS]\n"
            "  -p PROV     provider (default mlx4; also shm, 'tcp;ofi_rxm', ...)\n"
            "  -d DOMAIN   domain (mlx4_0+mlx4_1, mlx4_0, ...); default the first offered\n"
            "  -f FABRIC   fabric; default the first offered\n"
            "  -t TESTS    comma-separated from tagged,read,write,rate (default all)\n"
            "  -s SIZES    comma-separated sizes with K/M/G suffixes (default 4M,16M,64M)\n"
            "  -n ITERS    transfers per measurement (default: >= 256 MiB and >= 0.5 s)\n"
            "  -w WINDOW   transfers in flight, 1..%d (default 2)\n"
            "  -T SECONDS  give up after this long (default 300)\n",
            MAX_WINDOW);
    exit(2);
}

static bool parse_size(const char *s, size_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-' || v > (1ull << 31)) return false;
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
    if (*end || v == 0 || v > (1ull << 31)) return false;
    *out = (size_t)v;
    return true;
}

static void parse_options(int argc, char **argv)
{
    char *list, *tok, *save;
    int c;

    while ((c = getopt(argc, argv, "p:d:f:t:s:n:w:T:h")) != -1) {
        switch (c) {
        case 'p':
            opt.prov = optarg;
            break;
        case 'd':
            opt.domain = optarg;
            break;
        case 'f':
            opt.fabric = optarg;
            break;
        case 't':
            memset(opt.run, 0, sizeof opt.run);
            list = strdup(optarg);
            for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                int t;
                for (t = 0; t < NUM_TESTS && strcmp(tok, test_names[t]); t++)
                    ;
                if (t == NUM_TESTS) usage("-t: tests are tagged, read, write, rate");
                opt.run[t] = true;
            }
            free(list);
            break;
        case 's':
            opt.nsizes = 0;
            list = strdup(optarg);
            for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                if (opt.nsizes == MAX_SIZES) usage("-s: too many sizes");
                if (!parse_size(tok, &opt.sizes[opt.nsizes++]))
                    usage("-s: sizes are 1 byte to 2G, e.g. 4M,16M,64M");
            }
            free(list);
            if (!opt.nsizes) usage("-s: no size given");
            break;
        case 'n':
            opt.iters = strtoull(optarg, NULL, 10);
            if (opt.iters == 0 || opt.iters > MAX_ITERS) usage("-n: iterations are 1 to 2^31");
            break;
        case 'w':
            opt.window = (unsigned)atoi(optarg);
            if (opt.window < 1 || opt.window > MAX_WINDOW) usage("-w: window is 1 to 64");
            break;
        case 'T':
            opt.timeout = (unsigned)atoi(optarg);
            if (opt.timeout < 1) usage("-T: seconds must be positive");
            break;
        default:
            usage(NULL);
        }
    }
    if (optind < argc) usage("unexpected argument");
    opt.max_size = 0;
    if (opt.run[TEST_TAGGED] || opt.run[TEST_READ] || opt.run[TEST_WRITE])
        for (int i = 0; i < opt.nsizes; i++)
            if (opt.sizes[i] > opt.max_size) opt.max_size = opt.sizes[i];
}

int main(int argc, char **argv)
{
    int sv[2];
    pid_t pid;

    parse_options(argc, argv);

    /* Fork first: libfabric is initialized separately in each process. */
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) {
        perror("bench_rails: socketpair");
        return EXIT_FAILURE;
    }
    fflush(NULL);
    proc.parent_pid = getpid();
    pid = fork();
    if (pid < 0) {
        perror("bench_rails: fork");
        return EXIT_FAILURE;
    }
    proc.parent = pid > 0;
    proc.child = pid;
    proc.name = proc.parent ? "parent" : "child";
    proc.sock = sv[proc.parent ? 0 : 1];
    close(sv[proc.parent ? 1 : 0]);
    if (!proc.parent) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the parent */
        check_peer();
    }
    snprintf(timeout_msg, sizeof timeout_msg,
             "bench_rails (%s): timed out after %u s (-T); something never completed\n", proc.name,
             opt.timeout);
    signal(SIGALRM, on_alarm);
    alarm(opt.timeout);

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
