/* fuzz_tls.c — fuzz target: the TLS layer's record intake (tls.c,
 * pp_tls_feed) of either role, in PSK mode (right or wrong secret) or in
 * certificate mode, fed what a hostile or broken peer could send, during
 * the handshake and after it.
 *
 * The side under test (a pp_tls) talks to a peer written here directly on
 * libssl from docs/protocol.md 6.6 (the PSK from pp_auth_derive_key with
 * its label, its identity, TLS 1.3 only, the same suites), so the peer can
 * also do what pp never does itself: key updates, close_notify, session
 * tickets. The input is a script of operations: deliver the peer's pending
 * bytes verbatim, altered in one byte, cut short, or dropped; deliver
 * arbitrary bytes or a record header of any type and length; replay an
 * earlier delivery; let the peer read what the side under test wrote;
 * have the peer write application data, update its keys or close; have
 * the side under test write. An input may first run a clean handshake, so
 * the post-handshake record path is reached at once. Whatever the script
 * does, the side under test must never:
 *   - complete a handshake with a peer that holds another secret;
 *   - deliver plaintext other than a prefix of what the peer wrote (and
 *     none at all before its handshake is done);
 *   - go on after an error: every later feed fails and delivers nothing,
 *     pp_tls_done is 0 and pp_tls_write refuses.
 * Key shares and nonces come from the CSPRNG, so runs of one input differ
 * in bytes, not in the paths they can take.
 *
 * Input: [role][mode][flags][op, args...]... */
#include "fuzz.h"

#include "auth.h"
#include "buf.h"
#include "pp_common.h"
#include "tls.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_WRITTEN (64u << 10) /* plaintext the peer writes, remembered */
#define MAX_OPS 256

static const uint8_t secret_ok[] = "fuzz-tls-secret-0123456789abcdef";
static const uint8_t secret_bad[] = "fuzz-tls-secret-0123456789abcdeg";
static const unsigned char identity[] = PP_TLS_PSK_IDENTITY;

/* Made once (LLVMFuzzerInitialize): both roles' contexts of the side under
 * test, per mode, and the certificate files of certificate mode. */
static pp_tls_ctx *t_ctx[3][2]; /* [mode][role - 1] */
static SSL_CTX *peer_ctx[3][2]; /* [mode][the peer's role - 1] */
static uint8_t psk_ok[PP_AUTH_KEY_LEN], psk_bad[PP_AUTH_KEY_LEN];
static char dir[64], cert_path[96], key_path[96];

enum { MODE_PSK = 0, MODE_PSK_WRONG = 1, MODE_CERT = 2 };

typedef struct world {
  int mode;
  pp_tls *t;        /* the side under test */
  int t_dead;       /* it returned an error */
  SSL *peer;        /* the peer, over two memory BIOs */
  BIO *p_in, *p_out;
  int peer_dead;
  pp_buf plain;     /* plaintext delivered by t */
  pp_buf to_t;      /* the peer's output not yet delivered to t */
  pp_buf to_peer;   /* t's output not yet read by the peer */
  pp_buf last;      /* the last bytes delivered to t (for a replay) */
  uint8_t *written; /* plaintext the peer wrote, in order */
  size_t nwritten;
} world;

/* ---- the peer: libssl configured as protocol.md 6.6 says ---------------- */

/* peer_session: a session carrying the PSK (the one of w's mode) for
 * TLS_AES_128_GCM_SHA256, TLS 1.3. The caller owns it; NULL on failure. */
static SSL_SESSION *peer_session(SSL *ssl) {
  static const unsigned char suite[2] = {0x13, 0x01};
  const uint8_t *psk = SSL_get_app_data(ssl);
  const SSL_CIPHER *c = SSL_CIPHER_find(ssl, suite);
  SSL_SESSION *s = c ? SSL_SESSION_new() : NULL;
  if (s == NULL)
    return NULL;
  if (!SSL_SESSION_set1_master_key(s, psk, PP_AUTH_KEY_LEN) ||
      !SSL_SESSION_set_cipher(s, c) ||
      !SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION)) {
    SSL_SESSION_free(s);
    return NULL;
  }
  return s;
}

/* peer_use_cb: the peer as client offers the PSK. */
static int peer_use_cb(SSL *ssl, const EVP_MD *md, const unsigned char **id,
                       size_t *idlen, SSL_SESSION **sess) {
  *sess = NULL;
  *id = NULL;
  *idlen = 0;
  if (md != NULL && EVP_MD_get_type(md) != NID_sha256)
    return 1;
  *sess = peer_session(ssl);
  *id = identity;
  *idlen = sizeof identity - 1;
  return *sess != NULL;
}

