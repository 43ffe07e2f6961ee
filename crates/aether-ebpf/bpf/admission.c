// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// Admission filter for a node's mesh ports (XDP).
//
// A UDP datagram to one of the node's mesh endpoints (address and port; the address :: stands
// for any) passes only when its source address is an
// admitted, unrevoked member's (map `allowed`, kept by the daemon from its member view), or when
// the source is unknown and still within its handshake budget (a joining node must reach the
// daemon to be admitted at all): HANDSHAKE_BUDGET datagrams per source per window, and at most
// `config.unknown_per_sec` from all unknown sources together. A source in `denied` (revoked) gets
// no budget. Everything else is dropped here, before the daemon's QUIC stack sees it; in audit
// mode it is counted as dropped and passed. Passes, drops and bytes are counted per source in
// `sources`. Traffic to other ports is not looked at.
//
// A second program, on tc egress, counts what the node's mesh endpoints send, per destination
// (`sent`), and lets every packet go on.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// An address as IPv6; IPv4 as ::ffff:a.b.c.d.
struct addr {
    __u8 bytes[16];
};

struct config {
    // Count what would be dropped, drop nothing.
    __u32 audit;
    // Datagrams per second all unknown sources may send together.
    __u32 unknown_per_sec;
};

struct source_stats {
    __u64 passed;
    __u64 dropped;
    __u64 bytes;
    // Start of this source's handshake window (ns, monotonic) and datagrams passed in it.
    __u64 window_start;
    __u64 window_count;
};

struct peer_stats {
    __u64 packets;
    __u64 bytes;
};

struct rate {
    __u64 second;
    __u64 count;
};

#define HANDSHAKE_BUDGET 64
#define HANDSHAKE_WINDOW_NS (10ULL * 1000 * 1000 * 1000)

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct config);
} config SEC(".maps");

// A mesh endpoint of the node: its address and UDP port (host order).
struct endpoint {
    struct addr addr;
    __u16 port;
    __u16 pad;
};

// The node's mesh endpoints. Other datagrams (another node's, on a shared interface) pass.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, struct endpoint);
    __type(value, __u8);
} endpoints SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, struct addr);
    __type(value, __u8);
} allowed SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, struct addr);
    __type(value, __u8);
} denied SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct addr);
    __type(value, struct source_stats);
} sources SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct rate);
} unknown_rate SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct addr);
    __type(value, struct peer_stats);
} sent SEC(".maps");

static __always_inline struct source_stats *stats_of(struct addr *src) {
    struct source_stats *s = bpf_map_lookup_elem(&sources, src);
    if (s)
        return s;
    struct source_stats zero = {};
    bpf_map_update_elem(&sources, src, &zero, BPF_NOEXIST);
    return bpf_map_lookup_elem(&sources, src);
}

// Whether an unknown source may pass one more datagram now.
static __always_inline int within_budget(struct source_stats *s, struct config *cfg) {
    __u64 now = bpf_ktime_get_ns();
    if (now - s->window_start > HANDSHAKE_WINDOW_NS) {
        s->window_start = now;
        s->window_count = 0;
    }
    if (s->window_count >= HANDSHAKE_BUDGET)
        return 0;
    __u32 zero = 0;
    struct rate *r = bpf_map_lookup_elem(&unknown_rate, &zero);
    if (!r)
        return 0;
    __u64 second = now / 1000000000ULL;
    if (r->second != second) {
        r->second = second;
        r->count = 0;
    }
    if (r->count >= cfg->unknown_per_sec)
        return 0;
    __sync_fetch_and_add(&r->count, 1);
    s->window_count += 1;
    return 1;
}

