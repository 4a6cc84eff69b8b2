/* test_tls.c — the TLS layer (src/core/tls.[ch]) with two in-memory
 * endpoints: PSK handshakes and records both ways (small and large), a
 * wrong secret (authentication failure on both sides), a bit flipped in a
 * record (the receiver fails and stays dead), certificate mode with the
 * test CA (tests/certs), a wrong CA, a host name that does not match, a
 * PSK client against a certificate server, and bad configurations. The
 * test moves the bytes; run from the repository root (make test-c). */
#include "check.h"

#include "buf.h"
#include "pp_common.h"
#include "tls.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t SECRET[] = "correct horse battery staple";
static const uint8_t OTHER[] = "correct horse battery stapler";

#define CERTS "tests/certs/"

typedef struct side {
  pp_tls_ctx *ctx;
  pp_tls *t;
  pp_buf net_out; /* bytes this side sends */
  pp_buf plain;   /* plaintext this side received */
  int rc;         /* last pp_tls_feed result */
} side;

/* mk: a side for role keyed with o (host: the client's expected name). */
static int mk(side *s, int role, const pp_tls_opts *o, const char *host) {
  char err[256];
  memset(s, 0, sizeof *s);
  pp_buf_init(&s->net_out);
  pp_buf_init(&s->plain);
  int rc = pp_tls_ctx_new(role, o, &s->ctx, err, sizeof err);
  if (!CHECKF(rc == PP_OK, "ctx: %s (%d)", err, rc))
    return rc;
  rc = pp_tls_new(s->ctx, host, &s->t);
  CHECK(rc == PP_OK);
  return rc;
}

static void drop(side *s) {
  pp_tls_free(s->t);
  pp_tls_ctx_free(s->ctx);
  pp_buf_free(&s->net_out);
  pp_buf_free(&s->plain);
}

/* pass: deliver everything from's net_out to `to`. Returns to's result. */
static int pass(side *from, side *to) {
  size_t n = pp_buf_avail(&from->net_out);
  to->rc = pp_tls_feed(to->t, from->net_out.data + from->net_out.off, n,
                       &to->plain, &to->net_out);
  pp_buf_consume(&from->net_out, n);
  return to->rc;
}

/* handshake: run the exchange until both are done or one fails (at most 8
 * rounds). Returns 1 if both completed. */
static int handshake(side *c, side *s) {
  CHECK(pp_tls_start(c->t, &c->net_out) == PP_OK);
  for (int i = 0; i < 8; i++) {
    if (pass(c, s) < 0 && pp_buf_avail(&s->net_out) == 0)
      return 0;
    if (pass(s, c) < 0)
      return 0;
    if (s->rc < 0)
      return 0;
    if (pp_tls_done(c->t) && pp_tls_done(s->t) &&
        pp_buf_avail(&c->net_out) == 0 && pp_buf_avail(&s->net_out) == 0)
      return 1;
  }
  return pp_tls_done(c->t) && pp_tls_done(s->t);
}

static pp_tls_opts psk(const uint8_t *sec, size_t n) {
  pp_tls_opts o = {sec, n, NULL, NULL, NULL};
  return o;
}

static pp_tls_opts certs(const char *cert, const char *key, const char *ca) {
  pp_tls_opts o = {SECRET, sizeof SECRET - 1, cert, key, ca};
  return o;
}

static void test_psk_roundtrip(void) {
  side c, s;
  pp_tls_opts o = psk(SECRET, sizeof SECRET - 1);
  if (mk(&c, PP_TLS_CLIENT, &o, "127.0.0.1") || mk(&s, PP_TLS_SERVER, &o, NULL))
    goto out;
  CHECK(pp_tls_write(c.t, "x", 1, &c.net_out) == PP_ESTATE); /* not yet */
  if (!CHECK(handshake(&c, &s)))
    goto out;
  char d[128];
  pp_tls_describe(c.t, d, sizeof d);
  CHECKF(strstr(d, "TLSv1.3") && strstr(d, "PSK"), "%s", d);
  /* small frames both ways; the plaintext never shows on the wire */
  const char msg[] = "def secret_function(): return 42";
  CHECK(pp_tls_write(c.t, msg, sizeof msg, &c.net_out) == PP_OK);
  CHECK(memmem(c.net_out.data + c.net_out.off, pp_buf_avail(&c.net_out), "secret_function", 15) == NULL);
  CHECK(pass(&c, &s) == PP_OK);
  CHECK(pp_buf_avail(&s.plain) == sizeof msg &&
        memcmp(s.plain.data + s.plain.off, msg, sizeof msg) == 0);
  CHECK(pp_tls_write(s.t, "result", 6, &s.net_out) == PP_OK);
  CHECK(pass(&s, &c) == PP_OK);
  CHECK(pp_buf_avail(&c.plain) == 6 && memcmp(c.plain.data + c.plain.off, "result", 6) == 0);
  /* 3 MiB + 7 in one write, delivered in odd-sized pieces */
  size_t big = (3u << 20) + 7;
  uint8_t *b = malloc(big);
  if (!CHECK(b != NULL))
    goto out;
  for (size_t i = 0; i < big; i++)
    b[i] = (uint8_t)(i * 131 + 7);
  pp_buf_consume(&s.plain, pp_buf_avail(&s.plain));
  CHECK(pp_tls_write(c.t, b, big, &c.net_out) == PP_OK);
  CHECK(pp_buf_avail(&c.net_out) > big && pp_buf_avail(&c.net_out) < big + big / 100);
  while (pp_buf_avail(&c.net_out) > 0) {
    size_t k = pp_buf_avail(&c.net_out) < 10007 ? pp_buf_avail(&c.net_out) : 10007;
    if (!CHECK(pp_tls_feed(s.t, c.net_out.data + c.net_out.off, k, &s.plain,
                           &s.net_out) == PP_OK))
      break;
    pp_buf_consume(&c.net_out, k);
  }
  CHECK(pp_buf_avail(&s.plain) == big &&
        memcmp(s.plain.data + s.plain.off, b, big) == 0);
  free(b);
out:
  drop(&c);
  drop(&s);
}

