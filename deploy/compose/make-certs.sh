#!/bin/sh
# Perdure compose: a private CA and the certificates of the NATS nodes, in ./certs.
#   sh make-certs.sh            (needs openssl; run once, from this folder)
# For production use your own CA (or cert-manager on Kubernetes); these are for trying it.
set -eu
mkdir -p certs && cd certs
umask 077
[ -f ca.key ] || openssl req -x509 -newkey rsa:2048 -nodes -days 825 \
    -keyout ca.key -out ca.pem -subj "/CN=perdure-compose-ca" 2>/dev/null
# One certificate for the three nodes: clients check it (server name nats-N or localhost),
# and the nodes present it to each other on the cluster routes (verify: true).
cat > server.ext <<'EXT'
subjectAltName = DNS:nats-1, DNS:nats-2, DNS:nats-3, DNS:localhost, IP:127.0.0.1
extendedKeyUsage = serverAuth, clientAuth
EXT
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=nats" 2>/dev/null
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
    -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext
chmod 644 ca.pem server.pem
echo "certs/: ca.pem (give it to clients: PERDURE_TLS_CA), server.pem, server.key"
