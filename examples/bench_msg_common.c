/*
 * bench_msg_common.c: the plumbing of bench_msg (bench_msg.c holds the tests
 * and the three roles): failing loudly, the forked processes and their
 * socketpairs, CPU pinning, the libfabric objects and endpoint names,
 * posting and reaping completions, the data pattern and its checks, and
 * reading this process's memory. Uses only libfabric's public API and
 * fi_ext_mlx4.h.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
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

#include "bench_msg_common.h"

struct options opt = {.prov = "mlx4",
                      .lat = true,
                      .rate = true,
                      .size = 8,
                      .iters = 20000,
                      .messages = 524288,
                      .window = 64,
                      .timeout = 120};

/* ---- processes and failing loudly ----------------------------------------- */

const char *const role_names[] = {"server", "client", "peers"};
enum role role = SERVER;
pid_t kids[2];
int kid_sock[2] = {-1, -1};
int up_sock = -1;
static pid_t server_pid; /* client, crowd: the process they watch */

static void stop_kids(void)
{
    if (role != SERVER) return;
    for (int i = 0; i < 2; i++)
        if (kids[i] > 0) {
            kill(kids[i], SIGKILL);
            waitpid(kids[i], NULL, 0);
            kids[i] = 0;
        }
}

_Noreturn void die(const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    fprintf(stderr, "bench_msg (%s): ", role_names[role]);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    stop_kids();
    _exit(EXIT_FAILURE); /* no exit handlers: libfabric objects may be mid-operation */
}

void check(long ret, const char *call)
{
    if (ret) die("%s failed: %s (%ld)", call, fi_strerror((int)-ret), ret);
}

/* A process we depend on is gone: an error, not a hang. */
void check_peers(void)
{
    int st;

    if (role != SERVER) {
        if (getppid() != server_pid) die("the server process went away");
        return;
    }
    for (int i = 0; i < 2; i++)
        if (kids[i] > 0 && waitpid(kids[i], &st, WNOHANG) == kids[i]) {
            kids[i] = 0;
            if (WIFSIGNALED(st))
                die("the %s process was killed by signal %d", role_names[i + 1], WTERMSIG(st));
            die("the %s process exited with status %d", role_names[i + 1], WEXITSTATUS(st));
        }
}

static char timeout_msg[128];

static void on_alarm(int sig)
{
    ssize_t r = write(STDERR_FILENO, timeout_msg, strlen(timeout_msg));

    (void)sig;
    (void)r;
    stop_kids(); /* kill and waitpid are async-signal-safe */
    _exit(3);
}

void arm_timeout(void)
{
    snprintf(timeout_msg, sizeof timeout_msg,
             "bench_msg (%s): timed out after %u s (-T); something never completed\n",
             role_names[role], opt.timeout);
    signal(SIGALRM, on_alarm);
    alarm(opt.timeout);
}

/* Before any fi_* call: forks a process for role r, which never returns here. */
void spawn(enum role r, void (*body)(void))
{
    int sv[2];
    pid_t pid;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
        die("socketpair: %s", strerror(errno));
    fflush(NULL);
    server_pid = getpid();
    pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    if (pid > 0) {
        kids[r - 1] = pid;
        kid_sock[r - 1] = sv[0];
        close(sv[1]);
        return;
    }
    role = r;
    up_sock = sv[1];
    close(sv[0]);
    for (int i = 0; i < 2; i++) /* a sibling's socket is not ours */
        if (kid_sock[i] >= 0) close(kid_sock[i]);
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the server */
    check_peers();
    body();
    exit(EXIT_SUCCESS);
}

void sock_send(int fd, const void *buf, size_t len)
{
    const char *p = buf;

    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            check_peers();
            die("send to another process: %s", strerror(errno));
        }
        p += n;
        len -= (size_t)n;
    }
}

void sock_recv(int fd, void *buf, size_t len)
{
    char *p = buf;

    while (len) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            check_peers();
            die("another process went away (%s)", n < 0 ? strerror(errno) : "end of file");
        }
        p += n;
        len -= (size_t)n;
    }
}

void barrier(int fd)
{
    char c = 0;
    sock_send(fd, &c, 1);
    sock_recv(fd, &c, 1);
}

