// fi_endpoint: the RDM endpoint's life (open, bind, enable, close), its
// options, fi_getname and fi_cancel, the routing of engine completions to CQs
// and counters, and the checks shared by the data-path files.
#include "ep.hpp"

#include "barrier.hpp"
#include "getinfo.hpp"
#include "getinfo_addr.hpp"
#include "nosys.hpp"
#include "provider.hpp"
#include "rail_stats.hpp"

#include <rdma/fi_atomic.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_collective.h>
#include <rdma/fi_rma.h>
#include <rdma/fi_tagged.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace mlx4fi::ofi
{

int refuse(const char *op, int code, const char *why) noexcept
{
    MLX4_WARN(FI_LOG_EP_DATA, "%s: %s (%s)\n", op, why, fi_strerror(-code));
    return code;
}

int check_iov(const iovec *iov, size_t count, const char *op, size_t &total) noexcept
{
    total = 0;
    if (count > iov_limit) return refuse(op, -FI_EINVAL, "more iov entries than iov_limit (4)");
    if (count && !iov) return refuse(op, -FI_EINVAL, "NULL iov with a nonzero count");
    for (size_t i = 0; i < count; ++i) {
        if (!iov[i].iov_base && iov[i].iov_len)
            return refuse(op, -FI_EINVAL, "NULL buffer with a nonzero length");
        total += iov[i].iov_len;
        if (total < iov[i].iov_len || total > max_msg_size)
            return refuse(op, -FI_EINVAL, "length above max_msg_size");
    }
    return 0;
}

namespace
{

// Posts through the engine; a full queue gets one round of progress and
// another try before the caller sees -FI_EAGAIN.
template <class Args, class Post> int post(ep_obj &ep, const Args &a, Post fn) noexcept
{
    status s = (ep.engine.get()->*fn)(a);
    if (s == err_again) {
        ep.engine->progress();
        s = (ep.engine.get()->*fn)(a);
    }
    return s.code();
}

bool known(const ep_obj &ep, fi_addr_t a) noexcept
{
    return ep.av->table.lookup(a) != nullptr;
}

} // namespace

int ep_send(ep_obj &ep, const proto::send_args &a, const char *op) noexcept
{
    uint64_t need = (a.tagged ? FI_TAGGED : FI_MSG) | FI_SEND;
    if ((ep.caps & need) != need)
        return refuse(op, -FI_EOPNOTSUPP, "the endpoint was not opened with this capability");
    size_t total;
    if (int r = check_iov(a.iov, a.count, op, total)) return r;
    if ((a.flags & FI_INJECT) && total > inject_size)
        return refuse(op, -FI_EINVAL, "inject longer than inject_size (64)");
    lock_guard g(ep.domain->lock);
    if (!ep.enabled) return refuse(op, -FI_EOPBADSTATE, "endpoint not enabled");
    if (!known(ep, a.dest)) return refuse(op, -FI_EINVAL, "destination not in the AV");
    return post(ep, a, &proto::engine::send);
}

int ep_recv(ep_obj &ep, proto::recv_args &a, const char *op) noexcept
{
    uint64_t need = (a.tagged ? FI_TAGGED : FI_MSG) | FI_RECV;
    if ((ep.caps & need) != need)
        return refuse(op, -FI_EOPNOTSUPP, "the endpoint was not opened with this capability");
    size_t total;
    if (int r = check_iov(a.iov, a.count, op, total)) return r;
    if ((a.flags & FI_MULTI_RECV) && !(ep.caps & FI_MULTI_RECV))
        return refuse(op, -FI_EOPNOTSUPP, "FI_MULTI_RECV without the capability");
    // A source only narrows the match on endpoints that asked for it.
    if (!(ep.caps & FI_DIRECTED_RECV)) a.src = FI_ADDR_UNSPEC;
    lock_guard g(ep.domain->lock);
    if (!ep.enabled) return refuse(op, -FI_EOPBADSTATE, "endpoint not enabled");
    if (a.src != FI_ADDR_UNSPEC && !known(ep, a.src))
        return refuse(op, -FI_EINVAL, "source not in the AV");
    return post(ep, a, &proto::engine::recv);
}

int ep_rma(ep_obj &ep, const proto::rma_args &a, const char *op) noexcept
{
    uint64_t need = FI_RMA | (a.read ? FI_READ : FI_WRITE);
    if ((ep.caps & need) != need)
        return refuse(op, -FI_EOPNOTSUPP, "the endpoint was not opened with this capability");
    size_t total;
    if (int r = check_iov(a.iov, a.count, op, total)) return r;
    if (!a.read && (a.flags & FI_INJECT) && total > inject_size)
        return refuse(op, -FI_EINVAL, "inject longer than inject_size (64)");
    lock_guard g(ep.domain->lock);
    if (!ep.enabled) return refuse(op, -FI_EOPBADSTATE, "endpoint not enabled");
    if (!known(ep, a.dest)) return refuse(op, -FI_EINVAL, "target not in the AV");
    return post(ep, a, &proto::engine::rma);
}

void ep_progress(ep_obj &ep) noexcept
{
    if (ep.enabled) ep.engine->progress();
}

// Called from inside engine calls, with domain->lock held.
void ep_sink::report(const proto::event &ev) noexcept
{
    cq_obj *cq = nullptr;
    cntr_obj *cntr = nullptr;
    bool wanted = ev.err != 0 || (ev.op_flags & FI_COMPLETION);
    switch (ev.kind) {
    case proto::event_kind::send:
        cq = ep->tx_cq;
        cntr = ep->cntrs[cntr_send];
        break;
    case proto::event_kind::read:
        cq = ep->tx_cq;
        cntr = ep->cntrs[cntr_read];
        break;
    case proto::event_kind::write:
        cq = ep->tx_cq;
        cntr = ep->cntrs[cntr_write];
        break;
    case proto::event_kind::recv:
        cq = ep->rx_cq;
        cntr = ep->cntrs[cntr_recv];
        break;
    case proto::event_kind::remote_write:
        // Remote CQ data always produces an entry at the target (and counts
        // nowhere: remote counters need FI_RMA_EVENT).
        cq = ep->rx_cq;
        wanted = true;
        break;
    }
    if (cntr) cntr_count(*cntr, ev.err != 0);
    if (!wanted) return;
    if (!cq) {
        MLX4_WARN(FI_LOG_EP_DATA, "completion with no CQ bound for it dropped (err %d)\n", ev.err);
        return;
    }
    cq->push(ev);
}

namespace
{

// An endpoint opened with a service answers name queries there. A port
// another endpoint holds (a second process with the same FI_SOURCE service,
// as a conformance-suite client that exchanges addresses out of band has) is
// no reason to fail the endpoint: it still works by its name.
void start_name_service(ep_obj &ep) noexcept
{
    if (!ep.source.port || ep.name_service) return;
    auto l = ns::listener::start(ep.source, ep.engine->name());
    if (!l.ok()) {
        MLX4_WARN(FI_LOG_EP_CTRL,
                  "fi_enable: cannot answer name queries at %s:%u (%s); the endpoint is "
                  "reachable by its name (fi_getname) only\n",
                  addr::to_string(ep.source.host).c_str(), unsigned(ep.source.port),
                  fi_strerror(-l.error().code()));
        return;
    }
    ep.name_service = std::move(l).value();
    MLX4_INFO(FI_LOG_EP_CTRL, "answering name queries at %s:%u\n",
              addr::to_string(ep.source.host).c_str(), unsigned(ep.source.port));
}

int ep_enable(ep_obj &ep)
{
    lock_guard g(ep.domain->lock);
    if (ep.enabled) return 0;
    if (!ep.av) {
        MLX4_WARN(FI_LOG_EP_CTRL, "fi_enable: no AV bound\n");
        return -FI_ENOAV;
    }
    if ((ep.caps & (FI_SEND | FI_READ | FI_WRITE)) && !ep.tx_cq) {
        MLX4_WARN(FI_LOG_EP_CTRL, "fi_enable: transmit capabilities but no CQ bound with "
                                  "FI_TRANSMIT\n");
        return -FI_ENOCQ;
    }
    if ((ep.caps & FI_RECV) && !ep.rx_cq) {
        MLX4_WARN(FI_LOG_EP_CTRL, "fi_enable: receive capability but no CQ bound with FI_RECV\n");
        return -FI_ENOCQ;
    }
    ep.engine->bind_av(&ep.av->table);
    ep.enabled = true;
    start_name_service(ep);
    return 0;
}

int bind_cq(ep_obj &ep, cq_obj *cq, uint64_t flags)
{
    if (flags & ~(FI_TRANSMIT | FI_RECV | FI_SELECTIVE_COMPLETION)) {
        MLX4_WARN(FI_LOG_EP_CTRL, "fi_ep_bind(cq): unknown flags 0x%llx\n",
                  static_cast<unsigned long long>(flags));
        return -FI_EBADFLAGS;
    }
    if (!(flags & (FI_TRANSMIT | FI_RECV))) {
        MLX4_WARN(FI_LOG_EP_CTRL, "fi_ep_bind(cq): needs FI_TRANSMIT and/or FI_RECV\n");
        return -FI_EINVAL;
    }
    if (((flags & FI_TRANSMIT) && ep.tx_cq) || ((flags & FI_RECV) && ep.rx_cq)) {
        MLX4_WARN(FI_LOG_EP_CTRL, "fi_ep_bind(cq): a CQ is already bound for that direction\n");
        return -FI_EINVAL;
    }
    cq->attach(&ep); // may throw before anything changes
    bool selective = flags & FI_SELECTIVE_COMPLETION;
    if (flags & FI_TRANSMIT) {
        ep.tx_cq = cq;
        ep.tx_completion = selective ? 0 : FI_COMPLETION;
    }
    if (flags & FI_RECV) {
        ep.rx_cq = cq;
        ep.rx_completion = selective ? 0 : FI_COMPLETION;
    }
    return 0;
}

int bind_cntr(ep_obj &ep, cntr_obj *cntr, uint64_t flags)
{
    constexpr uint64_t slot_flag[cntr_slots] = {FI_SEND, FI_RECV, FI_READ, FI_WRITE};
    uint64_t all = 0;
    for (uint64_t f : slot_flag)
        all |= f;
    if (flags & (FI_REMOTE_READ | FI_REMOTE_WRITE)) {
        // fi_endpoint(3): these need an endpoint with FI_RMA_EVENT. RDMA READs
        // and WRITEs never reach the target's CPU; only fi_writedata's header
        // does (fi_mlx4(7), FI_RMA_EVENT).
        MLX4_WARN(FI_LOG_EP_CTRL, "fi_ep_bind(cntr): FI_REMOTE_READ/FI_REMOTE_WRITE counters "
                                  "need FI_RMA_EVENT, which mlx4 does not offer\n");
        return -FI_EINVAL;
    }
    if (!flags || (flags & ~all)) {
        MLX4_WARN(FI_LOG_EP_CTRL,
                  "fi_ep_bind(cntr): flags 0x%llx (need FI_SEND, FI_RECV, FI_READ or "
                  "FI_WRITE)\n",
                  static_cast<unsigned long long>(flags));
        return flags ? -FI_EBADFLAGS : -FI_EINVAL;
    }
    for (int s = 0; s < cntr_slots; ++s)
        if ((flags & slot_flag[s]) && ep.cntrs[s]) {
            MLX4_WARN(FI_LOG_EP_CTRL, "fi_ep_bind(cntr): a counter is already bound for that "
                                      "event\n");
            return -FI_EINVAL;
        }
    cntr->attach(&ep);
    for (int s = 0; s < cntr_slots; ++s)
        if (flags & slot_flag[s]) ep.cntrs[s] = cntr;
    return 0;
}

int ep_bind(fid *f, fid *bf, uint64_t flags) noexcept
{
    return call("fi_ep_bind", [&] {
        ep_obj &ep = *to_ep(reinterpret_cast<fid_ep *>(f));
        if (!bf) {
            MLX4_WARN(FI_LOG_EP_CTRL, "fi_ep_bind: NULL object\n");
            return -FI_EINVAL;
        }
        lock_guard g(ep.domain->lock);
        if (ep.enabled) {
            MLX4_WARN(FI_LOG_EP_CTRL, "fi_ep_bind: endpoint already enabled\n");
            return -FI_EOPBADSTATE;
        }
        switch (bf->fclass) {
        case FI_CLASS_AV: {
            av_obj *av = as_av(bf);
            if (!av || av->domain != ep.domain) break;
            if (flags) {
                MLX4_WARN(FI_LOG_EP_CTRL, "fi_ep_bind(av): flags must be 0\n");
                return -FI_EBADFLAGS;
            }
            if (ep.av) {
                MLX4_WARN(FI_LOG_EP_CTRL, "fi_ep_bind(av): an AV is already bound\n");
                return -FI_EINVAL;
            }
            ep.av = av;
            ++av->bound_eps;
            return 0;
        }
        case FI_CLASS_CQ: {
            cq_obj *cq = as_cq(bf);
            if (!cq || cq->domain != ep.domain) break;
            return bind_cq(ep, cq, flags);
        }
        case FI_CLASS_CNTR: {
            cntr_obj *cntr = as_cntr(bf);
            if (!cntr || cntr->domain != ep.domain) break;
            return bind_cntr(ep, cntr, flags);
        }
        case FI_CLASS_EQ:
            MLX4_WARN(FI_LOG_EP_CTRL, "fi_ep_bind: event queues are not supported\n");
            return -FI_ENOSYS;
        default:
            break;
        }
        MLX4_WARN(FI_LOG_EP_CTRL,
                  "fi_ep_bind: object of class %zu is not an AV, CQ or counter "
                  "of this endpoint's domain\n",
                  bf->fclass);
        return -FI_EINVAL;
    });
}

int ep_control(fid *f, int command, void *arg) noexcept
{
    return call("fi_control(ep)", [&] {
        ep_obj &ep = *to_ep(reinterpret_cast<fid_ep *>(f));
        switch (command) {
        case FI_ENABLE:
            return ep_enable(ep);
        case FI_GETOPSFLAG:
        case FI_SETOPSFLAG: {
            auto *flags = static_cast<uint64_t *>(arg);
            if (!flags) return -FI_EINVAL;
            bool tx = *flags & FI_TRANSMIT, rx = *flags & FI_RECV;
            if (tx == rx) {
                MLX4_WARN(FI_LOG_EP_CTRL, "fi_control: ops flags need exactly one of "
                                          "FI_TRANSMIT and FI_RECV\n");
                return -FI_EINVAL;
            }
            uint64_t &mine = tx ? ep.tx_op_flags : ep.rx_op_flags;
            lock_guard g(ep.domain->lock);
            if (command == FI_GETOPSFLAG)
                *flags = mine;
            else
                mine = *flags & ~(FI_TRANSMIT | FI_RECV);
            return 0;
        }
        default:
            return -FI_ENOSYS;
        }
    });
}

// FI_MLX4_PROTO_INFO: the protocol per size range, one stderr write per
// endpoint, each line prefixed like FI_MLX4_RAIL_INFO's.
void print_protocols(const domain_obj &dom, const proto::engine &eng) noexcept
{
    try {
        const std::string lines = eng.protocol_info();
        std::string out;
        char prefix[160];
        std::snprintf(prefix, sizeof prefix,
                      "[mlx4 %ld] proto domain=%s: ", static_cast<long>(getpid()),
                      dom.desc.name.c_str());
        size_t at = 0;
        while (at < lines.size()) {
            size_t nl = lines.find('\n', at);
            if (nl == std::string::npos) nl = lines.size() - 1;
            out += prefix;
            out.append(lines, at, nl - at + 1);
            at = nl + 1;
        }
        if (!out.empty() && out.back() != '\n') out += '\n';
        std::fwrite(out.data(), 1, out.size(), stderr);
    } catch (...) {
        MLX4_WARN(FI_LOG_EP_CTRL, "FI_MLX4_PROTO_INFO: out of memory\n");
    }
}

int ep_close(fid *f) noexcept
{
    return call("fi_close(ep)", [&] {
        ep_obj *ep = to_ep(reinterpret_cast<fid_ep *>(f));
        domain_obj *dom = ep->domain;
        {
            lock_guard g(dom->lock);
            // Everything still in flight is reported now, while the CQs and
            // counters are still bound.
            ep->engine->shutdown();
            std::erase(dom->endpoints, ep);
            if (ep->tx_cq) ep->tx_cq->detach(ep);
            if (ep->rx_cq) ep->rx_cq->detach(ep);
            for (cntr_obj *c : ep->cntrs)
                if (c) c->detach(ep);
            if (ep->av) --ep->av->bound_eps;
            ep->engine.reset();
            if (dom->rail_stats) {
                flush_engine_counters(*dom);
                print_rail_stats(*dom);
            }
        }
        ep->name_service.reset(); // joins its thread: outside the lock
        delete ep;
        dom->open_objects.fetch_sub(1);
        return 0;
    });
}

int ep_getname(fid_t f, void *addr, size_t *addrlen) noexcept
{
    return call("fi_getname", [&] {
        if (!f || f->fclass != FI_CLASS_EP || !addrlen) {
            MLX4_WARN(FI_LOG_EP_CTRL, "fi_getname: not an endpoint, or NULL addrlen\n");
            return -FI_EINVAL;
        }
        ep_obj &ep = *to_ep(reinterpret_cast<fid_ep *>(f));
        uint8_t name[proto::max_name_bytes];
        size_t n = proto::pack_name(ep.engine->name(), name, sizeof name);
        if (!n) {
            MLX4_WARN(FI_LOG_EP_CTRL, "fi_getname: the engine's name does not pack\n");
            return -FI_EOTHER;
        }
        size_t room = *addrlen;
        if (room && !addr) {
            MLX4_WARN(FI_LOG_EP_CTRL, "fi_getname: NULL buffer with a nonzero length\n");
            return -FI_EINVAL;
        }
        if (addr) std::memcpy(addr, name, std::min(room, n));
        *addrlen = n;
        return room < n ? -FI_ETOOSMALL : 0;
    });
}

ssize_t ep_cancel(fid_t f, void *context) noexcept
{
    return call("fi_cancel", [&] {
        ep_obj &ep = *to_ep(reinterpret_cast<fid_ep *>(f));
        lock_guard g(ep.domain->lock);
        return ep.engine->cancel(context).code();
    });
}

int ep_getopt(fid_t f, int level, int optname, void *optval, size_t *optlen) noexcept
{
    return call("fi_getopt", [&] {
        ep_obj &ep = *to_ep(reinterpret_cast<fid_ep *>(f));
        if (level != FI_OPT_ENDPOINT || optname != FI_OPT_MIN_MULTI_RECV) return -FI_ENOPROTOOPT;
        if (!optval || !optlen) {
            MLX4_WARN(FI_LOG_EP_CTRL, "fi_getopt: NULL optval or optlen\n");
            return -FI_EINVAL;
        }
        if (*optlen < sizeof(size_t)) {
            *optlen = sizeof(size_t);
            return -FI_ETOOSMALL;
        }
        lock_guard g(ep.domain->lock);
        size_t v = ep.engine->min_multi_recv();
        std::memcpy(optval, &v, sizeof v);
        *optlen = sizeof v;
        return 0;
    });
}

int ep_setopt(fid_t f, int level, int optname, const void *optval, size_t optlen) noexcept
{
    return call("fi_setopt", [&] {
        ep_obj &ep = *to_ep(reinterpret_cast<fid_ep *>(f));
        if (level != FI_OPT_ENDPOINT || optname != FI_OPT_MIN_MULTI_RECV) return -FI_ENOPROTOOPT;
        if (!optval || optlen != sizeof(size_t)) {
            MLX4_WARN(FI_LOG_EP_CTRL, "fi_setopt: FI_OPT_MIN_MULTI_RECV takes a size_t\n");
            return -FI_EINVAL;
        }
        size_t v;
        std::memcpy(&v, optval, sizeof v);
        lock_guard g(ep.domain->lock);
        ep.engine->set_min_multi_recv(v);
        return 0;
    });
}

fi_ops ep_fi_ops = {
    .size = sizeof(fi_ops),
    .close = ep_close,
    .bind = ep_bind,
    .control = ep_control,
    .ops_open = nosys,
    .tostr = nosys,
    .ops_set = nosys,
};

// fi_rx_size_left/fi_tx_size_left are deprecated and "may not be supported".
fi_ops_ep ep_ops = {
    .size = sizeof(fi_ops_ep),
    .cancel = ep_cancel,
    .getopt = ep_getopt,
    .setopt = ep_setopt,
    .tx_ctx = nosys,
    .rx_ctx = nosys,
    .rx_size_left = nosys_ssize,
    .tx_size_left = nosys_ssize,
};

fi_ops_cm cm_ops = {
    .size = sizeof(fi_ops_cm),
    .setname = nosys,
    .getname = ep_getname,
    .getpeer = nosys,
    .connect = nosys,
    .listen = nosys,
    .accept = nosys,
    .reject = nosys,
    .shutdown = nosys,
    .join = nosys,
};

fi_ops_atomic atomic_ops = {
    .size = sizeof(fi_ops_atomic),
    .write = nosys_ssize,
    .writev = nosys_ssize,
    .writemsg = nosys_ssize,
    .inject = nosys_ssize,
    .readwrite = nosys_ssize,
    .readwritev = nosys_ssize,
    .readwritemsg = nosys_ssize,
    .compwrite = nosys_ssize,
    .compwritev = nosys_ssize,
    .compwritemsg = nosys_ssize,
    .writevalid = nosys,
    .readwritevalid = nosys,
    .compwritevalid = nosys,
};

fi_ops_collective collective_ops = {
    .size = sizeof(fi_ops_collective),
    .barrier = nosys_ssize,
    .broadcast = nosys_ssize,
    .alltoall = nosys_ssize,
    .allreduce = nosys_ssize,
    .allgather = nosys_ssize,
    .reduce_scatter = nosys_ssize,
    .reduce = nosys_ssize,
    .scatter = nosys_ssize,
    .gather = nosys_ssize,
};

// The capabilities an endpoint gets: what it asked for (everything when it
// asked for nothing), with the directions the man page implies when none is
// named.
uint64_t effective_caps(uint64_t asked) noexcept
{
    uint64_t caps = asked ? asked : all_caps;
    if ((caps & (FI_MSG | FI_TAGGED)) && !(caps & (FI_SEND | FI_RECV))) caps |= FI_SEND | FI_RECV;
    if ((caps & FI_RMA) && !(caps & (FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE)))
        caps |= FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE;
    return caps;
}

} // namespace

int ep_open(fid_domain *d, fi_info *info, fid_ep **out, void *context) noexcept
{
    return call("fi_endpoint", [&] {
        if (!d || !info || !out) {
            MLX4_WARN(FI_LOG_EP_CTRL, "fi_endpoint: NULL domain, info or endpoint\n");
            return -FI_EINVAL;
        }
        domain_obj *dom = to_domain(d);
        int type = FI_EP_UNSPEC; // read as an int: C callers may store any value there
        if (info->ep_attr) std::memcpy(&type, &info->ep_attr->type, sizeof type);
        if (type != FI_EP_RDM && type != FI_EP_UNSPEC) {
            MLX4_WARN(FI_LOG_EP_CTRL, "fi_endpoint: only FI_EP_RDM endpoints\n");
            return -FI_EINVAL;
        }
        if (info->caps & ~all_caps) {
            MLX4_WARN(FI_LOG_EP_CTRL, "fi_endpoint: capabilities 0x%llx not supported\n",
                      static_cast<unsigned long long>(info->caps & ~all_caps));
            return -FI_EINVAL;
        }
        if (info->ep_attr && (info->ep_attr->tx_ctx_cnt > 1 || info->ep_attr->rx_ctx_cnt > 1)) {
            MLX4_WARN(FI_LOG_EP_CTRL, "fi_endpoint: no scalable endpoints or shared contexts\n");
            return -FI_EINVAL;
        }
        auto ep = std::make_unique<ep_obj>();
        ep->domain = dom;
        if (status s = endpoint_source(*info, dom->desc, state().attrs, ep->source); !s.is_ok())
            return s.code();
        ep->caps = effective_caps(info->caps);
        if (info->tx_attr) ep->tx_op_flags = info->tx_attr->op_flags;
        if (info->rx_attr) ep->rx_op_flags = info->rx_attr->op_flags;
        ep->sink.ep = ep.get();
        const util::config &cfg = state().cfg;
        proto::engine_config ec;
        ec.eager_limit = cfg.eager_limit;
        ec.inline_size = static_cast<uint32_t>(cfg.inline_size);
        ec.mr_cache.max_bytes = cfg.mr_cache_size;
        ec.stripe = stripe_config(cfg);
        ec.timing = {cfg.rc_timeout, cfg.rc_retry_count, cfg.rnr_retry, cfg.rnr_timer};
        ec.connect_retry_ms = cfg.connect_retry_ms;
        ec.connect_timeout_ms = cfg.connect_timeout_ms;
        ec.peer_retry_ms = cfg.peer_retry_ms;
        ec.keepalive_ms = cfg.keepalive_ms;
        ec.srq_depth = cfg.rx_queue_size;
        ec.tx_queue_size = cfg.tx_queue_size;
        ec.tx_buffers = cfg.tx_buffers;
        std::vector<proto::rail> rails;
        {
            lock_guard g(dom->lock); // rails may be joining meanwhile
            rails = dom->proto_rails;
            ec.late_ports = dom->late;
        }
        ec.rails_from = &dom->rails_from;
        auto engine = proto::engine::open(rails, ec, ep->sink);
        if (!engine.ok()) {
            MLX4_WARN(FI_LOG_EP_CTRL, "fi_endpoint: engine: %s\n",
                      fi_strerror(-engine.error().code()));
            return engine.error().code();
        }
        ep->engine = std::move(engine).value();
        if (state().cfg.proto_info) print_protocols(*dom, *ep->engine);
        ep->fid.fid.fclass = FI_CLASS_EP;
        ep->fid.fid.context = context;
        ep->fid.fid.ops = &ep_fi_ops;
        ep->fid.ops = &ep_ops;
        ep->fid.cm = &cm_ops;
        ep->fid.msg = &msg_ops;
        ep->fid.rma = &rma_ops;
        ep->fid.tagged = &tagged_ops;
        ep->fid.atomic = &atomic_ops;
        ep->fid.collective = &collective_ops;
        {
            lock_guard g(dom->lock);
            dom->endpoints.push_back(ep.get());
        }
        dom->open_objects.fetch_add(1);
        *out = &ep.release()->fid;
        return 0;
    });
}

} // namespace mlx4fi::ofi