/* peer_find_cb: the peer as server accepts the PSK identity. */
static int peer_find_cb(SSL *ssl, const unsigned char *id, size_t idlen,
                        SSL_SESSION **sess) {
  *sess = NULL;
  if (idlen != sizeof identity - 1 || memcmp(id, identity, idlen) != 0)
    return 1;
  *sess = peer_session(ssl);
  return *sess != NULL;
}

/* make_cert: one EC key and a self-signed certificate for 127.0.0.1 (its
 * own CA), written as PEM into a private temporary directory. 0 or -1. */
static int make_cert(void) {
  EVP_PKEY *k = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  int ok = k != NULL && x != NULL;
  if (ok) {
    X509_NAME *nm = X509_get_subject_name(x);
    X509V3_CTX v3;
    ok = X509_set_version(x, 2) &&
         ASN1_INTEGER_set(X509_get_serialNumber(x), 1) &&
         X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
         X509_gmtime_adj(X509_getm_notAfter(x), 3650L * 86400) &&
         X509_set_pubkey(x, k) &&
         X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC,
                                    (const unsigned char *)"pp fuzz", -1, -1, 0) &&
         X509_set_issuer_name(x, nm);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    const char *ext[][2] = {{"basicConstraints", "critical,CA:TRUE"},
                            {"subjectAltName", "IP:127.0.0.1"}};
    for (size_t i = 0; ok && i < 2; i++) {
      X509_EXTENSION *e = X509V3_EXT_conf(NULL, &v3, ext[i][0], ext[i][1]);
      ok = e != NULL && X509_add_ext(x, e, -1);
      X509_EXTENSION_free(e);
    }
    ok = ok && X509_sign(x, k, EVP_sha256()) > 0;
  }
  snprintf(dir, sizeof dir, "/tmp/pp-fuzz-tls-XXXXXX");
  ok = ok && mkdtemp(dir) != NULL;
  if (ok) {
    snprintf(cert_path, sizeof cert_path, "%s/cert.pem", dir);
    snprintf(key_path, sizeof key_path, "%s/key.pem", dir);
    FILE *fc = fopen(cert_path, "w"), *fk = fopen(key_path, "w");
    ok = fc != NULL && fk != NULL && PEM_write_X509(fc, x) &&
         PEM_write_PrivateKey(fk, k, NULL, NULL, 0, NULL, NULL);
    if (fc != NULL)
      ok = fclose(fc) == 0 && ok;
    if (fk != NULL)
      ok = fclose(fk) == 0 && ok;
  }
  X509_free(x);
  EVP_PKEY_free(k);
  return ok ? 0 : -1;
}

/* remove_cert: the temporary files go when the process ends. */
static void remove_cert(void) {
  unlink(cert_path);
  unlink(key_path);
  rmdir(dir);
}

/* make_peer_ctx: the peer's context for role in mode. NULL on failure. */
static SSL_CTX *make_peer_ctx(int role, int mode) {
  SSL_CTX *c = SSL_CTX_new(role == PP_TLS_CLIENT ? TLS_client_method()
                                                 : TLS_server_method());
  if (c == NULL || !SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION) ||
      !SSL_CTX_set_ciphersuites(c, "TLS_AES_128_GCM_SHA256:"
                                   "TLS_CHACHA20_POLY1305_SHA256"))
    goto fail;
  if (mode == MODE_CERT) {
    if (SSL_CTX_use_certificate_chain_file(c, cert_path) != 1 ||
        SSL_CTX_use_PrivateKey_file(c, key_path, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_load_verify_locations(c, cert_path, NULL) != 1)
      goto fail;
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                       NULL);
  }
  return c;
fail:
  SSL_CTX_free(c);
  return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  if (make_cert() != 0)
    __builtin_trap();
  atexit(remove_cert);
  if (pp_auth_derive_key(secret_ok, sizeof secret_ok - 1, PP_TLS_PSK_LABEL,
                         psk_ok) != PP_OK ||
      pp_auth_derive_key(secret_bad, sizeof secret_bad - 1, PP_TLS_PSK_LABEL,
                         psk_bad) != PP_OK)
    __builtin_trap();
  for (int mode = 0; mode < 3; mode++)
    for (int r = 1; r <= 2; r++) {
      pp_tls_opts o = {secret_ok, sizeof secret_ok - 1, NULL, NULL, NULL};
      if (mode == MODE_CERT) {
        o.cert = cert_path;
        o.key = key_path;
        o.ca = cert_path;
      }
      char err[256];
      if (pp_tls_ctx_new(r, &o, &t_ctx[mode][r - 1], err, sizeof err) != PP_OK ||
          (peer_ctx[mode][r - 1] = make_peer_ctx(r, mode)) == NULL)
        __builtin_trap();
    }
  return 0;
}

