/* spec.c — parsing node specifications ("host", "host:port", "[v6]:port",
 * "*", "*:port", subnets "10.1.2.*[:port]"), the one place that knows their syntax: the engine, the
 * extension (for pp.Server's ppservers argument) and ppserver all call it.
 * Pure functions; any thread. */
#include "spec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* port_ok: s is a port number, digits only (no sign or blank, which strtol
 * would skip), in 1..65535. Returns the port, or 0. */
static long port_ok(const char *s) {
  size_t n = strspn(s, "0123456789");
  if (n == 0 || n > 5 || s[n] != '\0')
    return 0;
  long v = strtol(s, NULL, 10);
  return v <= 65535 ? v : 0;
}

int pp_node_spec_parse(const char *spec, char **host, char **port) {
  const char *h = spec, *p = NULL;
  size_t hl;
  if (spec[0] == '[') {
    const char *end = strchr(spec, ']');
    if (end == NULL)
      return PP_EINVAL;
    h = spec + 1;
    hl = (size_t)(end - h);
    if (end[1] == ':')
      p = end + 2;
    else if (end[1] != '\0')
      return PP_EINVAL;
  } else {
    const char *c = strrchr(spec, ':');
    if (c != NULL && strchr(spec, ':') == c) {
      hl = (size_t)(c - spec);
      p = c + 1;
    } else {
      hl = strlen(spec); /* no port, or a bare IPv6 address */
    }
  }
  if (hl == 0 || hl > 255)
    return PP_EINVAL;
  if (p != NULL && port_ok(p) == 0)
    return PP_EINVAL;
  *host = strndup(h, hl);
  *port = p ? strdup(p) : NULL;
  if (*port == NULL && p == NULL) {
    char buf[16];
    snprintf(buf, sizeof buf, "%d", PP_DEFAULT_PORT);
    *port = strdup(buf);
  }
  if (*host == NULL || *port == NULL) {
    free(*host);
    free(*port);
    return PP_ENOMEM;
  }
  return PP_OK;
}


int pp_spec_subnet(const char *spec, uint32_t *net, int *bits,
                   unsigned *port) {
  uint32_t v = 0;
  int given = 0, stars = 0;
  const char *s = spec;
  for (int i = 0; i < 4; i++) {
    if (i > 0) {
      if (*s != '.')
        return PP_EINVAL;
      s++;
    }
    if (*s == '*') {
      stars++;
      s++;
      v <<= 8;
      continue;
    }
    if (stars > 0)
      return PP_EINVAL; /* only trailing octets may be "*" */
    size_t n = strspn(s, "0123456789");
    if (n == 0 || n > 3)
      return PP_EINVAL;
    long o = strtol(s, NULL, 10);
    if (o > 255)
      return PP_EINVAL;
    v = (v << 8) | (uint32_t)o;
    given++;
    s += n;
  }
  if (given == 0 || stars == 0)
    return PP_EINVAL; /* "*.*.*.*" is "*"; no "*" is a host */
  unsigned p = PP_DEFAULT_PORT;
  if (*s == ':') {
    long pv = port_ok(s + 1);
    if (pv == 0)
      return PP_EINVAL;
    p = (unsigned)pv;
  } else if (*s != '\0') {
    return PP_EINVAL;
  }
  *net = v;
  *bits = 8 * given;
  *port = p;
  return PP_OK;
}

int pp_spec_classify(const char *spec, char **host, char **port,
                     unsigned *disco_port) {
  *host = *port = NULL;
  *disco_port = 0;
  if (spec == NULL || spec[0] == '\0')
    return PP_EINVAL;
  if (spec[0] != '*' && strchr(spec, '*') != NULL) {
    uint32_t net;
    int bits;
    if (pp_spec_subnet(spec, &net, &bits, disco_port) != PP_OK)
      return PP_EINVAL;
    return PP_SPEC_SUBNET;
  }
  if (spec[0] == '*') {
    if (spec[1] == '\0') {
      *disco_port = PP_DEFAULT_PORT;
      return PP_SPEC_DISCOVER;
    }
    if (spec[1] != ':' || spec[2] == '\0')
      return PP_EINVAL;
    long v = port_ok(spec + 2);
    if (v == 0)
      return PP_EINVAL;
    *disco_port = (unsigned)v;
    return PP_SPEC_DISCOVER;
  }
  int rc = pp_node_spec_parse(spec, host, port);
  return rc == PP_OK ? PP_SPEC_NODE : rc;
}