// Whether a frame from `data` to `end` may go on: 1 to pass (not for a mesh endpoint, or
// admitted), 0 to drop. The same decision on XDP and on tc ingress.
static __always_inline int judge(void *data, void *end) {
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return 1;

    struct addr src = {};
    struct endpoint dst = {};
    struct udphdr *udp;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP)
            return 1;
        udp = (void *)ip + ip->ihl * 4;
        src.bytes[10] = 0xff;
        src.bytes[11] = 0xff;
        __builtin_memcpy(&src.bytes[12], &ip->saddr, 4);
        dst.addr.bytes[10] = 0xff;
        dst.addr.bytes[11] = 0xff;
        __builtin_memcpy(&dst.addr.bytes[12], &ip->daddr, 4);
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_UDP)
            return 1;
        udp = (void *)(ip6 + 1);
        __builtin_memcpy(src.bytes, &ip6->saddr, 16);
        __builtin_memcpy(dst.addr.bytes, &ip6->daddr, 16);
    } else {
        return 1;
    }
    if ((void *)(udp + 1) > end)
        return 1;
    dst.port = bpf_ntohs(udp->dest);
    if (!bpf_map_lookup_elem(&endpoints, &dst)) {
        struct endpoint any = {.port = dst.port};
        if (!bpf_map_lookup_elem(&endpoints, &any))
            return 1;
    }

    __u32 zero = 0;
    struct config *cfg = bpf_map_lookup_elem(&config, &zero);
    if (!cfg)
        return 1;
    struct source_stats *s = stats_of(&src);
    if (!s)
        return 1;
    __u64 len = (__u64)(end - data);
    int pass = 0;
    if (bpf_map_lookup_elem(&allowed, &src))
        pass = 1;
    else if (!bpf_map_lookup_elem(&denied, &src))
        pass = within_budget(s, cfg);
    if (pass) {
        __sync_fetch_and_add(&s->passed, 1);
        __sync_fetch_and_add(&s->bytes, len);
        return 1;
    }
    __sync_fetch_and_add(&s->dropped, 1);
    return cfg->audit ? 1 : 0;
}

SEC("xdp")
int admission(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    return judge(data, end) ? XDP_PASS : XDP_DROP;
}

// tcx: let the packet go on to the next program, if any, then the stack; or drop it.
#define TCX_NEXT -1
#define TC_ACT_SHOT 2

// The admission filter on tc ingress, where XDP does not attach.
SEC("classifier")
int admission_tc(struct __sk_buff *skb) {
    // The headers judged must be in the linear part.
    bpf_skb_pull_data(skb, 128);
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    return judge(data, end) ? TCX_NEXT : TC_ACT_SHOT;
}

SEC("classifier")
int egress(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return TCX_NEXT;
    struct endpoint src = {};
    struct addr dst = {};
    struct udphdr *udp;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP)
            return TCX_NEXT;
        udp = (void *)ip + ip->ihl * 4;
        src.addr.bytes[10] = 0xff;
        src.addr.bytes[11] = 0xff;
        __builtin_memcpy(&src.addr.bytes[12], &ip->saddr, 4);
        dst.bytes[10] = 0xff;
        dst.bytes[11] = 0xff;
        __builtin_memcpy(&dst.bytes[12], &ip->daddr, 4);
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_UDP)
            return TCX_NEXT;
        udp = (void *)(ip6 + 1);
        __builtin_memcpy(src.addr.bytes, &ip6->saddr, 16);
        __builtin_memcpy(dst.bytes, &ip6->daddr, 16);
    } else {
        return TCX_NEXT;
    }
    if ((void *)(udp + 1) > end)
        return TCX_NEXT;
    src.port = bpf_ntohs(udp->source);
    if (!bpf_map_lookup_elem(&endpoints, &src)) {
        struct endpoint any = {.port = src.port};
        if (!bpf_map_lookup_elem(&endpoints, &any))
            return TCX_NEXT;
    }
    struct peer_stats *p = bpf_map_lookup_elem(&sent, &dst);
    if (!p) {
        struct peer_stats zero = {};
        bpf_map_update_elem(&sent, &dst, &zero, BPF_NOEXIST);
        p = bpf_map_lookup_elem(&sent, &dst);
        if (!p)
            return TCX_NEXT;
    }
    __sync_fetch_and_add(&p->packets, 1);
    __sync_fetch_and_add(&p->bytes, skb->len);
    return TCX_NEXT;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
