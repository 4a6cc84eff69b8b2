/* netif.h — what auto-discovery needs to know about this host's IPv4
 * interfaces: their broadcast addresses (the ppserver announces to them, the
 * client sends its queries to them) and whether an address is this host's
 * own (so that a datagram meant for the programs of this host is broadcast
 * on that interface rather than sent to one socket). Interfaces are read
 * fresh at every call, so one that comes up later is used. Any thread. */
#ifndef PP_NETIF_H
#define PP_NETIF_H

#include <netinet/in.h>

/* 127.255.255.255, host order: the loopback broadcast. Linux routes it as
 * a broadcast on lo (table local), so every socket bound to 0.0.0.0:P or to
 * this address receives a datagram sent there, whereas a datagram to
 * 127.0.0.1:P reaches only one of the sockets sharing P. */
#define PP_NETIF_LOOPBACK_BCAST 0x7fffffffu

/* pp_netif_broadcasts: fill out[0..max) with the broadcast address (network
 * order, addr | ~netmask) of every IPv4 interface that is up, is not
 * loopback and has a netmask shorter than /32; duplicates dropped. Returns
 * the number written (0: none), or a negative libuv error. */
int pp_netif_broadcasts(struct in_addr *out, int max);

/* pp_netif_local: whether a (network order) is an address of this host:
 * any 127/8 address, or the address of an IPv4 interface that is up.
 * Returns 1 and, if bcast is not NULL, the broadcast address of that
 * interface in *bcast (127.255.255.255 for loopback; INADDR_NONE when the
 * interface has none, a /32 or point-to-point one), 0 when a is not
 * local, or a negative libuv error. */
int pp_netif_local(struct in_addr a, struct in_addr *bcast);

#endif
