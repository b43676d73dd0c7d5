// SPDX-License-Identifier: Apache-2.0
/*
 * Sluice's uplink XDP program.
 *
 * Steers to the AF_XDP socket of the receive queue only what Sluice's fast path
 * owns: VXLAN (UDP to vxlan_port) and IPIP (IPv4 protocol 4) addressed to the
 * node, and in native-routing mode IPv4 for a local pod prefix. Everything else
 * (the node's ssh, kubelet, DNS, ARP, ping, fragments) goes on to the kernel.
 *
 * The loader (dataplane/src/sys/bpf.rs) writes the configuration into
 * sluice_config and the pod prefixes into sluice_pods; nothing is compiled in.
 * A queue without a socket in sluice_xsks falls back to XDP_PASS, so a program
 * left behind by a dead process passes traffic to the kernel instead of
 * dropping it.
 *
 * Rebuild with scripts/build-xdp; the object is committed next to this file.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* sluice_config.flags: which kinds of traffic to steer. */
#define SLUICE_F_VXLAN  (1u << 0)
#define SLUICE_F_IPIP   (1u << 1)
#define SLUICE_F_NATIVE (1u << 2)

/* iphdr.frag_off: more-fragments flag and fragment offset (net/ip.h). */
#define SLUICE_IP_MF     0x2000
#define SLUICE_IP_OFFSET 0x1fff

/* Written by the loader, 8 bytes; the Rust side mirrors this layout. */
struct sluice_config {
	__be32 node_ip;    /* the node's underlay address; 0: steer no tunnel */
	__be16 vxlan_port; /* VXLAN UDP destination port */
	__u16 flags;       /* SLUICE_F_* */
};

struct sluice_prefix {
	__u32 prefixlen;
	__be32 addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sluice_config);
} sluice_config SEC(".maps");

/* One AF_XDP socket per receive queue, indexed by queue number. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} sluice_xsks SEC(".maps");

/* Local pod prefixes (native-routing mode). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sluice_prefix);
	__type(value, __u32);
} sluice_pods SEC(".maps");

static __always_inline int steer(struct xdp_md *ctx)
{
	/* The low bits of the flags are the action when the queue has no socket. */
	return bpf_redirect_map(&sluice_xsks, ctx->rx_queue_index, XDP_PASS);
}

SEC("xdp")
int sluice_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;
	struct sluice_config *cfg;
	__u32 zero = 0;
	__u16 flags;
	int whole;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return XDP_PASS;
	if (ip->version != 4 || ip->ihl < 5)
		return XDP_PASS;

	cfg = bpf_map_lookup_elem(&sluice_config, &zero);
	if (!cfg)
		return XDP_PASS;
	flags = cfg->flags;

	if (cfg->node_ip != 0 && ip->daddr == cfg->node_ip) {
		/* The pipeline does not reassemble: fragmented tunnel packets go to
		 * the kernel, which drops them visibly (counted in /proc/net/snmp). */
		whole = (ip->frag_off & bpf_htons(SLUICE_IP_MF | SLUICE_IP_OFFSET)) == 0;
		if (ip->protocol == IPPROTO_UDP && (flags & SLUICE_F_VXLAN) && whole) {
			udp = (void *)ip + ip->ihl * 4;
			if ((void *)(udp + 1) > data_end)
				return XDP_PASS;
			if (udp->dest == cfg->vxlan_port)
				return steer(ctx);
			return XDP_PASS;
		}
		if (ip->protocol == IPPROTO_IPIP && (flags & SLUICE_F_IPIP) && whole)
			return steer(ctx);
		return XDP_PASS;
	}

	if (flags & SLUICE_F_NATIVE) {
		struct sluice_prefix key = { .prefixlen = 32, .addr = ip->daddr };

		if (bpf_map_lookup_elem(&sluice_pods, &key))
			return steer(ctx);
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Apache-2.0";
