/* spec.h — the syntax of node specifications (pp.Server's ppservers
 * entries): "host" (port PP_DEFAULT_PORT), "host:port", "[v6addr]:port",
 * and for auto-discovery "*" (port PP_DEFAULT_PORT) or "*:port". */
#ifndef PP_SPEC_H
#define PP_SPEC_H

#include "pp_common.h"

#include <stdint.h>

/* pp_node_spec_parse: "host", "host:port" or "[v6]:port" -> malloc'd host
 * and port strings (the caller frees both). Returns 0, PP_EINVAL (bad
 * syntax, empty or over-long host, port outside 1..65535) or PP_ENOMEM;
 * on error nothing is allocated. Any thread. */
int pp_node_spec_parse(const char *spec, char **host, char **port);

enum { PP_SPEC_NODE = 1, PP_SPEC_DISCOVER = 2, PP_SPEC_SUBNET = 3 };

/* pp_spec_classify: one ppservers entry. Returns PP_SPEC_NODE with *host
 * and *port malloc'd (the caller frees them), PP_SPEC_DISCOVER with
 * *disco_port set ("*" or "*:port"), PP_SPEC_SUBNET with *disco_port set
 * for pp 1.x's subnet entries ("10.1.2.*", "10.1.*.*", "10.*.*.*", with an
 * optional ":port"; pp_spec_subnet gives the subnet), or a negative code
 * (PP_EINVAL, PP_ENOMEM) with nothing allocated. Any thread. */
int pp_spec_classify(const char *spec, char **host, char **port,
                     unsigned *disco_port);

/* pp_spec_subnet: a subnet entry ("a.b.c.*[:port]", "a.b.*.*", "a.*.*.*":
 * the leading octets given, the rest "*") -> *net (host byte order, the
 * "*" octets 0), *bits (24, 16 or 8) and *port (PP_DEFAULT_PORT when
 * none). Returns 0 or PP_EINVAL. Pure; any thread. */
int pp_spec_subnet(const char *spec, uint32_t *net, int *bits,
                   unsigned *port);

#endif
