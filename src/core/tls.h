/* tls.h — TLS 1.3 under pp's framing for client <-> ppserver connections
 * (docs/protocol.md section 6.6). OpenSSL's libssl is driven through two
 * memory BIOs: nothing here touches a socket or a loop. The caller feeds
 * the bytes it read from the network and gets back the plaintext they
 * carried and the bytes to send; it hands plaintext over and gets back
 * the records to send.
 *
 * Two ways to key it:
 *   PSK mode (no certificates): both sides derive an external pre-shared
 *     key from the key bytes the auth layer holds for the shared secret
 *     (pp_auth_derive_key, label "pp-tls-v1 psk"), identity "pp-tls-v1",
 *     in psk_dhe_ke mode (an (EC)DHE exchange on top, so traffic recorded
 *     today stays secret if the secret leaks later). No certificate is
 *     sent or accepted.
 *   certificate mode: each side presents its certificate and key and
 *     verifies the peer's against a CA file, both ways; the client also
 *     checks the node's host name or address.
 *
 * Typical use on either side:
 *
 *   pp_tls_ctx *ctx;  pp_tls_ctx_new(PP_TLS_CLIENT, &opts, &ctx, err, n);
 *   pp_tls *t;        pp_tls_new(ctx, host, &t);
 *   pp_tls_start(t, &net_out);                    (client: ClientHello)
 *   on bytes read:    rc = pp_tls_feed(t, p, n, &plain_in, &net_out);
 *                     send net_out; rc < 0: close (pp_tls_error says why)
 *                     pp_tls_done(t): application data may flow
 *   to send:          pp_tls_write(t, p, n, &net_out); send net_out
 *   pp_tls_free(t);   pp_tls_ctx_free(ctx);
 *
 * Threads: a pp_tls_ctx is immutable once made and may be shared by the
 * connections of one thread (ppserver's loop, an engine thread); a pp_tls
 * has one owner and no locks. */
#ifndef PP_TLS_H
#define PP_TLS_H

#include "buf.h"
#include "pp_common.h"

#include <stddef.h>
#include <stdint.h>

enum { PP_TLS_CLIENT = 1, PP_TLS_SERVER = 2 };

/* The first byte of every TLS record that can open a connection (a
 * handshake record: ClientHello). pp's frames start with 0x70. */
#define PP_TLS_RECORD_HANDSHAKE 0x16

#define PP_TLS_PSK_LABEL "pp-tls-v1 psk"
#define PP_TLS_PSK_IDENTITY "pp-tls-v1"

typedef struct pp_tls_ctx pp_tls_ctx;
typedef struct pp_tls pp_tls;

/* How to key TLS. With cert, key and ca all set: certificate mode (the
 * secret is not used by TLS). Otherwise PSK mode from secret (1 ..
 * PP_SECRET_MAX bytes: the key bytes the auth layer is given, see
 * pp_auth_init). Paths and bytes are read during pp_tls_ctx_new only. */
typedef struct pp_tls_opts {
  const uint8_t *secret;
  size_t secret_len;
  const char *cert; /* PEM certificate (chain) file */
  const char *key;  /* PEM private key file */
  const char *ca;   /* PEM CA file the peer's certificate must chain to */
} pp_tls_opts;

/* pp_tls_ctx_new: a context for role (PP_TLS_CLIENT / PP_TLS_SERVER).
 * Returns 0 with *out set (free with pp_tls_ctx_free), PP_EINVAL (bad role,
 * only some of cert/key/ca, no secret in PSK mode), PP_ETLSCONF (a file
 * could not be loaded, or the key does not match the certificate; err says
 * which and why), PP_ENOMEM or PP_ETLS. err (errlen bytes, may be NULL)
 * receives a message on failure. Any thread. */
int pp_tls_ctx_new(int role, const pp_tls_opts *o, pp_tls_ctx **out,
                   char *err, size_t errlen);

/* pp_tls_ctx_free: release a context (NULL is fine). Every pp_tls made from
 * it must be freed first. */
void pp_tls_ctx_free(pp_tls_ctx *ctx);

/* pp_tls_ctx_certs: 1 if ctx is in certificate mode, 0 in PSK mode. */
int pp_tls_ctx_certs(const pp_tls_ctx *ctx);

/* pp_tls_new: one connection's TLS state, in ctx's role. host (client in
 * certificate mode; may be NULL) is the name or address the node's
 * certificate must match. Returns 0 with *out set, PP_ENOMEM or PP_ETLS. */
int pp_tls_new(pp_tls_ctx *ctx, const char *host, pp_tls **out);

/* pp_tls_free: release t (NULL is fine). Nothing is sent. */
void pp_tls_free(pp_tls *t);

/* pp_tls_start: client only: append the ClientHello to net_out. Returns 0,
 * PP_ESTATE (server), PP_ENOMEM or PP_ETLS. */
int pp_tls_start(pp_tls *t, pp_buf *net_out);

/* pp_tls_feed: n bytes read from the network (copied). Runs the handshake
 * while it is not done; once done, decrypts every complete record into
 * plain_in (appended). Bytes TLS wants sent (handshake messages, an alert)
 * are appended to net_out: send them also after an error. Returns 0, or:
 *   PP_EAUTH   the handshake failed because the peer keys PSK mode with
 *              another secret (or reports that ours did not verify)
 *   PP_ETLS    any other TLS failure: a certificate that does not verify,
 *              a record that does not authenticate (altered, truncated),
 *              a protocol error; pp_tls_error() has OpenSSL's reason
 *   PP_EPEER   the peer closed the TLS session (close_notify)
 *   PP_ENOMEM
 * After an error t is dead: every later call returns PP_ETLS. */
int pp_tls_feed(pp_tls *t, const uint8_t *net, size_t n, pp_buf *plain_in,
                pp_buf *net_out);

/* pp_tls_done: 1 once the handshake has completed (application data may be
 * written and arrives in plain_in), else 0. */
int pp_tls_done(const pp_tls *t);

/* pp_tls_write: encrypt n bytes into records appended to net_out. Only
 * after pp_tls_done. Returns 0, PP_ESTATE (handshake not done, or t dead),
 * PP_ENOMEM (net_out unchanged) or PP_ETLS. */
int pp_tls_write(pp_tls *t, const void *p, size_t n, pp_buf *net_out);

/* pp_tls_error: what went wrong last (OpenSSL's reason, the certificate
 * verification result), or "" when nothing did. Valid until t is freed. */
const char *pp_tls_error(const pp_tls *t);

/* pp_tls_describe: "TLSv1.3 TLS_AES_128_GCM_SHA256, PSK" once done (into
 * out), for the log. */
void pp_tls_describe(const pp_tls *t, char *out, size_t n);

#endif
