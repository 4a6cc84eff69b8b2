#!/usr/bin/env python3
"""guess.py — what one offline guess of the shared secret costs an attacker
who captured a client's handshake (nonces and proof, e.g. by relaying an
announcement, docs/protocol.md 6.1): checking a guess means deriving the
proof key from it and computing one HMAC. With the secret stretched by
scrypt (N=2^14, r=8, p=1) every guess pays the scrypt run; without it (the
derivation before) only HKDF and HMAC. Both are timed here on one core,
medians of several runs, in the same process.

    python3 bench/guess.py [--runs N]
"""
import argparse
import hashlib
import hmac
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "py"))
import ppwire  # noqa: E402  (the independent client's derivation)


def check_guess(guess, nonce_c, nonce_s, transcript, proof, stretched):
    """True when `guess` reproduces the captured proof."""
    ikm = ppwire.stretch(guess) if stretched else guess
    k0 = ppwire.hkdf_extract(b"pp-auth-v1", ikm)
    prk = ppwire.hkdf_extract(nonce_c + nonce_s, k0)
    k_cp = ppwire.hkdf_expand(prk, b"pp-auth-v1 client proof")
    return hmac.compare_digest(hmac.new(k_cp, b"client" + transcript, hashlib.sha256).digest(), proof)


def time_guesses(stretched, n):
    nonce_c, nonce_s, transcript, proof = os.urandom(32), os.urandom(32), os.urandom(120), os.urandom(32)
    times = []
    for i in range(n):
        guess = b"guess-%d-%s" % (i, os.urandom(4).hex().encode())  # never cached
        t0 = time.perf_counter()
        check_guess(guess, nonce_c, nonce_s, transcript, proof, stretched)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    a = ap.parse_args()
    plain = time_guesses(False, max(a.runs * 100, 1000))
    slow = time_guesses(True, a.runs)
    print("offline guess against a captured proof (median, one core):")
    print("  HKDF + HMAC only (before):      %9.1f us" % (plain * 1e6))
    print("  scrypt-stretched secret (now):  %9.1f ms  (%.0fx; target >= 50 ms)"
          % (slow * 1e3, slow / plain))


if __name__ == "__main__":
    main()