static void test_wrong_secret(void) {
  side c, s;
  pp_tls_opts oc = psk(SECRET, sizeof SECRET - 1), os = psk(OTHER, sizeof OTHER - 1);
  if (mk(&c, PP_TLS_CLIENT, &oc, NULL) || mk(&s, PP_TLS_SERVER, &os, NULL))
    goto out;
  CHECK(!handshake(&c, &s));
  CHECKF(s.rc == PP_EAUTH, "server %d %s", s.rc, pp_tls_error(s.t));
  /* the server's alert tells the client */
  CHECKF(c.rc == PP_EAUTH, "client %d %s", c.rc, pp_tls_error(c.t));
  CHECK(!pp_tls_done(c.t) && !pp_tls_done(s.t));
  CHECK(pp_buf_avail(&c.plain) == 0 && pp_buf_avail(&s.plain) == 0);
  CHECK(pp_tls_write(c.t, "job", 3, &c.net_out) == PP_ESTATE);
out:
  drop(&c);
  drop(&s);
}

static void test_flipped_bit(void) {
  side c, s;
  pp_tls_opts o = psk(SECRET, sizeof SECRET - 1);
  if (mk(&c, PP_TLS_CLIENT, &o, NULL) || mk(&s, PP_TLS_SERVER, &o, NULL) ||
      !CHECK(handshake(&c, &s)))
    goto out;
  CHECK(pp_tls_write(c.t, "JOB arguments", 13, &c.net_out) == PP_OK);
  c.net_out.data[c.net_out.off + 10] ^= 0x04; /* inside the ciphertext */
  CHECK(pass(&c, &s) == PP_ETLS);
  CHECK(pp_buf_avail(&s.plain) == 0); /* nothing of the altered record */
  CHECKF(strstr(pp_tls_error(s.t), "bad record mac") != NULL, "%s", pp_tls_error(s.t));
  CHECK(!pp_tls_done(s.t));
  /* dead from now on: an intact record is refused too */
  pp_buf_consume(&s.net_out, pp_buf_avail(&s.net_out));
  CHECK(pp_tls_write(c.t, "more", 4, &c.net_out) == PP_OK);
  CHECK(pass(&c, &s) == PP_ETLS);
  CHECK(pp_tls_write(s.t, "x", 1, &s.net_out) == PP_ESTATE);
  /* a record header byte flipped (its length) is as fatal */
  drop(&c);
  drop(&s);
  if (mk(&c, PP_TLS_CLIENT, &o, NULL) || mk(&s, PP_TLS_SERVER, &o, NULL) ||
      !CHECK(handshake(&c, &s)))
    goto out;
  CHECK(pp_tls_write(c.t, "JOB arguments", 13, &c.net_out) == PP_OK);
  c.net_out.data[c.net_out.off + 0] ^= 0x01; /* content type 0x17 -> 0x16 */
  CHECK(pass(&c, &s) == PP_ETLS);
out:
  drop(&c);
  drop(&s);
}

