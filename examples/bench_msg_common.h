/*
 * bench_msg_common.h: what bench_msg.c (the tests, the roles and main) shares
 * with bench_msg_common.c (its plumbing): the options, the three processes
 * and their sockets, the libfabric objects, posting and completions, the data
 * pattern and the memory reading. Used only by the bench_msg example.
 */
#ifndef BENCH_MSG_COMMON_H
#define BENCH_MSG_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <rdma/fabric.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>

#define MAX_SIZE 4096
#define MAX_WINDOW 128
#define MAX_PEERS 1024
#define NAME_MAX_LEN 512
#define CQ_BATCH 16

/* Tags: bits 60..63 say what a message is, 0..31 its sequence number. */
#define TAG_PING (1ull << 60)
#define TAG_PONG (2ull << 60)
#define TAG_DATA (3ull << 60)
#define TAG_ACK (4ull << 60)
#define TAG_HELLO (5ull << 60)
#define TAG_REPLY (6ull << 60)
#define TAG_KIND(t) ((t) >> 60)

/* The command line (bench_msg.c parses it); defaults in bench_msg_common.c. */
struct options {
    const char *prov, *domain;
    bool lat, rate, mem;
    size_t size;
    uint64_t iters, messages;
    unsigned window, peers, timeout;
    bool inject, pin;
};
extern struct options opt;

/* ---- processes and failing loudly --------------------------------------- */

/* The server (the parent) times; the client is its peer; the crowd holds the idle peers. */
enum role { SERVER, CLIENT, CROWD };
extern const char *const role_names[];
extern enum role role;
extern pid_t kids[2];   /* server: the client and crowd processes, 0 when none or reaped */
extern int kid_sock[2]; /* server: its ends of their socketpairs */
extern int up_sock;     /* client, crowd: the end towards the server */

/* Prints "bench_msg (ROLE): ..." to stderr, kills the other processes, exits 1. */
_Noreturn void die(const char *fmt, ...);
void check(long ret, const char *call); /* die()s if a libfabric call failed */
void check_peers(void);                 /* die()s if a process we depend on is gone */
/* Before any fi_* call: forks a process for role r that runs body and exits. */
void spawn(enum role r, void (*body)(void));
void arm_timeout(void); /* after opt.timeout seconds: kill the others, exit 3 */
void sock_send(int fd, const void *buf, size_t len);
void sock_recv(int fd, void *buf, size_t len);
void barrier(int fd);
double now(void); /* seconds, CLOCK_MONOTONIC */
void pin_self(void);

/* ---- libfabric objects --------------------------------------------------- */

/* One posted operation; the CQ entry's op_context points back to it. */
struct op {
    struct fi_context2 ctx; /* first: providers with FI_CONTEXT(2) use it */
    bool busy;
    uint64_t len, tag;
};

/* This process's objects: one domain, CQ and AV; one endpoint, or the crowd's many. */
struct fab {
    struct fi_info *info;
    struct fid_fabric *fabric;
    struct fid_domain *domain;
    struct fid_cq *cq;
    struct fid_av *av;
    struct fid_ep **eps;
    unsigned neps;
    struct fid_mr *mr;
    void *desc;
    char *buf; /* tx slots, then rx slots, each MAX_SIZE */
    unsigned rails;
    unsigned idle;
};
extern struct fab fab;

#define SLOTS (2 * MAX_WINDOW + 4)

#define ACK_SLOT (SLOTS - 1)
char *tx_slot(unsigned s);
char *rx_slot(unsigned s);
extern struct op tx_ops[SLOTS], rx_ops[SLOTS];

void open_objects(unsigned neps, size_t av_count);
void close_objects(void);
void send_names(int fd);                                     /* our endpoints' names to fd */
unsigned recv_names(int fd, fi_addr_t *addrs, unsigned max); /* inserted; how many */

/* ---- posting and completions --------------------------------------------- */

void cq_error(void);
void progress(void); /* reaps completions (and drives the provider's progress) */
void wait_op(struct op *op);
#define POST(call, op, what)                                                                       \
    do {                                                                                           \
        ssize_t ret_;                                                                              \
        (op)->busy = true;                                                                         \
        while ((ret_ = (call)) == -FI_EAGAIN)                                                      \
            progress();                                                                            \
        if (ret_) die("%s failed: %s (%zd)", what, fi_strerror((int)-ret_), ret_);                 \
    } while (0)

void post_recv(struct fid_ep *ep, unsigned s, size_t len, uint64_t tag_kind, uint64_t seq);
void post_send(struct fid_ep *ep, unsigned s, size_t len, fi_addr_t to, uint64_t tag_kind,
               uint64_t seq);
void wait_sends(void);

/* ---- data, statistics, memory -------------------------------------------- */

void fill(char *p, size_t len, uint64_t tag_kind, uint64_t seq);
void verify(const struct op *op, const char *p, size_t len, uint64_t tag_kind, uint64_t seq,
            const char *what);
int cmp_double(const void *a, const void *b);
double median_sorted(const double *v, uint64_t n);

struct mem {
    long long rss, anon, shmem, shm_own; /* bytes */
};

struct mem mem_now(void);

#endif
