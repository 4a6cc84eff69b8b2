#!/bin/sh
# make-certs.sh — regenerate the test certificates of tests/certs (see
# README.md here): a CA with a node and a client certificate, and a second,
# unrelated CA with its own pair (the "wrong CA" of tests/py/test_tls.py).
# Test material only: the private keys are committed on purpose.
set -e
cd "$(dirname "$0")"
ext() { printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' "$1" "$2"; }
for ca in ca other-ca; do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout $ca.key -out $ca.pem -days 36500 -subj "/CN=pp test $ca"
done
mk() { # name ca san usage
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout $1.key -out $1.csr -subj "/CN=pp test $1"
  ext "$3" "$4" > $1.ext
  openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial \
    -out $1.pem -days 36500 -extfile $1.ext
  rm -f $1.csr $1.ext
}
mk node ca "IP:127.0.0.1,IP:::1,DNS:localhost" serverAuth,clientAuth
mk client ca "DNS:pp-client" clientAuth,serverAuth
mk other-node other-ca "IP:127.0.0.1,IP:::1,DNS:localhost" serverAuth,clientAuth
mk other-client other-ca "DNS:pp-client" clientAuth,serverAuth
rm -f ca.srl other-ca.srl
chmod 600 *.key
