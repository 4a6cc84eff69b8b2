/* tls.c — TLS 1.3 for pp's TCP transport over OpenSSL's libssl and two
 * memory BIOs (see tls.h; docs/protocol.md section 6.6 is normative). The
 * caller moves the bytes; this file only turns network bytes into
 * plaintext and back. PSK mode keys TLS from the shared secret (an
 * external PSK, psk_dhe_ke); certificate mode verifies both sides against
 * a CA. Nothing here blocks, locks or touches a socket. */
#include "tls.h"

#include "auth.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* PSK sessions are keyed for TLS_AES_128_GCM_SHA256 (its hash, SHA-256,
 * is the PSK's); CHACHA20-POLY1305 shares that hash and may be chosen too.
 * With certificates AES-256-GCM is offered as well. */
#define SUITES_PSK "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"
#define SUITES_CERT                                                            \
  "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

/* Plaintext handed to SSL_write at once: the write BIO is drained after
 * each, so it never holds more than this much ciphertext. */
#define WRITE_CHUNK 65536u
/* Bytes a TLS 1.3 record adds: 5 header, 1 content type, 16 tag. */
#define RECORD_OVERHEAD 22u
#define RECORD_MAX 16384u

struct pp_tls_ctx {
  SSL_CTX *ssl_ctx;
  int role;
  int certs;                   /* certificate mode */
  uint8_t psk[PP_AUTH_KEY_LEN]; /* PSK mode: the external PSK */
};

struct pp_tls {
  SSL *ssl;    /* owns both BIOs */
  BIO *rbio;   /* network bytes in (we write, SSL reads) */
  BIO *wbio;   /* network bytes out (SSL writes, we read) */
  pp_tls_ctx *ctx;
  int done;    /* handshake completed */
  int dead;    /* failed: nothing more goes in or out */
  char err[256];
};

static const unsigned char psk_identity[] = PP_TLS_PSK_IDENTITY;
static const unsigned char aes128gcm_sha256[2] = {0x13, 0x01};

static void set_err(char *err, size_t n, const char *fmt, const char *a,
                    const char *b) {
  if (err != NULL && n > 0)
    snprintf(err, n, fmt, a, b);
}

/* openssl_reason: the reason of the newest OpenSSL error on this thread's
 * queue ("unknown" without one); the queue is cleared. */
static void openssl_reason(char *out, size_t n) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  if (r == NULL && e)
    ERR_error_string_n(e, out, n);
  else
    snprintf(out, n, "%s", r ? r : "unknown");
  ERR_clear_error();
}

/* psk_session: a session carrying the PSK for the client's use callback and
 * the server's find callback, bound to TLS_AES_128_GCM_SHA256 and TLS 1.3.
 * The caller owns the reference (libssl takes it from the callbacks). NULL
 * on failure. */
static SSL_SESSION *psk_session(SSL *ssl, const pp_tls_ctx *ctx) {
  const SSL_CIPHER *c = SSL_CIPHER_find(ssl, aes128gcm_sha256);
  SSL_SESSION *s = c ? SSL_SESSION_new() : NULL;
  if (s == NULL)
    return NULL;
  if (!SSL_SESSION_set1_master_key(s, ctx->psk, sizeof ctx->psk) ||
      !SSL_SESSION_set_cipher(s, c) ||
      !SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION)) {
    SSL_SESSION_free(s);
    return NULL;
  }
  return s;
}

/* use_psk_cb: the client's PSK offer (SSL_set_psk_use_session_callback).
 * md is set after a HelloRetryRequest: the PSK must use that hash. Returns
 * 1 (with or without a session), 0 to abort the handshake. libssl thread. */
static int use_psk_cb(SSL *ssl, const EVP_MD *md, const unsigned char **id,
                      size_t *idlen, SSL_SESSION **sess) {
  pp_tls *t = SSL_get_app_data(ssl);
  *sess = NULL;
  *id = NULL;
  *idlen = 0;
  if (md != NULL && EVP_MD_get_type(md) != NID_sha256)
    return 1; /* offer none: the handshake then fails */
  SSL_SESSION *s = psk_session(ssl, t->ctx);
  if (s == NULL)
    return 0;
  *sess = s;
  *id = psk_identity;
  *idlen = sizeof psk_identity - 1;
  return 1;
}

