/*
 * bench_common.h: what bench_rails.c (the tests and main) shares with
 * bench_common.c (its plumbing): the options, the two processes and their
 * socketpair, the libfabric objects and registered regions, posting and
 * completions, the data patterns that make every transfer checkable, and the
 * fi_ext_mlx4.h rail statistics. Used only by the bench_rails example.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <rdma/fabric.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_ext_mlx4.h>

enum test { TEST_TAGGED, TEST_READ, TEST_WRITE, TEST_RATE, NUM_TESTS };
extern const char *const test_names[NUM_TESTS]; /* "tagged", "read", "write", "rate" */

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

static inline uint64_t make_tag(uint64_t kind, uint32_t pass, uint64_t iter)
{
    return kind | ((uint64_t)(pass & 0x0fffffff) << 32) | (iter & 0xffffffffu);
}

/* The command line (parse_options); defaults in bench_common.c. */
struct options {
    const char *prov, *domain, *fabric; /* point into argv, or string literals */
    bool run[NUM_TESTS];
    size_t sizes[MAX_SIZES];
    int nsizes;
    size_t max_size;
    uint64_t iters; /* 0: automatic */
    unsigned window;
    unsigned timeout;
};

extern struct options opt;

/* Which process this is and how to reach the other one. */
struct proc {
    bool parent;
    pid_t child;      /* parent: the child's pid, 0 once reaped */
    pid_t parent_pid; /* child: the parent it watches */
    int sock;         /* our end of the socketpair */
    const char *name; /* "parent" or "child", for messages */
};

extern struct proc proc;

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

/* This process's libfabric objects; all owned, closed by close_objects(). */
struct fab {
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
};

extern struct fab fab;

/* An extension op is usable only if the provider's table reaches it and sets it. */
#define EXT_HAS(member)                                                                            \
    (fab.ext &&                                                                                    \
     fab.ext->size >= offsetof(struct fi_mlx4_domain_ops, member) + sizeof(fab.ext->member) &&     \
     fab.ext->member)

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

/* ---- options and processes ---------------------------------------------- */

void parse_options(int argc, char **argv); /* exits 2 on bad usage */
void fork_peer(void);   /* socketpair and fork: fills proc; before any fi_* call */
void arm_timeout(void); /* after opt.timeout seconds: kill the child, exit 3 */

/* ---- failing loudly ----------------------------------------------------- */

/* Prints "bench_rails (parent|child): ..." to stderr, kills the child, exits 1. */
_Noreturn void die(const char *fmt, ...);
void check(long ret, const char *call); /* die()s if a libfabric call failed */
void check_peer(void);                  /* die()s if the other process is gone */

/* ---- the socketpair: whole buffers, or die() ---------------------------- */

void sock_send(const void *buf, size_t len);
void sock_recv(void *buf, size_t len);

/* ---- libfabric objects -------------------------------------------------- */

void open_objects(void);
void register_region(struct region *r, size_t len, uint64_t access, uint64_t key);
void connect_peer(void); /* swaps names and region keys, inserts the peer's address */
void close_objects(void);

/* ---- posting and completions -------------------------------------------- */

void progress(void); /* reaps completions (and drives the provider's progress) */
void wait_op(struct op *op);
void wait_all(struct op *ops, unsigned n);
void inject(const void *buf, size_t len, uint64_t tag); /* fi_tinject, retried */

/* Posts an operation, driving progress while the provider says "again". */
#define POST(call, op, what)                                                                       \
    do {                                                                                           \
        ssize_t ret_;                                                                              \
        (op)->busy = true;                                                                         \
        while ((ret_ = (call)) == -FI_EAGAIN)                                                      \
            progress();                                                                            \
        if (ret_) die("%s failed: %s (%zd)", what, fi_strerror((int)-ret_), ret_);                 \
    } while (0)

/* ---- data patterns, timing and verification ----------------------------- */

#define READ_ITER 0xffffffffu /* the stamp of data that is read, not sent */

uint64_t stamp_word(uint32_t pass, uint64_t iter);
char *slot(const struct region *r, unsigned s); /* window slot s of a region */
void fill_body(char *p, size_t len);
void put_stamps(char *p, size_t len, uint64_t stamp);
void unstamp(char *p, size_t len);
void poison_slots(const struct region *r, const struct pass *p);
/* Checks every byte of the last transfer into each slot; die()s on a mismatch. */
void check_slots(const struct region *r, const struct pass *p, bool read);
double now(void); /* seconds, CLOCK_MONOTONIC */

/* ---- rail statistics (fi_ext_mlx4.h) ------------------------------------ */

int stats_reset(void);
int stats_query(struct fi_mlx4_rail_stats *stats, uint32_t *n);
void stats_add(struct fi_mlx4_rail_stats *sum, uint32_t *n, const struct fi_mlx4_rail_stats *more,
               uint32_t nmore);
void print_stats(const struct fi_mlx4_rail_stats *s, uint32_t n);
void print_rails(void);

#endif
