/* test_spec.c — the one parser of node specifications (spec.c): hosts,
 * ports, bracketed and bare IPv6 addresses, discovery entries, and every
 * malformed form rejected with nothing allocated (a port is digits only:
 * no sign or blank, which strtol alone would take). */
#include "check.h"

#include "spec.h"

#include <stdlib.h>
#include <string.h>

/* node: classify spec, expecting a node entry with this host and port. */
static void node(const char *spec, const char *host, const char *port) {
  char *h, *p;
  unsigned d;
  int rc = pp_spec_classify(spec, &h, &p, &d);
  if (!CHECKF(rc == PP_SPEC_NODE, "%s: rc %d", spec, rc))
    return;
  CHECKF(strcmp(h, host) == 0 && strcmp(p, port) == 0, "%s: %s %s", spec, h,
         p);
  free(h);
  free(p);
}

static void discover(const char *spec, unsigned port) {
  char *h, *p;
  unsigned d;
  int rc = pp_spec_classify(spec, &h, &p, &d);
  CHECKF(rc == PP_SPEC_DISCOVER && d == port && h == NULL && p == NULL,
         "%s: rc %d port %u", spec, rc, d);
}

/* subnet: classify spec, expecting pp 1.x's subnet entry with this
 * network (host order), prefix and port. */
static void subnet(const char *spec, uint32_t net, int bits, unsigned port) {
  char *h, *p;
  unsigned d;
  uint32_t n = 1;
  int b = 0;
  unsigned sp = 0;
  int rc = pp_spec_classify(spec, &h, &p, &d);
  CHECKF(rc == PP_SPEC_SUBNET && d == port && h == NULL && p == NULL,
         "%s: rc %d port %u", spec, rc, d);
  CHECKF(pp_spec_subnet(spec, &n, &b, &sp) == PP_OK && n == net &&
             b == bits && sp == port,
         "%s: %08x/%d:%u", spec, n, b, sp);
}

static void bad(const char *spec) {
  char *h = (char *)1, *p = (char *)1;
  unsigned d = 1;
  int rc = pp_spec_classify(spec, &h, &p, &d);
  CHECKF(rc == PP_EINVAL && h == NULL && p == NULL, "%s: rc %d", spec, rc);
}

int main(void) {
  subnet("192.168.1.*", 0xc0a80100u, 24, 60000);
  subnet("10.2.*.*:7000", 0x0a020000u, 16, 7000);
  subnet("127.*.*.*", 0x7f000000u, 8, 60000);
  bad("192.168.*.1");
  bad("192.168.1.*:");
  bad("192.168.1.*:0");
  bad("192.168.1.*x");
  bad("192.168.256.*");
  bad("1.2.3.4.*");
  bad("1.2.*");
  bad("**");
  node("host", "host", "60000");
  node("host:7000", "host", "7000");
  node("10.0.0.1:1", "10.0.0.1", "1");
  node("h:65535", "h", "65535");
  node("::1", "::1", "60000");
  node("[::1]", "::1", "60000");
  node("[fe80::1]:7000", "fe80::1", "7000");
  discover("*", PP_DEFAULT_PORT);
  discover("*:7001", 7001);
  const char *bads[] = {"",      "h:",     "h:0",   "h:65536", "h:x",
                        "h: 5",  "h:+5",   "h:-5",  "h:5 ",    ":5",
                        "[::1",  "[::1]x", "[]:5",  "*:",      "*:0",
                        "*: 5",  "*:+5",   "*:x",   "*x",      "h:123456"};
  for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++)
    bad(bads[i]);
  char longhost[300];
  memset(longhost, 'a', sizeof longhost - 1);
  longhost[sizeof longhost - 1] = '\0';
  bad(longhost);
  return check_summary();
}
