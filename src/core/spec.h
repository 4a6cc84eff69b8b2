/* spec.h — the syntax of node specifications (pp.Server's ppservers
 * entries): "host" (port PP_DEFAULT_PORT), "host:port", "[v6addr]:port",
 * and for auto-discovery "*" (port PP_DEFAULT_PORT) or "*:port". */
#ifndef PP_SPEC_H
#define PP_SPEC_H

#include "pp_common.h"

/* pp_node_spec_parse: "host", "host:port" or "[v6]:port" -> malloc'd host
 * and port strings (the caller frees both). Returns 0, PP_EINVAL (bad
 * syntax, empty or over-long host, port outside 1..65535) or PP_ENOMEM;
 * on error nothing is allocated. Any thread. */
int pp_node_spec_parse(const char *spec, char **host, char **port);

enum { PP_SPEC_NODE = 1, PP_SPEC_DISCOVER = 2 };

/* pp_spec_classify: one ppservers entry. Returns PP_SPEC_NODE with *host
 * and *port malloc'd (the caller frees them), PP_SPEC_DISCOVER with
 * *disco_port set ("*" or "*:port"), or a negative code (PP_EINVAL,
 * PP_ENOMEM) with nothing allocated. Any thread. */
int pp_spec_classify(const char *spec, char **host, char **port,
                     unsigned *disco_port);

#endif