double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* -a: the server on the first CPU it may use, the client on the second, so
 * the two never take turns on one core (a busy host then shows as a longer
 * tail, not as a second mode of the median). The idle peers are not pinned. */
void pin_self(void)
{
    cpu_set_t allowed, one;
    int want = role == SERVER ? 0 : 1, seen = 0;

    if (sched_getaffinity(0, sizeof allowed, &allowed))
        die("sched_getaffinity: %s", strerror(errno));
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &allowed) || seen++ != want) continue;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        if (sched_setaffinity(0, sizeof one, &one)) die("sched_setaffinity: %s", strerror(errno));
        return;
    }
    die("-a needs two CPUs; this process may use %d", CPU_COUNT(&allowed));
}

/* ---- libfabric objects ------------------------------------------------------ */

struct fab fab;

char *tx_slot(unsigned s)
{
    return fab.buf + (size_t)s * MAX_SIZE;
}
char *rx_slot(unsigned s)
{
    return fab.buf + (size_t)(SLOTS + s) * MAX_SIZE;
}

void open_objects(unsigned neps, size_t av_count)
{
    struct fi_info *hints = fi_allocinfo();
    struct fi_cq_attr cq_attr = {.format = FI_CQ_FORMAT_TAGGED, .wait_obj = FI_WAIT_NONE};
    struct fi_av_attr av_attr = {.count = av_count};
    int ret;

    if (!hints) die("fi_allocinfo: out of memory");
    hints->caps = FI_TAGGED | FI_MSG;
    hints->mode = FI_CONTEXT | FI_CONTEXT2; /* every op passes a struct fi_context2 */
    hints->ep_attr->type = FI_EP_RDM;
    hints->domain_attr->mr_mode = FI_MR_VIRT_ADDR | FI_MR_PROV_KEY | FI_MR_ALLOCATED | FI_MR_LOCAL;
    hints->domain_attr->threading = FI_THREAD_DOMAIN;
    hints->tx_attr->msg_order = FI_ORDER_SAS; /* windows are checked in order */
    hints->rx_attr->msg_order = FI_ORDER_SAS;
    hints->fabric_attr->prov_name = strdup(opt.prov);
    if (opt.domain) hints->domain_attr->name = strdup(opt.domain);
    ret = fi_getinfo(FI_VERSION(1, 17), NULL, NULL, 0, hints, &fab.info);
    fi_freeinfo(hints);
    if (ret)
        die("fi_getinfo found no RDM endpoint with tagged messages for provider '%s'%s%s: %s",
            opt.prov, opt.domain ? ", domain " : "", opt.domain ? opt.domain : "",
            fi_strerror(-ret));
    if (opt.inject && fab.info->tx_attr->inject_size < opt.size)
        die("-I: %zu bytes exceed the provider's inject_size (%zu)", opt.size,
            fab.info->tx_attr->inject_size);

    check(fi_fabric(fab.info->fabric_attr, &fab.fabric, NULL), "fi_fabric");
    check(fi_domain(fab.fabric, fab.info, &fab.domain, NULL), "fi_domain");
    check(fi_cq_open(fab.domain, &cq_attr, &fab.cq, NULL), "fi_cq_open");
    av_attr.type = fab.info->domain_attr->av_type;
    check(fi_av_open(fab.domain, &av_attr, &fab.av, NULL), "fi_av_open");
    fab.neps = neps;
    fab.eps = calloc(neps, sizeof *fab.eps);
    if (!fab.eps) die("out of memory");
    for (unsigned i = 0; i < neps; i++) {
        check(fi_endpoint(fab.domain, fab.info, &fab.eps[i], NULL), "fi_endpoint");
        check(fi_ep_bind(fab.eps[i], &fab.cq->fid, FI_TRANSMIT | FI_RECV), "fi_ep_bind(cq)");
        check(fi_ep_bind(fab.eps[i], &fab.av->fid, 0), "fi_ep_bind(av)");
        check(fi_enable(fab.eps[i]), "fi_enable");
    }
    fab.buf = aligned_alloc(4096, (size_t)2 * SLOTS * MAX_SIZE);
    if (!fab.buf) die("out of memory");
    memset(fab.buf, 0, (size_t)2 * SLOTS * MAX_SIZE);
    check(fi_mr_reg(fab.domain, fab.buf, (size_t)2 * SLOTS * MAX_SIZE, FI_SEND | FI_RECV, 0, 0, 0,
                    &fab.mr, NULL),
          "fi_mr_reg");
    fab.desc = fi_mr_desc(fab.mr);

    /* The mlx4 provider says how many rails the domain has; others have one. */
    struct fi_mlx4_domain_ops *ext = NULL;
    struct fi_mlx4_rail_attr rails[16];
    size_t count = 16;
    fab.rails = 1;
    if (!fi_open_ops(&fab.domain->fid, FI_MLX4_DOMAIN_OPS_V1, 0, (void **)&ext, NULL) && ext &&
        ext->size >= offsetof(struct fi_mlx4_domain_ops, query_rails) + sizeof ext->query_rails &&
        ext->query_rails) {
        ret = ext->query_rails(fab.domain, rails, &count);
        if ((ret == 0 || ret == -FI_ETOOSMALL) && count > 0) fab.rails = (unsigned)count;
    }
}

