/* netif.c — IPv4 broadcast addresses and local addresses of this host's
 * interfaces, read from uv_interface_addresses (see netif.h). */
#include "netif.h"

#include <string.h>
#include <uv.h>

/* bcast_of: the broadcast address of interface address a, network order;
 * INADDR_NONE for a /32 (point-to-point: no broadcast). */
static uint32_t bcast_of(const uv_interface_address_t *a) {
  uint32_t addr = a->address.address4.sin_addr.s_addr;
  uint32_t mask = a->netmask.netmask4.sin_addr.s_addr;
  return mask == 0xffffffffu ? htonl(INADDR_NONE) : (addr | ~mask);
}

int pp_netif_broadcasts(struct in_addr *out, int max) {
  uv_interface_address_t *ifs;
  int nifs, n = 0;
  int rc = uv_interface_addresses(&ifs, &nifs);
  if (rc != 0)
    return rc;
  for (int i = 0; i < nifs && n < max; i++) {
    const uv_interface_address_t *a = &ifs[i];
    if (a->address.address4.sin_family != AF_INET || a->is_internal)
      continue;
    uint32_t b = bcast_of(a);
    if (b == htonl(INADDR_NONE))
      continue;
    int dup = 0;
    for (int k = 0; k < n; k++)
      dup |= out[k].s_addr == b;
    if (!dup)
      out[n++].s_addr = b;
  }
  uv_free_interface_addresses(ifs, nifs);
  return n;
}

int pp_netif_local(struct in_addr a, struct in_addr *bcast) {
  uv_interface_address_t *ifs;
  int nifs, found = 0;
  if ((ntohl(a.s_addr) >> 24) == 127) { /* all of 127/8 is this host's */
    if (bcast != NULL)
      bcast->s_addr = htonl(PP_NETIF_LOOPBACK_BCAST);
    return 1;
  }
  int rc = uv_interface_addresses(&ifs, &nifs);
  if (rc != 0)
    return rc;
  for (int i = 0; i < nifs && !found; i++) {
    const uv_interface_address_t *ia = &ifs[i];
    if (ia->address.address4.sin_family != AF_INET ||
        ia->address.address4.sin_addr.s_addr != a.s_addr)
      continue;
    found = 1;
    if (bcast != NULL)
      bcast->s_addr = bcast_of(ia);
  }
  uv_free_interface_addresses(ifs, nifs);
  return found;
}
