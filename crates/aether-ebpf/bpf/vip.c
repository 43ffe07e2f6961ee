// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// Virtual addresses for components (cgroup connect4 and getpeername4).
//
// A process in the node's cgroup that connects over TCP to a component's virtual address
// (`vips`: address and port → the node's local listener for that component) is connected to
// that listener instead, with no proxy in between; getpeername on the socket then answers the
// virtual address it dialled (`vips_back`). Connections are counted per virtual address, and
// the packets and bytes those connections carry (cgroup skb ingress and egress) as well.

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// An IPv4 address (network order) and a port (host order).
struct ipv4_port {
    __u32 addr;
    __u16 port;
    __u16 pad;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, struct ipv4_port);
    __type(value, struct ipv4_port);
} vips SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, struct ipv4_port);
    __type(value, struct ipv4_port);
} vips_back SEC(".maps");

// Connections made through each virtual address.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, struct ipv4_port);
    __type(value, __u64);
} vip_connections SEC(".maps");

// Packets and bytes sent to (`out`) and received from (`in`) a component through its virtual
// address, by the sockets of the cgroup.
struct traffic {
    __u64 packets_out;
    __u64 bytes_out;
    __u64 packets_in;
    __u64 bytes_in;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, struct ipv4_port);
    __type(value, struct traffic);
} vip_traffic SEC(".maps");

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx) {
    if (ctx->protocol != IPPROTO_TCP)
        return 1;
    struct ipv4_port dialled = {
        .addr = ctx->user_ip4,
        .port = bpf_ntohs((__u16)ctx->user_port),
    };
    struct ipv4_port *target = bpf_map_lookup_elem(&vips, &dialled);
    if (!target)
        return 1;
    ctx->user_ip4 = target->addr;
    ctx->user_port = bpf_htons(target->port);
    __u64 *count = bpf_map_lookup_elem(&vip_connections, &dialled);
    if (count) {
        __sync_fetch_and_add(count, 1);
    } else {
        __u64 one = 1;
        bpf_map_update_elem(&vip_connections, &dialled, &one, BPF_NOEXIST);
    }
    return 1;
}

SEC("cgroup/getpeername4")
int getpeername4(struct bpf_sock_addr *ctx) {
    struct ipv4_port real = {
        .addr = ctx->user_ip4,
        .port = bpf_ntohs((__u16)ctx->user_port),
    };
    struct ipv4_port *vip = bpf_map_lookup_elem(&vips_back, &real);
    if (!vip)
        return 1;
    ctx->user_ip4 = vip->addr;
    ctx->user_port = bpf_htons(vip->port);
    return 1;
}

// Counts a packet of a socket connected through a virtual address: its remote end is the
// listener of a component (`vips_back`).
static __always_inline void count(struct __sk_buff *skb, int out) {
    if (skb->family != 2 /* AF_INET */)
        return;
    struct ipv4_port remote = {
        .addr = skb->remote_ip4,
        // remote_port holds the network-order port in its upper half on little endian.
        .port = (__u16)bpf_ntohl(skb->remote_port),
    };
    struct ipv4_port *vip = bpf_map_lookup_elem(&vips_back, &remote);
    if (!vip)
        return;
    struct traffic *t = bpf_map_lookup_elem(&vip_traffic, vip);
    if (!t) {
        struct traffic zero = {};
        bpf_map_update_elem(&vip_traffic, vip, &zero, BPF_NOEXIST);
        t = bpf_map_lookup_elem(&vip_traffic, vip);
        if (!t)
            return;
    }
    if (out) {
        __sync_fetch_and_add(&t->packets_out, 1);
        __sync_fetch_and_add(&t->bytes_out, skb->len);
    } else {
        __sync_fetch_and_add(&t->packets_in, 1);
        __sync_fetch_and_add(&t->bytes_in, skb->len);
    }
}

SEC("cgroup_skb/egress")
int traffic_out(struct __sk_buff *skb) {
    count(skb, 1);
    return 1;
}

SEC("cgroup_skb/ingress")
int traffic_in(struct __sk_buff *skb) {
    count(skb, 0);
    return 1;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
