/* server.h — ppserver's network side: a libuv loop in the main thread that
 * accepts TCP clients, authenticates them (auth.h, server role), reads their
 * sealed FUNC/JOB frames, feeds jobs to a pp engine (its own thread and
 * worker pool) fairly across clients, and writes sealed RESULT frames back.
 * docs/protocol.md section 7 describes the conversation. The code is in
 * conn.c (connections and the protocol), feed.c (feeding the engine),
 * server.c (lifecycle) and wboot.c (the worker command), sharing
 * ppsrv_int.h. */
#ifndef PPSRV_SERVER_H
#define PPSRV_SERVER_H

#include "config.h"

/* Connection limits. */
#define PPSRV_HANDSHAKE_TIMEOUT_MS 5000u /* accept -> authenticated (also <= -k) */
#define PPSRV_CLOSE_GRACE_MS 2000u       /* flushing a closing connection */
#define PPSRV_MAX_FUNCS 65536u           /* FUNC keys remembered per connection */
#define PPSRV_PING_MAX 64u               /* PING payload limit */
/* Descriptor bytes of the functions one connection keeps (FUNC frames);
 * past it, FUNC is a protocol error (the client sends RESET to start over). */
#define PPSRV_FUNC_BYTES_MAX (64u * 1024u * 1024u)
/* A frame, once begun, must be whole within the socket timeout (-k) plus
 * one second per PPSRV_FRAME_MIN_RATE bytes of its announced length. */
#define PPSRV_FRAME_MIN_RATE (1024u * 1024u)
/* Before authentication (admit.c): handshakes pending at once, in total
 * (at most half of --max-clients) and per client address; the back-off
 * after failed handshakes from one address. */
#define PPSRV_PREAUTH_MAX 128u
/* Connections accepted in one turn of the loop at most; the rest wait in
 * the kernel's queue for the next turn (conn.c, ppsrv__on_connection). */
#define PPSRV_ACCEPT_BATCH 64u
#define PPSRV_PREAUTH_PER_ADDR 16u
#define PPSRV_AUTH_DELAY_BASE_MS 100u   /* after the first failure */
#define PPSRV_AUTH_DELAY_MAX_MS 10000u  /* doubling up to this */
#define PPSRV_AUTH_FORGET_MS 60000u     /* failures forgotten after */
#define PPSRV_AUTH_LOG_MS 10000u        /* one failure line per address */
#define PPSRV_RATELOG_MS 1000u          /* refusals, sheds, accept errors */
#define PPSRV_ADMIT_ADDRS 4096u         /* addresses remembered */
/* Reading from a client pauses while it has this much waiting (queued jobs
 * not yet handed to the engine, or results not yet written), and resumes
 * below half of it. */
#define PPSRV_QUEUE_MAX_JOBS 100000u
#define PPSRV_QUEUE_MAX_BYTES (256u * 1024u * 1024u)
#define PPSRV_WRITE_MAX_BYTES (64u * 1024u * 1024u)
/* Each client's share of the engine (feed.c, docs/protocol.md 7.4): its fair
 * share of the workers, max(1, ceil(nworkers / clients with jobs)) jobs, plus
 * jobs of functions measured short while their estimated work stays within
 * PPSRV_PIPELINE_NS per share slot, at most PPSRV_PIPELINE_MAX per slot. */
#define PPSRV_PIPELINE_NS 2000000u /* 2 ms */
#define PPSRV_PIPELINE_MAX 256u

/* ppsrv_run: start the engine and its workers, listen on cfg's interface and
 * port, write the pid file, and serve until SIGTERM/SIGINT or the -t idle
 * timeout; then say BYE to every client, close every connection, shut the
 * engine down (workers killed and reaped) and remove the pid file.
 * Returns the process exit status: 0 after a clean stop, 1 when the server
 * could not start (address in use, engine failure, pid file). Main thread;
 * cfg is borrowed for the duration. */
int ppsrv_run(const ppsrv_config *cfg);

#endif