static void test_certificates(void) {
  side c, s;
  pp_tls_opts on = certs(CERTS "node.pem", CERTS "node.key", CERTS "ca.pem");
  pp_tls_opts oc = certs(CERTS "client.pem", CERTS "client.key", CERTS "ca.pem");
  if (mk(&c, PP_TLS_CLIENT, &oc, "127.0.0.1") || mk(&s, PP_TLS_SERVER, &on, NULL))
    goto out;
  CHECK(pp_tls_ctx_certs(c.ctx) == 1);
  if (!CHECK(handshake(&c, &s)))
    goto out;
  char d[128];
  pp_tls_describe(s.t, d, sizeof d);
  CHECKF(strstr(d, "certificates") != NULL, "%s", d);
  CHECK(pp_tls_write(s.t, "hello", 5, &s.net_out) == PP_OK);
  CHECK(pass(&s, &c) == PP_OK && pp_buf_avail(&c.plain) == 5);
  drop(&c);
  drop(&s);

  /* a client certificate from another CA: the node refuses it */
  pp_tls_opts ow = certs(CERTS "other-client.pem", CERTS "other-client.key",
                         CERTS "ca.pem");
  if (mk(&c, PP_TLS_CLIENT, &ow, "127.0.0.1") || mk(&s, PP_TLS_SERVER, &on, NULL))
    goto out;
  CHECK(!handshake(&c, &s));
  CHECKF(s.rc == PP_ETLS && strstr(pp_tls_error(s.t), "certificate"),
         "%d %s", s.rc, pp_tls_error(s.t));
  CHECK(c.rc == PP_ETLS || !pp_tls_done(c.t));
  drop(&c);
  drop(&s);

  /* a node certificate from another CA: the client refuses it */
  pp_tls_opts onw = certs(CERTS "other-node.pem", CERTS "other-node.key",
                          CERTS "ca.pem");
  if (mk(&c, PP_TLS_CLIENT, &oc, "127.0.0.1") || mk(&s, PP_TLS_SERVER, &onw, NULL))
    goto out;
  CHECK(!handshake(&c, &s));
  CHECKF(c.rc == PP_ETLS && strstr(pp_tls_error(c.t), "certificate verify failed"),
         "%d %s", c.rc, pp_tls_error(c.t));
  drop(&c);
  drop(&s);

  /* the node's certificate does not name the host dialled */
  if (mk(&c, PP_TLS_CLIENT, &oc, "10.1.2.3") || mk(&s, PP_TLS_SERVER, &on, NULL))
    goto out;
  CHECK(!handshake(&c, &s));
  CHECKF(c.rc == PP_ETLS && strstr(pp_tls_error(c.t), "mismatch"), "%d %s",
         c.rc, pp_tls_error(c.t));
  drop(&c);
  drop(&s);

  /* a PSK client against a certificate node: no PSK accepted, and the
   * node's certificate does not verify against the client's empty store */
  pp_tls_opts op = psk(SECRET, sizeof SECRET - 1);
  if (mk(&c, PP_TLS_CLIENT, &op, NULL) || mk(&s, PP_TLS_SERVER, &on, NULL))
    goto out;
  CHECK(!handshake(&c, &s));
  CHECK(!pp_tls_done(c.t));
out:
  drop(&c);
  drop(&s);
}

static void test_bad_config(void) {
  pp_tls_ctx *ctx = NULL;
  char err[256];
  pp_tls_opts none = {NULL, 0, NULL, NULL, NULL};
  CHECK(pp_tls_ctx_new(PP_TLS_CLIENT, &none, &ctx, err, sizeof err) == PP_EINVAL);
  pp_tls_opts two = {SECRET, 3, CERTS "node.pem", CERTS "node.key", NULL};
  CHECK(pp_tls_ctx_new(PP_TLS_SERVER, &two, &ctx, err, sizeof err) == PP_EINVAL);
  CHECK(strstr(err, "all three") != NULL);
  pp_tls_opts missing = certs(CERTS "nope.pem", CERTS "node.key", CERTS "ca.pem");
  CHECK(pp_tls_ctx_new(PP_TLS_SERVER, &missing, &ctx, err, sizeof err) == PP_ETLSCONF);
  CHECKF(strstr(err, "nope.pem") != NULL, "%s", err);
  pp_tls_opts mism = certs(CERTS "node.pem", CERTS "client.key", CERTS "ca.pem");
  CHECK(pp_tls_ctx_new(PP_TLS_SERVER, &mism, &ctx, err, sizeof err) == PP_ETLSCONF);
  CHECKF(strstr(err, "mismatch") != NULL, "%s", err);
  CHECK(ctx == NULL);
  CHECK(pp_tls_ctx_new(3, &none, &ctx, err, sizeof err) == PP_EINVAL);
}

/* garbage where a ClientHello should be: the server fails cleanly */
static void test_garbage(void) {
  side s;
  pp_tls_opts o = psk(SECRET, sizeof SECRET - 1);
  if (mk(&s, PP_TLS_SERVER, &o, NULL) == PP_OK) {
    static const uint8_t junk[] = {0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5};
    CHECK(pp_tls_feed(s.t, junk, sizeof junk, &s.plain, &s.net_out) == PP_ETLS);
    CHECK(pp_buf_avail(&s.plain) == 0);
  }
  drop(&s);
}

int main(void) {
  test_psk_roundtrip();
  test_wrong_secret();
  test_flipped_bit();
  test_certificates();
  test_bad_config();
  test_garbage();
  return check_summary();
}
