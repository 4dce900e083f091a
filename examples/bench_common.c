/*
 * bench_common.c: the plumbing of bench_rails (bench_rails.c holds the tests
 * and main): failing loudly, the forked peer process and its socketpair, the
 * libfabric objects and registered regions, posting and reaping completions,
 * the data patterns and their checks, the fi_ext_mlx4.h rail statistics, and
 * the command line. Uses only libfabric's public API and fi_ext_mlx4.h.
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
#include <rdma/fi_tagged.h>

#include "bench_common.h"

const char *const test_names[NUM_TESTS] = {"tagged", "read", "write", "rate"};

struct options opt = {
    .prov = "mlx4",
    .run = {true, true, true, true},
    .sizes = {4u << 20, 16u << 20, 64u << 20},
    .nsizes = 3,
    .window = 2,
    .timeout = 300,
};

struct proc proc;
struct fab fab;

/* ---- failing loudly ----------------------------------------------------- */

static void stop_child(void)
{
    if (proc.parent && proc.child > 0) {
        kill(proc.child, SIGKILL);
        waitpid(proc.child, NULL, 0);
        proc.child = 0;
    }
}

_Noreturn void die(const char *fmt, ...)
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

void check(long ret, const char *call)
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
void check_peer(void)
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

/* ---- the two processes -------------------------------------------------- */

/* main forks first, before any fi_* call: libfabric is initialized separately in
 * each process. The two talk over a socketpair. */
void fork_peer(void)
{
    int sv[2];
    pid_t pid;

    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) {
        perror("bench_rails: socketpair");
        exit(EXIT_FAILURE);
    }
    fflush(NULL);
    proc.parent_pid = getpid();
    pid = fork();
    if (pid < 0) {
        perror("bench_rails: fork");
        exit(EXIT_FAILURE);
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
}

/* -T: the parent kills the child; either exits 3 with a message. */
void arm_timeout(void)
{
    snprintf(timeout_msg, sizeof timeout_msg,
             "bench_rails (%s): timed out after %u s (-T); something never completed\n", proc.name,
             opt.timeout);
    signal(SIGALRM, on_alarm);
    alarm(opt.timeout);
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

void sock_send(const void *buf, size_t len)
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

void sock_recv(void *buf, size_t len)
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

void open_objects(void)
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

void register_region(struct region *r, size_t len, uint64_t access, uint64_t key)
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

void close_objects(void)
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
void connect_peer(void)
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

/* ---- posting and completions -------------------------------------------- */

static void cq_error(void)
{
    struct fi_cq_err_entry err = {0};
    ssize_t ret = fi_cq_readerr(fab.cq, &err, 0);

    if (ret < 0) die("fi_cq_readerr failed: %s", fi_strerror((int)-ret));
    die("an operation completed with an error: %s (%d); provider says: %s", fi_strerror(err.err),
        err.err, fi_cq_strerror(fab.cq, err.prov_errno, err.err_data, NULL, 0));
}

/* Reaps completions (and drives the provider's progress). */
void progress(void)
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

void wait_op(struct op *op)
{
    while (op->busy)
        progress();
}

/* fi_tinject: no completion, but may also say "again". */
void inject(const void *buf, size_t len, uint64_t tag)
{
    ssize_t ret;

    while ((ret = fi_tinject(fab.ep, buf, len, fab.peer, tag)) == -FI_EAGAIN)
        progress();
    if (ret) die("fi_tinject failed: %s (%zd)", fi_strerror((int)-ret), ret);
}

/* ---- data patterns, timing and verification ----------------------------- */

/* Word k of every transfer, except the stamp words (one per STAMP_STRIDE). */
static uint64_t body_word(uint64_t k)
{
    uint64_t z = k * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t stamp_word(uint32_t pass, uint64_t iter)
{
    return 0x5354000000000000ull ^ ((uint64_t)pass << 32) ^ iter;
}

char *slot(const struct region *r, unsigned s)
{
    return r->buf + (size_t)s * fab.stride;
}

void fill_body(char *p, size_t len)
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

void put_stamps(char *p, size_t len, uint64_t stamp)
{
    for (size_t off = 0; off + 8 <= len; off += STAMP_STRIDE)
        memcpy(p + off, &stamp, 8);
}

/* Puts the body pattern back where earlier passes stamped a source slot, so
 * that a transfer ending inside a stamp word still carries the body there. */
void unstamp(char *p, size_t len)
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

double now(void)
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

void poison_slots(const struct region *r, const struct pass *p)
{
    for (unsigned s = 0; s < p->window; s++)
        memset(slot(r, s), POISON_BYTE, p->size);
}

void check_slots(const struct region *r, const struct pass *p, bool read)
{
    for (unsigned s = 0; s < p->window; s++) {
        uint64_t i = last_iter(p, s);
        check_data(slot(r, s), p->size, stamp_word(p->number, read ? READ_ITER : i),
                   test_names[p->test], i);
    }
}

void wait_all(struct op *ops, unsigned n)
{
    for (unsigned s = 0; s < n; s++)
        wait_op(&ops[s]);
}

/* ---- rail statistics ---------------------------------------------------- */

int stats_reset(void)
{
    return EXT_HAS(reset_rail_stats) ? fab.ext->reset_rail_stats(fab.domain) : -FI_ENOSYS;
}

int stats_query(struct fi_mlx4_rail_stats *stats, uint32_t *n)
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
void stats_add(struct fi_mlx4_rail_stats *sum, uint32_t *n, const struct fi_mlx4_rail_stats *more,
               uint32_t nmore)
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

void print_stats(const struct fi_mlx4_rail_stats *s, uint32_t n)
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

/* Parent: the domain's rails and their summed effective rate. */
void print_rails(void)
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

void parse_options(int argc, char **argv)
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