static void close_fid(struct fid *f, const char *what)
{
    int ret = fi_close(f);
    if (ret) die("fi_close(%s) failed: %s", what, fi_strerror(-ret));
}

void close_objects(void)
{
    close_fid(&fab.mr->fid, "mr");
    for (unsigned i = 0; i < fab.neps; i++)
        close_fid(&fab.eps[i]->fid, "endpoint");
    close_fid(&fab.av->fid, "av");
    close_fid(&fab.cq->fid, "cq");
    close_fid(&fab.domain->fid, "domain");
    close_fid(&fab.fabric->fid, "fabric");
    fi_freeinfo(fab.info);
    free(fab.eps);
    free(fab.buf);
}

/* Sends our endpoint names (count, then length + bytes each) to fd. */
void send_names(int fd)
{
    uint32_t n = fab.neps;

    sock_send(fd, &n, sizeof n);
    for (unsigned i = 0; i < fab.neps; i++) {
        char name[NAME_MAX_LEN];
        size_t len = sizeof name;
        uint32_t len32;
        check(fi_getname(&fab.eps[i]->fid, name, &len), "fi_getname");
        len32 = (uint32_t)len;
        sock_send(fd, &len32, sizeof len32);
        sock_send(fd, name, len);
    }
}

/* Receives names from fd and inserts them; returns how many (at most max). */
unsigned recv_names(int fd, fi_addr_t *addrs, unsigned max)
{
    uint32_t n, len;
    char name[NAME_MAX_LEN];

    sock_recv(fd, &n, sizeof n);
    if (n > max) die("%u endpoint names offered, at most %u expected", n, max);
    for (uint32_t i = 0; i < n; i++) {
        sock_recv(fd, &len, sizeof len);
        if (len > sizeof name) die("an endpoint name of %u bytes is too long", len);
        sock_recv(fd, name, len);
        int ret = fi_av_insert(fab.av, name, 1, &addrs[i], 0, NULL);
        if (ret != 1)
            die("fi_av_insert: %s (%d)", ret < 0 ? fi_strerror(-ret) : "not inserted", ret);
    }
    return n;
}

/* ---- posting and completions ---------------------------------------------------- */