/* find_psk_cb: the server's lookup of the client's PSK identity
 * (SSL_set_psk_find_session_callback). An unknown identity gets no session
 * (the handshake then fails: the server has no certificate). Returns 1, or
 * 0 to abort. */
static int find_psk_cb(SSL *ssl, const unsigned char *id, size_t idlen,
                       SSL_SESSION **sess) {
  pp_tls *t = SSL_get_app_data(ssl);
  *sess = NULL;
  if (idlen != sizeof psk_identity - 1 ||
      memcmp(id, psk_identity, idlen) != 0)
    return 1;
  *sess = psk_session(ssl, t->ctx);
  return *sess != NULL;
}

int pp_tls_ctx_new(int role, const pp_tls_opts *o, pp_tls_ctx **out,
                   char *err, size_t errlen) {
  char why[160];
  int rc = PP_EINVAL;
  *out = NULL;
  if (err != NULL && errlen > 0)
    err[0] = '\0';
  int nfiles = (o->cert != NULL) + (o->key != NULL) + (o->ca != NULL);
  if ((role != PP_TLS_CLIENT && role != PP_TLS_SERVER) ||
      (nfiles != 0 && nfiles != 3)) {
    set_err(err, errlen, "%s%s", "TLS certificate mode needs a certificate,"
            " its key and a CA file (all three)", "");
    return PP_EINVAL;
  }
  if (nfiles == 0 && (o->secret == NULL || o->secret_len == 0 ||
                      o->secret_len > PP_SECRET_MAX)) {
    set_err(err, errlen, "%s%s", "TLS needs the shared secret", "");
    return PP_EINVAL;
  }
  pp_tls_ctx *c = calloc(1, sizeof *c);
  if (c == NULL)
    return PP_ENOMEM;
  c->role = role;
  c->certs = nfiles == 3;
  ERR_clear_error();
  c->ssl_ctx = SSL_CTX_new(role == PP_TLS_CLIENT ? TLS_client_method()
                                                 : TLS_server_method());
  rc = PP_ETLS;
  if (c->ssl_ctx == NULL ||
      !SSL_CTX_set_min_proto_version(c->ssl_ctx, TLS1_3_VERSION) ||
      !SSL_CTX_set_max_proto_version(c->ssl_ctx, TLS1_3_VERSION) ||
      !SSL_CTX_set_ciphersuites(c->ssl_ctx, c->certs ? SUITES_CERT : SUITES_PSK)) {
    openssl_reason(why, sizeof why);
    set_err(err, errlen, "cannot set up TLS: %s%s", why, "");
    goto fail;
  }
  /* no resumption: every connection runs a full (EC)DHE handshake */
  SSL_CTX_set_options(c->ssl_ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_num_tickets(c->ssl_ctx, 0);
  SSL_CTX_set_session_cache_mode(c->ssl_ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_mode(c->ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
  if (c->certs) {
    rc = PP_ETLSCONF;
    if (SSL_CTX_use_certificate_chain_file(c->ssl_ctx, o->cert) != 1) {
      openssl_reason(why, sizeof why);
      set_err(err, errlen, "cannot load the TLS certificate %s: %s", o->cert, why);
      goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(c->ssl_ctx, o->key, SSL_FILETYPE_PEM) != 1) {
      openssl_reason(why, sizeof why);
      set_err(err, errlen, "cannot load the TLS key %s: %s", o->key, why);
      goto fail;
    }
    if (SSL_CTX_check_private_key(c->ssl_ctx) != 1) {
      openssl_reason(why, sizeof why);
      set_err(err, errlen, "the TLS key %s does not match the certificate: %s",
              o->key, why);
      goto fail;
    }
    if (SSL_CTX_load_verify_locations(c->ssl_ctx, o->ca, NULL) != 1) {
      openssl_reason(why, sizeof why);
      set_err(err, errlen, "cannot load the TLS CA file %s: %s", o->ca, why);
      goto fail;
    }
    SSL_CTX_set_verify(c->ssl_ctx,
                       SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  } else {
    rc = pp_auth_derive_key(o->secret, o->secret_len, PP_TLS_PSK_LABEL, c->psk);
    if (rc != PP_OK) {
      set_err(err, errlen, "%s%s", "cannot derive the TLS key", "");
      goto fail;
    }
    /* A client verifies any certificate against an empty store: a server
     * that answers with a certificate instead of the PSK is refused. */
    if (role == PP_TLS_CLIENT)
      SSL_CTX_set_verify(c->ssl_ctx, SSL_VERIFY_PEER, NULL);
  }
  *out = c;
  return PP_OK;

fail:
  pp_tls_ctx_free(c);
  return rc;
}

void pp_tls_ctx_free(pp_tls_ctx *ctx) {
  if (ctx == NULL)
    return;
  SSL_CTX_free(ctx->ssl_ctx);
  pp_auth_wipe(ctx->psk, sizeof ctx->psk);
  free(ctx);
}

int pp_tls_ctx_certs(const pp_tls_ctx *ctx) { return ctx->certs; }

int pp_tls_new(pp_tls_ctx *ctx, const char *host, pp_tls **out) {
  *out = NULL;
  pp_tls *t = calloc(1, sizeof *t);
  if (t == NULL)
    return PP_ENOMEM;
  t->ctx = ctx;
  ERR_clear_error();
  t->ssl = SSL_new(ctx->ssl_ctx);
  t->rbio = BIO_new(BIO_s_mem());
  t->wbio = BIO_new(BIO_s_mem());
  if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
    BIO_free(t->rbio);
    BIO_free(t->wbio);
    SSL_free(t->ssl);
    free(t);
    ERR_clear_error();
    return PP_ENOMEM;
  }
  /* an empty read BIO means "wait for more", not end of file */
  BIO_set_mem_eof_return(t->rbio, -1);
  SSL_set_bio(t->ssl, t->rbio, t->wbio); /* the SSL owns both now */
  SSL_set_app_data(t->ssl, t);
  int ok = 1;
  if (ctx->role == PP_TLS_CLIENT) {
    SSL_set_connect_state(t->ssl);
    if (!ctx->certs) {
      SSL_set_psk_use_session_callback(t->ssl, use_psk_cb);
    } else if (host != NULL && host[0] != '\0') {
      /* the node's certificate must name the address or host we dialled */
      unsigned char a[16];
      X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
      if (inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1)
        ok = X509_VERIFY_PARAM_set1_ip_asc(vp, host);
      else
        ok = SSL_set1_host(t->ssl, host);
    }
  } else {
    SSL_set_accept_state(t->ssl);
    if (!ctx->certs)
      SSL_set_psk_find_session_callback(t->ssl, find_psk_cb);
  }
  if (!ok) {
    pp_tls_free(t);
    ERR_clear_error();
    return PP_ETLS;
  }
  *out = t;
  return PP_OK;
}

void pp_tls_free(pp_tls *t) {
  if (t == NULL)
    return;
  SSL_free(t->ssl);
  free(t);
}

/* drain: move what TLS wants sent from the write BIO to the end of out.
 * 0 or PP_ENOMEM. */
static int drain(pp_tls *t, pp_buf *out) {
  size_t pending;
  while ((pending = BIO_ctrl_pending(t->wbio)) > 0) {
    if (pp_buf_reserve(out, pending) != PP_OK)
      return PP_ENOMEM;
    int k = BIO_read(t->wbio, out->data + out->len, (int)pending);
    if (k <= 0)
      break;
    out->len += (size_t)k;
  }
  return PP_OK;
}

/* fail: t failed in an SSL call that returned r: record why (OpenSSL's
 * reason, and the certificate verification result when there is one),
 * mark t dead and return the pp code: PP_EAUTH when PSK mode failed on the
 * key (our binder did not verify at the peer, or the peer's at us),
 * PP_EPEER for a clean close by the peer, else PP_ETLS. */
static int fail(pp_tls *t, int r) {
  int e = SSL_get_error(t->ssl, r);
  unsigned long code = ERR_peek_last_error();
  int reason = ERR_GET_REASON(code);
  long vr = SSL_get_verify_result(t->ssl);
  t->dead = 1;
  if (e == SSL_ERROR_ZERO_RETURN) {
    snprintf(t->err, sizeof t->err, "the peer closed the TLS session");
    ERR_clear_error();
    return PP_EPEER;
  }
  openssl_reason(t->err, sizeof t->err);
  if (vr != X509_V_OK && t->ctx->certs) {
    size_t k = strlen(t->err);
    snprintf(t->err + k, sizeof t->err - k, " (%s)",
             X509_verify_cert_error_string(vr));
  }
  /* A wrong PSK shows as a binder that does not verify at the server,
   * which answers with an illegal_parameter alert (OpenSSL 3; decrypt_error
   * in other stacks). During a PSK handshake we report both as a failed
   * authentication, keeping OpenSSL's reason in t->err. */
  if (!t->ctx->certs &&
      (reason == SSL_R_BINDER_DOES_NOT_VERIFY ||
       (!t->done && (reason == SSL_R_TLSV1_ALERT_DECRYPT_ERROR ||
                     reason == SSL_R_SSLV3_ALERT_ILLEGAL_PARAMETER))))
    return PP_EAUTH;
  return PP_ETLS;
}

int pp_tls_start(pp_tls *t, pp_buf *net_out) {
  if (t->ctx->role != PP_TLS_CLIENT || t->done || t->dead)
    return PP_ESTATE;
  ERR_clear_error();
  int r = SSL_do_handshake(t->ssl);
  if (r != 1) {
    int e = SSL_get_error(t->ssl, r);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
      return fail(t, r);
  }
  return drain(t, net_out);
}

int pp_tls_feed(pp_tls *t, const uint8_t *net, size_t n, pp_buf *plain_in,
                pp_buf *net_out) {
  int rc = PP_OK;
  if (t->dead)
    return PP_ETLS;
  ERR_clear_error();
  if (n > 0 && (n > INT32_MAX || BIO_write(t->rbio, net, (int)n) != (int)n)) {
    t->dead = 1;
    snprintf(t->err, sizeof t->err, "out of memory");
    return PP_ENOMEM;
  }
  if (!t->done) {
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
      t->done = 1;
    } else {
      int e = SSL_get_error(t->ssl, r);
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
        rc = fail(t, r);
    }
  }
  /* decrypt every complete record: what arrives is bounded by n plus at
   * most one partial record left in the read BIO */
  while (rc == PP_OK && t->done) {
    if (pp_buf_reserve(plain_in, RECORD_MAX) != PP_OK) {
      t->dead = 1;
      rc = PP_ENOMEM;
      break;
    }
    size_t got = 0;
    int r = SSL_read_ex(t->ssl, plain_in->data + plain_in->len,
                        plain_in->cap - plain_in->len, &got);
    if (r == 1) {
      plain_in->len += got;
      continue;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e != SSL_ERROR_WANT_READ)
      rc = fail(t, r);
    break;
  }
  /* handshake messages, and after a failure the alert telling the peer */
  if (drain(t, net_out) != PP_OK && rc == PP_OK) {
    t->dead = 1;
    rc = PP_ENOMEM;
  }
  return rc;
}

int pp_tls_done(const pp_tls *t) { return t->done && !t->dead; }

int pp_tls_write(pp_tls *t, const void *p, size_t n, pp_buf *net_out) {
  const uint8_t *b = p;
  if (t->dead || !t->done)
    return PP_ESTATE;
  size_t records = n / RECORD_MAX + 1;
  if (n > SIZE_MAX / 2 ||
      pp_buf_reserve(net_out, n + records * RECORD_OVERHEAD) != PP_OK)
    return PP_ENOMEM;
  ERR_clear_error();
  size_t keep = pp_buf_avail(net_out); /* drain may compact net_out */
  for (size_t off = 0; off < n;) {
    size_t chunk = n - off < WRITE_CHUNK ? n - off : WRITE_CHUNK, w = 0;
    int r = SSL_write_ex(t->ssl, b + off, chunk, &w);
    if (r != 1) {
      net_out->len = net_out->off + keep;
      return fail(t, r);
    }
    off += w;
    if (drain(t, net_out) != PP_OK) {
      t->dead = 1;
      net_out->len = net_out->off + keep;
      return PP_ENOMEM;
    }
  }
  return PP_OK;
}

const char *pp_tls_error(const pp_tls *t) { return t->err; }

void pp_tls_describe(const pp_tls *t, char *out, size_t n) {
  const SSL_CIPHER *c = SSL_get_current_cipher(t->ssl);
  snprintf(out, n, "%s %s, %s", SSL_get_version(t->ssl),
           c ? SSL_CIPHER_get_name(c) : "?",
           t->ctx->certs ? "certificates" : "PSK");
}
