/* netif.c — IPv4 broadcast addresses of the local interfaces (see netif.h). */
#include "netif.h"

#include <string.h>
#include <uv.h>

int pp_netif_broadcasts(const char *only, struct in_addr *out, int max) {
  uv_interface_address_t *ifs;
  int nifs, n = 0;
  int rc = uv_interface_addresses(&ifs, &nifs);
  if (rc != 0)
    return rc;
  if (only != NULL && strcmp(only, "0.0.0.0") == 0)
    only = NULL;
  for (int i = 0; i < nifs && n < max; i++) {
    const uv_interface_address_t *a = &ifs[i];
    if (a->address.address4.sin_family != AF_INET || a->is_internal)
      continue;
    uint32_t addr = a->address.address4.sin_addr.s_addr;
    uint32_t mask = a->netmask.netmask4.sin_addr.s_addr;
    if (only != NULL) {
      char text[INET_ADDRSTRLEN] = "";
      uv_ip4_name(&a->address.address4, text, sizeof text);
      if (strcmp(only, a->name) != 0 && strcmp(only, text) != 0)
        continue;
    }
    if (mask == 0xffffffffu)
      continue; /* point-to-point: no broadcast address */
    uint32_t b = addr | ~mask;
    int dup = 0;
    for (int k = 0; k < n; k++)
      dup |= out[k].s_addr == b;
    if (!dup)
      out[n++].s_addr = b;
  }
  uv_free_interface_addresses(ifs, nifs);
  return n;
}
