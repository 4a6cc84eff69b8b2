/* netif.h — the IPv4 broadcast addresses of this host's network interfaces,
 * for auto-discovery (the ppserver announces to them, the client sends its
 * queries to them). Read fresh at every call, so an interface that comes up
 * later is used. Any thread. */
#ifndef PP_NETIF_H
#define PP_NETIF_H

#include <netinet/in.h>

/* pp_netif_broadcasts: fill out[0..max) with the broadcast address (network
 * order) of every IPv4 interface that is not loopback and has a netmask
 * shorter than /32. When `only` is neither NULL nor "0.0.0.0", just the
 * interface with that name or that IPv4 address. Duplicates are dropped.
 * Returns the number written (0: none), or a negative libuv error. */
int pp_netif_broadcasts(const char *only, struct in_addr *out, int max);

#endif