/* ---- moving bytes --------------------------------------------------------- */

/* peer_drain: what the peer's libssl wants sent goes to w->to_t. */
static void peer_drain(world *w) {
  uint8_t b[4096];
  int k;
  while ((k = BIO_read(w->p_out, b, sizeof b)) > 0)
    if (pp_buf_append(&w->to_t, b, (size_t)k) != PP_OK)
      __builtin_trap();
}

/* peer_step: the peer reads what t wrote and runs its side (handshake,
 * then application data, which it discards). An error kills the peer. */
static void peer_step(world *w) {
  if (w->peer_dead)
    return;
  if (pp_buf_avail(&w->to_peer) > 0)
    BIO_write(w->p_in, w->to_peer.data + w->to_peer.off,
              (int)pp_buf_avail(&w->to_peer));
  pp_buf_free(&w->to_peer);
  ERR_clear_error();
  int r = 1;
  if (!SSL_is_init_finished(w->peer))
    r = SSL_do_handshake(w->peer);
  uint8_t b[4096];
  size_t got;
  while (r == 1 && SSL_read_ex(w->peer, b, sizeof b, &got) == 1)
    ;
  int e = r == 1 ? SSL_ERROR_WANT_READ : SSL_get_error(w->peer, r);
  if (r == 1 && SSL_get_shutdown(w->peer) & SSL_RECEIVED_SHUTDOWN)
    e = SSL_ERROR_ZERO_RETURN;
  if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
    w->peer_dead = 1;
  ERR_clear_error();
  peer_drain(w);
}

/* check_dead: t failed: it must stay failed. */
static void check_dead(world *w) {
  pp_buf p, o;
  pp_buf_init(&p);
  pp_buf_init(&o);
  static const uint8_t x[8] = {0x17, 3, 3, 0, 3, 1, 2, 3};
  if (pp_tls_done(w->t) || pp_tls_feed(w->t, x, sizeof x, &p, &o) != PP_ETLS ||
      pp_buf_avail(&p) != 0 || pp_tls_write(w->t, "x", 1, &o) != PP_ESTATE ||
      pp_buf_avail(&o) != 0 || pp_tls_error(w->t)[0] == '\0')
    __builtin_trap();
  pp_buf_free(&p);
  pp_buf_free(&o);
}

/* deliver: n bytes at p arrive at t; its answers go to the peer. */
static void deliver(world *w, const uint8_t *p, size_t n) {
  if (w->t_dead)
    return;
  pp_buf_free(&w->last);
  if (n > 0 && pp_buf_append(&w->last, p, n) != PP_OK)
    __builtin_trap();
  size_t before = pp_buf_avail(&w->plain);
  int rc = pp_tls_feed(w->t, p, n, &w->plain, &w->to_peer);
  size_t now = pp_buf_avail(&w->plain);
  if (rc != PP_OK && rc != PP_EAUTH && rc != PP_ETLS && rc != PP_EPEER)
    __builtin_trap(); /* no other outcome (PP_ENOMEM aside: none here) */
  if (pp_tls_done(w->t) && w->mode == MODE_PSK_WRONG)
    __builtin_trap(); /* keyed by another secret, yet done */
  if (now > before && !pp_tls_done(w->t) && rc == PP_OK)
    __builtin_trap(); /* plaintext before the handshake */
  if (now > w->nwritten ||
      (now > 0 && memcmp(w->plain.data + w->plain.off, w->written, now) != 0))
    __builtin_trap(); /* plaintext the peer did not write */
  if (rc == PP_EAUTH && w->mode == MODE_CERT)
    __builtin_trap(); /* EAUTH means "another secret": PSK mode only */
  if (rc != PP_OK) {
    w->t_dead = 1;
    check_dead(w);
  }
}

/* take_pending: move up to n bytes of the peer's output into out. */
static void take_pending(world *w, size_t n, pp_buf *out) {
  size_t avail = pp_buf_avail(&w->to_t);
  if (n > avail)
    n = avail;
  pp_buf_init(out);
  if (n > 0 && pp_buf_append(out, w->to_t.data + w->to_t.off, n) == PP_OK)
    pp_buf_consume(&w->to_t, n);
}

/* handshake: run both sides until both are done or one fails (a bounded
 * number of rounds), every byte delivered verbatim. */
