#!/bin/sh
# make-certs.sh DIR [CLIENT_CN]
#
# Makes the certificates the TLS tests use, into DIR (created if missing,
# files overwritten):
#   ca.crt ca.key            the test CA
#   server.crt server.key    for PostgreSQL: subjectAltName DNS:localhost only,
#                            so verify-full passes for "localhost" and fails
#                            for "127.0.0.1"
#   proxy.crt proxy.key      for idemproxy's client side: DNS:localhost and
#                            IP:127.0.0.1
#   client.crt client.key    a client certificate, CN = CLIENT_CN (postgres)
#   other-ca.crt             a second CA, and rogue.crt rogue.key signed by it
#                            (CN = CLIENT_CN, the names of proxy.crt, both
#                            usages): right in everything but the CA
# All keys are RSA 2048 with mode 0600, as PostgreSQL refuses a key that the
# group or others can read; certificates are signed with SHA-256. Nothing is
# read from or written to the current directory.
set -eu

if [ $# -lt 1 ] || [ $# -gt 2 ] || [ -z "$1" ]; then
    echo "usage: $0 DIR [CLIENT_CN]" >&2
    exit 2
fi
dir=$1
client_cn=${2:-postgres}
days=3650

mkdir -p "$dir" || { echo "$0: cannot create $dir" >&2; exit 1; }
dir=$(cd "$dir" && pwd) || { echo "$0: cannot enter $dir" >&2; exit 1; }
work=$(mktemp -d "$dir/.make-certs.XXXXXX") || { echo "$0: cannot make a scratch directory in $dir" >&2; exit 1; }
trap 'rm -rf "$work"' EXIT
trap 'exit 1' HUP INT TERM

# Runs openssl quietly; on failure shows what it said and stops.
ossl() {
    if ! openssl "$@" >"$work/out" 2>&1; then
        echo "$0: openssl $1 failed:" >&2
        cat "$work/out" >&2
        exit 1
    fi
}

# Our own configuration, so that the system's openssl.cnf (default_md,
# prompts, extra extensions) changes nothing.
cat >"$work/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:localhost
[proxy]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:localhost, IP:127.0.0.1
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[rogue]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:localhost, IP:127.0.0.1
EOF

# -subj "/CN=..." for a common name that may hold "/" or "\".
subject() {
    printf '/CN=%s' "$(printf '%s' "$1" | sed 's,[/\\],\\&,g')"
}

# A new key NAME.key, written 0600 from the start.
new_key() {
    rm -f "$dir/$1.key"
    (umask 077 && ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/$1.key")
    chmod 600 "$dir/$1.key"
}

# new_ca NAME CN: a self-signed CA.
new_ca() {
    new_key "$1"
    ossl req -new -x509 -config "$work/openssl.cnf" -extensions ca -sha256 \
        -key "$dir/$1.key" -subj "$(subject "$2")" -days "$days" -out "$dir/$1.crt"
}

# new_cert NAME CN SECTION CA: a certificate signed by CA.crt/CA.key, with
# the extensions of SECTION.
new_cert() {
    new_key "$1"
    ossl req -new -config "$work/openssl.cnf" -sha256 \
        -key "$dir/$1.key" -subj "$(subject "$2")" -out "$work/$1.csr"
    ossl x509 -req -in "$work/$1.csr" -sha256 -days "$days" \
        -CA "$dir/$4.crt" -CAkey "$dir/$4.key" -set_serial "0x$(openssl rand -hex 8)" \
        -extfile "$work/openssl.cnf" -extensions "$3" -out "$dir/$1.crt"
}

new_ca ca "idemproxy test CA"
new_cert server localhost server ca
new_cert proxy localhost proxy ca
new_cert client "$client_cn" client ca
new_ca other-ca "idemproxy other test CA"
new_cert rogue "$client_cn" rogue other-ca
# The second CA's key has no further use.
rm -f "$dir/other-ca.key"
chmod 644 "$dir"/ca.crt "$dir"/server.crt "$dir"/proxy.crt "$dir"/client.crt \
    "$dir"/other-ca.crt "$dir"/rogue.crt