void cq_error(void)
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
    struct fi_cq_tagged_entry e[CQ_BATCH];
    ssize_t n = fi_cq_read(fab.cq, e, CQ_BATCH);

    if (n == -FI_EAGAIN) {
        /* Both processes poll; on a busy or small host they share a core, and
         * the one waiting must let the other run (as bench_device does). */
        if (++fab.idle % 16 == 0) sched_yield();
        if (fab.idle % 65536 == 0) check_peers();
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

/* ---- data ------------------------------------------------------------------------ */

/* Word k of message seq of a kind (the tag's upper bits). */
static uint64_t data_word(uint64_t kind, uint64_t seq, size_t k)
{
    if (k == 0) return seq ^ (kind << 56);
    uint64_t z = ((seq << 16) ^ k ^ (kind << 60)) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    return z ^ (z >> 31);
}

void fill(char *p, size_t len, uint64_t tag_kind, uint64_t seq)
{
    for (size_t k = 0; k < len / 8; k++) {
        uint64_t w = data_word(TAG_KIND(tag_kind), seq, k);
        memcpy(p + 8 * k, &w, 8);
    }
}

/* Checks a completed receive: its length, its tag and every byte. */
void verify(const struct op *op, const char *p, size_t len, uint64_t tag_kind, uint64_t seq,
            const char *what)
{
    uint64_t tag = tag_kind | (seq & 0xffffffffu);

    if (op->len != len || op->tag != tag)
        die("%s %" PRIu64 ": %" PRIu64 " bytes with tag 0x%" PRIx64 " (expected %zu, 0x%" PRIx64
            ")",
            what, seq, op->len, op->tag, len, tag);
    for (size_t k = 0; k < len / 8; k++) {
        uint64_t got, want = data_word(TAG_KIND(tag_kind), seq, k);
        memcpy(&got, p + 8 * k, 8);
        if (got != want)
            die("%s %" PRIu64 ": wrong data at byte %zu: 0x%016" PRIx64 " instead of 0x%016" PRIx64
                "%s",
                what, seq, 8 * k, got, want, k == 0 ? " (lost, repeated or reordered?)" : "");
    }
}

struct op tx_ops[SLOTS], rx_ops[SLOTS];

/* Receives match by tag alone (FI_ADDR_UNSPEC): no FI_DIRECTED_RECV needed. */
void post_recv(struct fid_ep *ep, unsigned s, size_t len, uint64_t tag_kind, uint64_t seq)
{
    struct op *op = &rx_ops[s];
    POST(fi_trecv(ep, rx_slot(s), len, fab.desc, FI_ADDR_UNSPEC, tag_kind | (seq & 0xffffffffu), 0,
                  &op->ctx),
         op, "fi_trecv");
}

/* Sends message seq from tx slot s, once the slot's last send has completed. */
void post_send(struct fid_ep *ep, unsigned s, size_t len, fi_addr_t to, uint64_t tag_kind,
               uint64_t seq)
{
    struct op *op = &tx_ops[s];
    uint64_t tag = tag_kind | (seq & 0xffffffffu);

    wait_op(op);
    fill(tx_slot(s), len, tag_kind, seq);
    if (opt.inject) {
        ssize_t ret;
        while ((ret = fi_tinject(ep, tx_slot(s), len, to, tag)) == -FI_EAGAIN)
            progress();
        if (ret) die("fi_tinject failed: %s (%zd)", fi_strerror((int)-ret), ret);
        return;
    }
    POST(fi_tsend(ep, tx_slot(s), len, fab.desc, to, tag, &op->ctx), op, "fi_tsend");
}

void wait_sends(void)
{
    for (unsigned s = 0; s < SLOTS; s++)
        wait_op(&tx_ops[s]);
}

int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double median_sorted(const double *v, uint64_t n)
{
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- memory ---------------------------------------------------------------------- */

struct mem mem_now(void)
{
    struct mem m = {0};
    char line[256], prefix[64];
    FILE *f = fopen("/proc/self/status", "r");
    DIR *d;
    struct dirent *e;
    long long kb;

    if (!f) die("/proc/self/status: %s", strerror(errno));
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "VmRSS: %lld kB", &kb) == 1) m.rss = kb * 1024;
        if (sscanf(line, "RssAnon: %lld kB", &kb) == 1) m.anon = kb * 1024;
        if (sscanf(line, "RssShmem: %lld kB", &kb) == 1) m.shmem = kb * 1024;
    }
    fclose(f);
    /* The software HCA's segments of this process: /dev/shm/mlx4fi-sim-UID-PID-*. */
    snprintf(prefix, sizeof prefix, "mlx4fi-sim-%u-%d-", (unsigned)getuid(), (int)getpid());
    if ((d = opendir("/dev/shm"))) {
        while ((e = readdir(d))) {
            struct stat st;
            if (strncmp(e->d_name, prefix, strlen(prefix))) continue;
            if (fstatat(dirfd(d), e->d_name, &st, 0) == 0)
                m.shm_own += (long long)st.st_blocks * 512;
        }
        closedir(d);
    }
    return m;
}