static void handshake(world *w) {
  for (int i = 0; i < 8 && !w->t_dead && !w->peer_dead; i++) {
    pp_buf tmp;
    peer_step(w);
    take_pending(w, SIZE_MAX, &tmp);
    deliver(w, tmp.data, pp_buf_avail(&tmp));
    pp_buf_free(&tmp);
    if (pp_tls_done(w->t) && SSL_is_init_finished(w->peer) &&
        pp_buf_avail(&w->to_peer) == 0)
      break;
  }
  if (w->mode != MODE_PSK_WRONG && (!pp_tls_done(w->t) || w->peer_dead))
    __builtin_trap(); /* a clean handshake with the right key must work */
  if (w->mode == MODE_PSK_WRONG && (w->t_dead + w->peer_dead) == 0)
    __builtin_trap(); /* with another secret one side must have failed */
}

/* peer_write: the peer writes n bytes of application data (remembered). */
static void peer_write(world *w, const uint8_t *p, size_t n) {
  size_t wrote = 0;
  if (w->peer_dead || !SSL_is_init_finished(w->peer) || n == 0 ||
      w->nwritten + n > MAX_WRITTEN)
    return;
  ERR_clear_error();
  if (SSL_write_ex(w->peer, p, n, &wrote) != 1 || wrote != n) {
    w->peer_dead = 1;
    ERR_clear_error();
    return;
  }
  memcpy(w->written + w->nwritten, p, n);
  w->nwritten += n;
  peer_drain(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static world w;
  static uint8_t written[MAX_WRITTEN];
  fz f = {data, size};
  int t_role = fz_u8(&f) & 1 ? PP_TLS_CLIENT : PP_TLS_SERVER;
  int p_role = t_role == PP_TLS_CLIENT ? PP_TLS_SERVER : PP_TLS_CLIENT;
  uint8_t mode = fz_u8(&f) % 3, flags = fz_u8(&f);
  memset(&w, 0, sizeof w);
  w.mode = mode;
  w.written = written;
  if (pp_tls_new(t_ctx[mode][t_role - 1], "127.0.0.1", &w.t) != PP_OK)
    __builtin_trap();
  w.peer = SSL_new(peer_ctx[mode][p_role - 1]);
  w.p_in = BIO_new(BIO_s_mem());
  w.p_out = BIO_new(BIO_s_mem());
  if (w.peer == NULL || w.p_in == NULL || w.p_out == NULL)
    __builtin_trap();
  BIO_set_mem_eof_return(w.p_in, -1);
  SSL_set_bio(w.peer, w.p_in, w.p_out);
  SSL_set_app_data(w.peer, mode == MODE_PSK_WRONG ? psk_bad : psk_ok);
  if (p_role == PP_TLS_CLIENT) {
    SSL_set_connect_state(w.peer);
    if (mode != MODE_CERT)
      SSL_set_psk_use_session_callback(w.peer, peer_use_cb);
  } else {
    SSL_set_accept_state(w.peer);
    if (mode != MODE_CERT)
      SSL_set_psk_find_session_callback(w.peer, peer_find_cb);
    /* tickets (pp sends none) reach the client under test as
     * post-handshake messages */
    SSL_set_num_tickets(w.peer, flags & 2 ? 2 : 0);
  }
  /* who speaks first: the client's ClientHello */
  if (t_role == PP_TLS_CLIENT) {
    if (pp_tls_start(w.t, &w.to_peer) != PP_OK)
      __builtin_trap();
    pp_buf o;
    pp_buf_init(&o);
    if (pp_tls_start(w.t, &o) != PP_ESTATE &&
        pp_tls_start(w.t, &o) != PP_OK) /* a second start changes nothing */
      __builtin_trap();
    pp_buf_free(&o);
  } else {
    peer_step(&w);
    pp_buf o;
    pp_buf_init(&o);
    if (pp_tls_start(w.t, &o) != PP_ESTATE || pp_buf_avail(&o) != 0)
      __builtin_trap(); /* a server does not start */
    pp_buf_free(&o);
  }
  if (flags & 1)
    handshake(&w);
  {
    pp_buf o;
    pp_buf_init(&o);
    if (!pp_tls_done(w.t) && !w.t_dead &&
        pp_tls_write(w.t, "x", 1, &o) != PP_ESTATE)
      __builtin_trap(); /* no application data before the handshake */
    pp_buf_free(&o);
  }
  for (int ops = 0; f.n > 0 && ops < MAX_OPS && !w.t_dead; ops++) {
    uint8_t op = fz_u8(&f);
    pp_buf tmp;
    size_t got;
    switch (op % 12) {
    case 0: /* the peer's pending bytes, verbatim */
      take_pending(&w, SIZE_MAX, &tmp);
      deliver(&w, tmp.data, pp_buf_avail(&tmp));
      pp_buf_free(&tmp);
      break;
    case 1: { /* ... with one byte altered */
      size_t pos = fz_u16(&f);
      uint8_t x = fz_u8(&f) | 1;
      take_pending(&w, SIZE_MAX, &tmp);
      if (pp_buf_avail(&tmp) > 0)
        tmp.data[pos % pp_buf_avail(&tmp)] ^= x;
      deliver(&w, tmp.data, pp_buf_avail(&tmp));
      pp_buf_free(&tmp);
      break;
    }
    case 2: /* ... only the first k bytes (the rest stays pending) */
      take_pending(&w, fz_u16(&f), &tmp);
      deliver(&w, tmp.data, pp_buf_avail(&tmp));
      pp_buf_free(&tmp);
      break;
    case 3: /* the peer's pending bytes are lost */
      take_pending(&w, SIZE_MAX, &tmp);
      pp_buf_free(&tmp);
      break;
    case 4: { /* arbitrary bytes */
      const uint8_t *p = fz_take(&f, fz_u8(&f), &got);
      deliver(&w, p, got);
      break;
    }
    case 5: { /* a record header of any type, version and length, then
               * bytes (a length above 2^14 + 256 is oversized) */
      uint8_t h[5] = {fz_u8(&f), 3, fz_u8(&f) & 3, 0, 0};
      uint16_t len = fz_u16(&f);
      h[3] = (uint8_t)(len >> 8);
      h[4] = (uint8_t)len;
      const uint8_t *p = fz_take(&f, fz_u8(&f), &got);
      pp_buf_init(&tmp);
      if (pp_buf_append(&tmp, h, sizeof h) != PP_OK ||
          pp_buf_append(&tmp, p, got) != PP_OK)
        __builtin_trap();
      deliver(&w, tmp.data, pp_buf_avail(&tmp));
      pp_buf_free(&tmp);
      break;
    }
    case 6: /* the peer reads what the side under test wrote */
      peer_step(&w);
      break;
    case 7: { /* the peer writes application data */
      size_t n = fz_u16(&f) % 40000;
      const uint8_t *p = fz_take(&f, fz_u8(&f), &got);
      uint8_t *b = malloc(n ? n : 1);
      if (b == NULL)
        __builtin_trap();
      for (size_t i = 0; i < n; i++) /* the input's bytes, repeated */
        b[i] = got ? p[i % got] : (uint8_t)i;
      peer_write(&w, b, n);
      free(b);
      break;
    }
    case 8: /* the peer updates its keys (and may ask t to update) */
      if (!w.peer_dead && SSL_is_init_finished(w.peer)) {
        ERR_clear_error();
        if (SSL_key_update(w.peer, fz_u8(&f) & 1 ? SSL_KEY_UPDATE_REQUESTED
                                                 : SSL_KEY_UPDATE_NOT_REQUESTED) &&
            SSL_do_handshake(w.peer) == 1)
          peer_drain(&w);
        ERR_clear_error();
      }
      break;
    case 9: /* the peer closes (close_notify) */
      if (!w.peer_dead) {
        ERR_clear_error();
        SSL_shutdown(w.peer);
        ERR_clear_error();
        peer_drain(&w);
        w.peer_dead = 1;
      }
      break;
    case 10: { /* the side under test writes */
      const uint8_t *p = fz_take(&f, fz_u8(&f), &got);
      int done = pp_tls_done(w.t);
      int rc = pp_tls_write(w.t, p, got, &w.to_peer);
      if (done ? rc != PP_OK : rc != PP_ESTATE)
        __builtin_trap();
      break;
    }
    case 11: /* the last delivery again (a replay) */
      if (pp_buf_avail(&w.last) > 0) {
        pp_buf_init(&tmp);
        if (pp_buf_append(&tmp, w.last.data + w.last.off,
                          pp_buf_avail(&w.last)) != PP_OK)
          __builtin_trap();
        deliver(&w, tmp.data, pp_buf_avail(&tmp));
        pp_buf_free(&tmp);
      }
      break;
    }
  }
  pp_tls_free(w.t);
  SSL_free(w.peer);
  ERR_clear_error();
  pp_buf_free(&w.plain);
  pp_buf_free(&w.to_t);
  pp_buf_free(&w.to_peer);
  pp_buf_free(&w.last);
  return 0;
}
